"""Decision records: the ``Decision`` dataclass and how it is written to the model registry.

Every decision (promoted, rejected, no-op, rollback) is written as JSON to the subject version's run
(``decisions/<decided_at>-<decision_id>.json``) and summarised in ``gate.*`` model-version tags, so the
registry itself answers "why is this the champion?". The audit trail gets the same record
(``mlops_bundle.audit.record_decision``). A pre-approval evaluation (``kind="evaluation"``) is written
to ``evaluations/...`` and audited as ``evaluation.<verdict>``; it sets no ``gate.*`` tags: it is what the
gate would do, not a decision.

Writing a record is idempotent: the artifact path and every tag follow from the decision itself (its id
and ``decided_at`` are fixed when the intent is written), so a retry overwrites the same record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mlops_bundle.jsonsafe import json_safe
from mlops_bundle.promotion.policy import PROMOTE, REJECT

if TYPE_CHECKING:
    from mlflow import MlflowClient

DECISION = "decision"
EVALUATION = "evaluation"
KINDS = (DECISION, EVALUATION)

# model-version tag values may hold 100k chars in MLflow 3.17, run tags 8k; keep tags readable
TAG_VALUE_MAX = 1000


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Decision:
    """One promotion decision, exactly as recorded (JSON artifact + ``gate.*`` version tags)."""

    model_name: str
    verdict: str
    reason: str
    # {"version": "3", "run_id": "...", "metrics": {...}}
    challenger: dict[str, Any]
    # the champion it was compared with: {"version": "2", "metrics": {...}} or None
    champion: dict[str, Any] | None
    policy: dict[str, Any]
    actor: str
    context: dict[str, Any] = field(default_factory=dict)
    forced: bool = False
    justification: str | None = None
    # True when this call changed the aliases
    applied: bool = False
    # the champion version before this decision (None: there was none)
    previous_champion: str | None = None
    decision_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    decided_at: str = field(default_factory=_utc_now)
    # run-relative artifact path of the JSON record (None: kept in the version tag gate.decision)
    artifact_path: str | None = None
    # "decision" (changes or keeps the champion) or "evaluation" (what the gate would do, before approval)
    kind: str = DECISION
    # the Airflow user who triggered the run (None: a schedule or an asset event) and who approved it
    triggered_by: str | None = None
    approved_by: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """The decision as ``to_dict`` wrote it (e.g. read back from the decision ledger)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (what is written to the artifact and returned over XCom)."""
        return json_safe(dataclasses.asdict(self))

    @property
    def promoted(self) -> bool:
        return self.verdict == PROMOTE and self.applied


def tag_metrics(mv: Any) -> dict[str, float]:
    """The metrics a version was gated on (its ``gate.metrics`` tag); {} when it has none."""
    raw = (mv.tags or {}).get("gate.metrics")
    if not raw:
        return {}
    with contextlib.suppress(ValueError, TypeError):
        return {str(k): float(v) for k, v in json.loads(raw).items() if v is not None}
    return {}


def _truncate(text: str, limit: int = TAG_VALUE_MAX) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _artifact_name(decision: Decision) -> str:
    stamp = decision.decided_at.replace("+00:00", "Z").replace(":", "").replace("-", "")
    folder = "evaluations" if decision.kind == EVALUATION else "decisions"
    return f"{folder}/{stamp}-{decision.decision_id}.json"


def write_record(client: MlflowClient, decision: Decision, subject: Any, demoted: str | None) -> None:
    """Write the decision: JSON artifact on the subject version's run + ``gate.*`` tags (+ alias history).

    Why both: the artifact is the complete, immutable record; tags make the latest verdict visible in the
    registry UI and searchable.
    """
    name, version = decision.model_name, str(subject.version)
    if subject.run_id:
        decision.artifact_path = _artifact_name(decision)
    payload = json.dumps(decision.to_dict(), indent=2, sort_keys=True)
    evaluation = decision.kind == EVALUATION
    if subject.run_id:
        client.log_text(subject.run_id, payload, decision.artifact_path)
    else:  # a version registered without a run: keep the record on the version itself
        client.set_model_version_tag(
            name, version, "gate.evaluation" if evaluation else "gate.decision", payload
        )
    if evaluation:
        return
    tags = {
        "gate.verdict": decision.verdict,
        "gate.reason": _truncate(decision.reason),
        "gate.decision_id": decision.decision_id,
        "gate.decided_at": decision.decided_at,
        "gate.actor": _truncate(decision.actor, 250),
        "gate.forced": str(decision.forced).lower(),
        "gate.applied": str(decision.applied).lower(),
        # always written: a tag left by an earlier decision on this version must not linger
        "gate.approved_by": _truncate(decision.approved_by or "(none)", 250),
    }
    metrics = decision.challenger.get("metrics") or {}
    if metrics and decision.verdict in (PROMOTE, REJECT):
        tags["gate.metrics"] = json.dumps(json_safe(metrics), sort_keys=True)
    if decision.applied:
        tags["promoted_at"] = decision.decided_at
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if decision.applied and demoted:
        client.set_model_version_tag(name, demoted, "demoted_at", decision.decided_at)
        client.set_model_version_tag(name, demoted, "superseded_by", version)
