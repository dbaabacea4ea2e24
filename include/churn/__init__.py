"""churn: the domain library of the churn pipeline (spec, storage, features, labels, registry)."""

__version__ = "0.1.0"
