"""Dataset spec: what the raw data is, loaded from `include/datasets/<name>.yaml`.

Code never hard-codes column names; it asks the spec. The spec is parsed by pydantic into
frozen objects, so a bad file fails with the file, the field and what was expected.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

FileFormat = Literal["csv", "jsonl", "parquet"]
_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SpecError(ValueError):
    """A dataset spec that cannot be used; the message names file, field and expectation."""


class ReadySpec(BaseModel):
    """When a raw partition has landed: its producer's ready marker, and a floor on its rows.

    `marker` is a file the producer writes into `ds=…/` after its last data file (Hadoop's and
    Spark's `_SUCCESS` by default); `null` for producers that publish a partition atomically,
    where any visible data file means the day is complete. A partition with fewer than
    `min_rows` rows fails its day instead of becoming a small or empty day.
    """

    model_config = _FROZEN
    marker: str | None = Field(default="_SUCCESS", pattern=r"^[_.][A-Za-z0-9_.-]+$")
    min_rows: int = Field(default=0, ge=0)


class EventsSpec(BaseModel):
    """A daily interaction log: one row per event.

    Uniqueness is declared, never assumed: by default (`duplicates: keep_all`) every row is a
    real event, so identical rows (three equal purchases on one date-only day) all count.
    `drop_exact` collapses rows identical in every column the spec reads (an at-least-once
    producer's redeliveries; the repeats are quarantined as `duplicate_row`). `reject_conflicts`
    needs `key`: identical rows collapse as with `drop_exact`, and rows sharing a key with
    different values are all quarantined as `conflicting_duplicate`. Uniqueness is checked
    within one partition day.

    Timestamps are parsed as `timestamp_kind` says, and their calendar day in `timezone` must be
    the partition day: naive date-times and dates are wall-clock time in that zone, date-times
    with an offset and epoch values are absolute instants.
    """

    model_config = _FROZEN
    format: FileFormat = "csv"
    ready: ReadySpec = ReadySpec()
    timestamp: str = Field(min_length=1)
    # How the timestamp is written: an ISO 8601 date-time with or without an offset, a date
    # `YYYY-MM-DD`, a date `YYYYMMDD`, or seconds / milliseconds since 1970-01-01 UTC.
    timestamp_kind: Literal["datetime", "date", "yyyymmdd", "epoch_seconds",
                            "epoch_millis"] = "datetime"
    # The IANA time zone whose calendar day is the partition day (and of naive timestamps).
    timezone: str = "UTC"
    # The raw columns that identify one event (e.g. [event_id]); read and required in files.
    key: tuple[Annotated[str, Field(min_length=1)], ...] = ()
    duplicates: Literal["keep_all", "drop_exact", "reject_conflicts"] = "keep_all"
    type: str | None = None
    # The event types that get their own feature columns (a fixed schema every day); others
    # count only in the totals. Empty: taken from the data of each run (schema may then drift).
    types: tuple[str, ...] = ()
    value: str | None = None
    windows_days: tuple[int, ...] = (7, 30, 90)

    @model_validator(mode="after")
    def _windows_sorted_positive(self) -> EventsSpec:
        if not self.windows_days or any(w <= 0 for w in self.windows_days):
            raise ValueError("windows_days must be a non-empty list of positive day counts")
        if list(self.windows_days) != sorted(set(self.windows_days)):
            raise ValueError("windows_days must be strictly increasing, e.g. [7, 30, 90]")
        return self

    @model_validator(mode="after")
    def _timezone_known(self) -> EventsSpec:
        try:
            # `localtime` names the machine's zone: the partition day would depend on the host.
            if self.timezone in ("localtime", "posixrules"):
                raise ValueError(self.timezone)
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone name, e.g. "
                             "UTC or America/New_York") from None
        return self

    @model_validator(mode="after")
    def _key_fits_duplicates(self) -> EventsSpec:
        if len(set(self.key)) != len(self.key):
            raise ValueError(f"key {list(self.key)} names a column twice")
        if self.duplicates == "reject_conflicts" and not self.key:
            raise ValueError("duplicates 'reject_conflicts' needs key: the columns that identify "
                             "one event, e.g. [event_id] or [customer_id, event_ts]")
        if self.key and self.duplicates != "reject_conflicts":
            raise ValueError(f"key {list(self.key)} declares events unique, which only "
                             f"duplicates 'reject_conflicts' checks (got '{self.duplicates}'); "
                             "set duplicates: reject_conflicts or drop the key")
        return self

    @property
    def longest_window(self) -> int:
        """The widest feature window, which decides how many raw days a feature day reads."""
        return self.windows_days[-1]


class CustomersSpec(BaseModel):
    """A daily snapshot of the customers alive on that day, one row per customer."""

    model_config = _FROZEN
    format: FileFormat = "csv"
    ready: ReadySpec = ReadySpec()
    signup: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()


class LabelSpec(BaseModel):
    """How churn is defined for the day ds, looking only at (ds, ds + horizon]."""

    model_config = _FROZEN
    kind: Literal["inactivity", "event", "column"]
    horizon_days: int = Field(ge=0)
    event_type: str | None = None
    column: str | None = None
    positive: tuple[str, ...] = ("1", "true", "True", "yes", "Yes")

    @model_validator(mode="after")
    def _kind_fields(self) -> LabelSpec:
        if self.kind == "event" and not self.event_type:
            raise ValueError("label kind 'event' needs event_type")
        if self.kind == "column" and not self.column:
            raise ValueError("label kind 'column' needs column")
        if self.kind != "column" and self.horizon_days == 0:
            raise ValueError(f"label kind '{self.kind}' needs horizon_days >= 1")
        return self


class ModelSpec(BaseModel):
    """Training and promotion settings of the model trained on this data set."""

    model_config = _FROZEN
    name: str = Field(default="churn_xgb", pattern=r"^[A-Za-z0-9_\-]+$")
    refit_on_full: bool = False
    gate_tolerance: float = Field(default=0.005, ge=0)
    gate_floor_auc: float = Field(default=0.6, ge=0, le=1)
    train_days: int = Field(default=14, ge=1)


class ValidationSpec(BaseModel):
    """Limits on rejected raw rows before a day is failed rather than quarantined."""

    model_config = _FROZEN
    max_reject_rate: float = Field(default=0.01, ge=0, le=1)


class DatasetSpec(BaseModel):
    """The whole spec of one data set."""

    model_config = _FROZEN
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    id_column: str = Field(min_length=1)
    events: EventsSpec | None = None
    customers: CustomersSpec | None = None
    label: LabelSpec
    model: ModelSpec = ModelSpec()
    validation: ValidationSpec = ValidationSpec()
    # The first day of the raw history (`YYYY-MM-DD`); when absent, the first build records the
    # oldest delivered partition (`churn.history`). Windows reaching before it are short.
    history_start: str | None = Field(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")

    @field_validator("history_start")
    @classmethod
    def _is_a_date(cls, value: str | None) -> str | None:
        if value is not None:
            date.fromisoformat(value)
        return value

    @model_validator(mode="after")
    def _tables_fit_label(self) -> DatasetSpec:
        if self.events is None and self.customers is None:
            raise ValueError("declare at least one of 'events' or 'customers'")
        if self.label.kind in ("inactivity", "event") and self.events is None:
            raise ValueError(f"label kind '{self.label.kind}' needs an 'events' table")
        if self.label.kind == "event" and self.events and not self.events.type:
            raise ValueError("label kind 'event' needs events.type")
        if self.label.kind == "column" and self.customers is None:
            raise ValueError("label kind 'column' needs a 'customers' table")
        return self

    @property
    def tables(self) -> tuple[str, ...]:
        """The raw tables this spec declares, in a fixed order."""
        return tuple(t for t in ("events", "customers") if getattr(self, t) is not None)

    @property
    def max_lookback_days(self) -> int:
        """How many days before ds (inclusive of ds: this plus one) features read."""
        return self.events.longest_window - 1 if self.events else 0


def _read_text(path: str) -> str:
    """The spec file's text, from a local path or an `s3://` URI (EMR reads specs from S3)."""
    if "://" not in path:
        return Path(path).read_text()
    from churn.storage import filesystem

    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as src:
        return src.read().decode()


def load_spec(path: str | Path) -> DatasetSpec:
    """Load and validate a dataset spec file.

    Args:
        path: the YAML file (local path or `s3://` URI).

    Returns:
        The frozen spec.

    Raises:
        SpecError: the file is missing, not YAML, or breaks the schema (message names the field
            and ends pointing to the reference, docs/dataset-spec.md).
    """
    path, see = str(path), "(see docs/dataset-spec.md)"
    try:
        raw = yaml.safe_load(_read_text(path))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: cannot read dataset spec: {exc} {see}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got "
                        f"{type(raw).__name__} {see}")
    try:
        return DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SpecError(f"{path}: invalid dataset spec: {problems} {see}") from exc


def dump_spec(spec: DatasetSpec) -> str:
    """Serialise a spec back to YAML (round-trips through `load_spec`)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)
