"""The promotion gate: does a freshly trained version replace the champion, and why.

The challenger and the champion are scored by one function (`_score_auc`) on one holdout, the
challenger's own validation set re-read from its stored window (`load_holdout`); the verdict
(`_verdict`) is a floor plus a tolerance against the champion, both from the dataset spec. A
promotion switches the pointer through `churn.champion` (lock, compare-and-swap, intent first);
every verdict is recorded under `models/<name>/decisions/`.

Fault point (`churn.faults`): `gate:decided` (the gate decided to promote against the champion
it read, and has not yet asked to switch), so a test can make two gates decide before either
switches.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import pyarrow.parquet as pq

from churn.champion import (ChampionChangedError, LockPolicy, pointer_history, read_champion,
                            record_decision, recover_decisions, switch_champion, utc_now)
from churn.faults import fault_point
from churn.modeling import load_booster
from churn.registry import (HOLDOUT_IDS_FILE, META_FILE, METRICS_FILE, RegistryError,
                            load_model_dir, read_version_json)
from churn.spec import DatasetSpec
from churn.storage import Layout, filesystem
from churn.training import holdout_auc, holdout_identity, read_labelled_frame

@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict on a challenger, as recorded in `decisions/`.

    Both AUCs come from one function (`_score_auc`) on one holdout frame, the challenger's
    validation set, identified by `holdout_rows`, `holdout_days` and `holdout_digest`.
    `challenger_recorded_auc` is what training wrote to metrics.json (audit only, not used).
    """

    promoted: bool
    reason: str
    version: str
    challenger_auc: float
    champion_version: str | None
    champion_auc: float | None
    tolerance: float
    floor_auc: float
    holdout_rows: int
    holdout_days: list[str]
    holdout_digest: str
    challenger_recorded_auc: float | None
    decided_by: str
    decided_at: str
    action: str = "gate"

    def to_dict(self) -> dict:
        """JSON-ready form (for the decision log and XCom)."""
        return asdict(self)


def load_holdout(root: str, spec: DatasetSpec, version: str) -> pd.DataFrame:
    """Re-read a version's validation set (features + labels) from its stored window.

    A time holdout is every row of meta.json's `validation_days`; a random holdout is the rows
    whose (id, ds) are in the version's `holdout_ids.parquet`.
    """
    meta = read_version_json(root, spec.model.name, version, META_FILE)
    window = meta.get("window") or {}
    days = window.get("validation_days")
    if not days:
        raise RegistryError(f"{version}: meta.json has no window.validation_days")
    frame = read_labelled_frame(root, spec, days)
    if window.get("holdout") != "random":
        return frame
    ids_uri = f"{Layout(root).model_version(spec.model.name, version)}/{HOLDOUT_IDS_FILE}"
    fs, path = filesystem(ids_uri)
    ids = pq.read_table(path, filesystem=fs).to_pandas()
    return frame.merge(ids, on=list(ids.columns), how="inner")


def _score_auc(root: str, model_name: str, version: str, holdout: pd.DataFrame) -> float:
    """The AUC of a stored version on a holdout: the one scoring path for both gate sides."""
    artifact = load_model_dir(Layout(root).model_version(model_name, version))
    return holdout_auc(load_booster(artifact.model_bytes), artifact.schema, holdout)


def _verdict(challenger_auc: float, champion_auc: float | None, tolerance: float,
             floor: float) -> tuple[bool, str]:
    """The gate rule: above the floor, and no worse than the champion by more than tolerance."""
    if challenger_auc < floor:
        return False, f"challenger AUC {challenger_auc:.4f} is below the floor {floor:.4f}"
    if champion_auc is None:
        return True, f"first model: AUC {challenger_auc:.4f} is above the floor {floor:.4f}"
    delta = challenger_auc - champion_auc
    if delta >= -tolerance:
        return True, (f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                      f"(delta {delta:+.4f} >= -{tolerance})")
    return False, (f"challenger AUC {challenger_auc:.4f} vs champion {champion_auc:.4f} "
                   f"(delta {delta:+.4f} < -{tolerance})")


def gate(root: str, spec: DatasetSpec, version: str, holdout: pd.DataFrame | None = None,
         decided_by: str = "gate", attempts: int = 3,
         policy: LockPolicy = LockPolicy()) -> GateDecision:
    """Decide whether a new version replaces the champion, switch atomically, record why.

    The challenger and the champion are scored by the same function on the same holdout (the
    challenger's validation set); metrics.json's AUC is only kept for the record. First, the
    dangling intents of a gate that crashed are resolved (see `recover_decisions`). A promotion
    records its decision as an intent, switches the pointer, then completes the record. If
    another gate switches the champion meanwhile, the decision is re-taken against the new
    champion (compare-and-swap under the lock).

    Args:
        root: the data root.
        spec: the DatasetSpec (model name, gate_tolerance, gate_floor_auc).
        version: the challenger version.
        holdout: the challenger's validation frame (features + label); re-read when None.
        decided_by: who asks (a DAG run id, a user name), stored in the decision.
        attempts: how often to re-decide when the champion changed underneath.
        policy: how long to wait for the champion lock and when it is stale.

    Returns:
        The decision (also written under `models/<name>/decisions/`).
    """
    name = spec.model.name
    recover_decisions(root, name, decided_by, policy)
    holdout = load_holdout(root, spec, version) if holdout is None else holdout
    scored = _Scored(_score_auc(root, name, version, holdout),
                     read_version_json(root, name, version, METRICS_FILE).get("roc_auc"),
                     holdout_identity(holdout, spec.id_column))
    for _ in range(attempts):
        current = read_champion(root, name)
        decision = _evaluate(root, spec, version, scored, current, holdout, decided_by)
        if not decision.promoted:
            record_decision(root, name, decision.to_dict())
            return decision
        fault_point("gate:decided")
        try:
            switch_champion(root, name, decision.to_dict(), decision.champion_version,
                            pointer_history(current) + [version], policy)
        except ChampionChangedError:
            continue
        return decision
    raise RegistryError(f"champion of {name} kept changing; gave up after {attempts} attempts")


@dataclass(frozen=True)
class _Scored:
    """The challenger as scored once per gate: AUC, metrics.json's AUC, holdout identity."""

    auc: float
    recorded_auc: float | None
    holdout: dict


def _evaluate(root: str, spec: DatasetSpec, version: str, challenger: _Scored,
              current: dict | None, holdout: pd.DataFrame, decided_by: str) -> GateDecision:
    """The decision against the champion of `current` (scored on the same holdout)."""
    champion = current["version"] if current else None
    if champion == version:
        promoted, reason, champion_auc = False, "already the champion", challenger.auc
    else:
        champion_auc = _score_auc(root, spec.model.name, champion, holdout) if champion else None
        promoted, reason = _verdict(challenger.auc, champion_auc, spec.model.gate_tolerance,
                                    spec.model.gate_floor_auc)
    recorded = None if challenger.recorded_auc is None else float(challenger.recorded_auc)
    return GateDecision(promoted, reason, version, challenger.auc, champion, champion_auc,
                        spec.model.gate_tolerance, spec.model.gate_floor_auc,
                        challenger.holdout["rows"], challenger.holdout["days"],
                        challenger.holdout["digest"], recorded, decided_by, utc_now())
