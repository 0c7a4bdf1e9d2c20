"""``AuditLogOperator`` (explicit business events in a DAG) and the task body of the ``audit_verify`` DAG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

# where the audit_verify DAG remembers the last verified head (Airflow's metadata DB, i.e. outside the
# audit store): the next run verifies against it, which is what makes tail truncation detectable
HEAD_VARIABLE = "mlops_audit_verified_head"


class AuditLogOperator(BaseOperator):
    """Append one business event (``source="operator"``) to the bundle's hash-chained audit log.

    :param event: dotted event name, e.g. ``approval.granted`` or ``dataset.published`` (templated)
    :param subject: what the event is about, e.g. ``churn-classifier/7`` (templated)
    :param payload: JSON-safe details (templated; a dict, rendered recursively)
    :param actor: who acted (templated); default: the user who triggered the run, else the run type
        (``scheduler``, ``backfill``...)

    Returns ``{"seq": ..., "hash": ...}`` of the new record (None when ``audit.enabled`` is false). The
    payload gets an ``airflow`` entry (dag_id, run_id, task_id, try_number) unless it already has one.
    A failed write fails the task (and is retried): an explicit audit event is never dropped silently.
    """

    template_fields: Sequence[str] = ("event", "subject", "payload", "actor")
    ui_color = "#f4e1c1"

    def __init__(
        self,
        *,
        event: str,
        subject: str,
        payload: Mapping[str, Any] | None = None,
        actor: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.event = event
        self.subject = subject
        self.payload = payload
        self.actor = actor

    def execute(self, context: Any) -> dict[str, Any] | None:
        from mlops_airflow import runtime
        from mlops_airflow.audit_listener import actor_of, audit_log

        cfg = runtime.bundle_config()
        if not cfg.audit.enabled:
            self.log.warning("audit.enabled is false: event %s for %s not recorded", self.event, self.subject)
            return None
        dag_run = context.get("dag_run")
        ti = context.get("ti")
        actor = self.actor or actor_of(
            getattr(dag_run, "run_type", None), getattr(dag_run, "triggering_user_name", None)
        )
        payload = dict(self.payload or {})
        payload.setdefault(
            "airflow",
            {
                "dag_id": getattr(ti, "dag_id", None),
                "run_id": getattr(ti, "run_id", None),
                "task_id": getattr(ti, "task_id", None),
                "try_number": getattr(ti, "try_number", None),
            },
        )
        record = audit_log(cfg).append(
            self.event, source="operator", actor=actor, subject=self.subject, payload=payload
        )
        self.log.info("audit record %s: %s %s by %s", record["seq"], self.event, self.subject, actor)
        return {"seq": record["seq"], "hash": record["hash"]}


def verify_audit_chain() -> dict[str, Any]:
    """Verify the whole chain against the anchor bucket and the last verified head; fail naming what broke.

    With ``audit.anchor_uri`` the bucket's newest anchor (Object Lock, out of the tasks' reach) is what
    the log must still reach; without it the log is checked against the ``audit_anchor`` rows and the
    Variable only, and a warning says those are rewritable. On success the *verified* head (never a
    re-read one) is anchored (row + bucket object) and remembered (Variable ``HEAD_VARIABLE``), and
    ``{records, head_seq, head_hash, anchor, lost_events, warnings}`` is returned.
    """
    import logging

    from airflow.sdk import Variable

    from mlops_airflow import runtime
    from mlops_airflow.audit_anchor_hook import AuditAnchorHook
    from mlops_airflow.audit_listener import hmac_key
    from mlops_bundle import audit

    log = logging.getLogger(__name__)
    cfg = runtime.bundle_config()
    if not cfg.audit.enabled:
        log.warning("audit.enabled is false: nothing to verify")
        return {"records": 0, "head_seq": None, "head_hash": None}
    hook = AuditAnchorHook.from_config(cfg)
    bucket = hook.get_conn() if hook is not None else None
    remembered = Variable.get(HEAD_VARIABLE, default=None)
    expect = audit.parse_head(remembered) if remembered else None
    result = audit.verify(cfg.audit_uri, hmac_key(cfg), expect_head=expect, bucket=bucket)
    for warning in result.warnings:
        log.warning("audit verify: %s", warning)
    if not result.ok:
        where = (
            f"first broken link at seq {result.first_bad_seq}" if result.first_bad_seq else "not verifiable"
        )
        raise AirflowFailException(
            f"audit chain BROKEN in {cfg.audit_uri}: {where}: {result.reason}. {result.records} record(s) "
            f"before it are intact (last intact head {result.head_seq}:{result.head_hash}). Do not repair "
            f"the log in place: export it (python -m mlops_bundle.audit export --out audit.jsonl) and "
            f"escalate to the audit owner."
        )
    anchor_uri = None
    if result.head_seq is not None:
        verified = (result.head_seq, result.head_hash)
        audit.anchor(cfg.audit_uri, verified, records=result.records, bucket=bucket)
        anchor_uri = f"s3://{bucket.bucket}/{bucket.key(result.head_seq)}" if bucket is not None else None
        Variable.set(HEAD_VARIABLE, f"{result.head_seq}:{result.head_hash}")
    log.info(
        "audit chain intact: %d record(s), head %s:%s, anchored %s; %d listener event(s) lost in %d gap(s)",
        result.records, result.head_seq, result.head_hash, anchor_uri or "in the store only",
        result.lost_events, result.gaps,
    )  # fmt: skip
    return {
        "records": result.records,
        "head_seq": result.head_seq,
        "head_hash": result.head_hash,
        "anchor": anchor_uri,
        "lost_events": result.lost_events,
        "warnings": list(result.warnings),
    }
