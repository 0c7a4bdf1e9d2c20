"""Decision records: the ``Decision`` dataclass and how it is written to the model registry.

Every decision (promoted, rejected, no-op, rollback) is written as JSON to the subject version's run
(``decisions/<decided_at>-<decision_id>.json``) and summarised in ``gate.*`` model-version tags, so the
registry itself answers "why is this the champion?". The audit trail gets the same record
(``mlops_bundle.audit.record_decision``).
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
    return f"decisions/{stamp}-{decision.decision_id}.json"


def write_record(client: MlflowClient, decision: Decision, subject: Any, demoted: str | None) -> None:
    """Write the decision: JSON artifact on the subject version's run + ``gate.*`` tags (+ alias history).

    Why both: the artifact is the complete, immutable record; tags make the latest verdict visible in the
    registry UI and searchable.
    """
    name, version = decision.model_name, str(subject.version)
    if subject.run_id:
        decision.artifact_path = _artifact_name(decision)
    payload = json.dumps(decision.to_dict(), indent=2, sort_keys=True)
    if subject.run_id:
        client.log_text(subject.run_id, payload, decision.artifact_path)
    else:  # a version registered without a run: keep the record on the version itself
        client.set_model_version_tag(name, version, "gate.decision", payload)
    tags = {
        "gate.verdict": decision.verdict,
        "gate.reason": _truncate(decision.reason),
        "gate.decision_id": decision.decision_id,
        "gate.decided_at": decision.decided_at,
        "gate.actor": _truncate(decision.actor, 250),
        "gate.forced": str(decision.forced).lower(),
        "gate.applied": str(decision.applied).lower(),
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
