"""
### Audit verify: check the hash-chained audit log every hour

The bundle's audit log (every task/DAG-run state change, asset event and business decision, see
`mlops_bundle.audit`) is an append-only chain: each record carries the hash of the previous one (HMAC-keyed
when `audit.hmac_conn_id` names a connection). This DAG walks the whole chain in order and

1. **fails** when a link is broken, naming the first broken record (`seq`) and why: an edited field, a
   deleted or reordered record, a forged record without the HMAC key, or a **truncated** tail. The tail
   is checked against the newest anchor in the Object Lock bucket `audit.anchor_uri` (S3/MinIO, through
   the AWS connection `storage.aws_conn_id`), which tasks cannot delete or overwrite: a deleted tail,
   deleted anchor rows or a deleted head record are named. Without a bucket it checks against the
   `audit_anchor` rows and the Variable `mlops_audit_verified_head` only and warns that those are
   rewritable;
2. on success anchors the head it verified (an `audit_anchor` row + a new locked object in the bucket)
   and remembers it in the Variable; it returns `{records, head_seq, head_hash, anchor, lost_events,
   warnings}` (`lost_events`: events listeners could not write while the store was down).

A failure is not retried away: do not repair the log in place; export it for the auditors
(`python -m mlops_bundle.audit export --out audit.jsonl`) and escalate.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from mlops_airflow.dag_defaults import dag_args


@dag(
    schedule="@hourly",
    max_active_runs=1,
    doc_md=__doc__,
    **dag_args("audit", retry_delay_s=30),
)
def audit_verify():
    @task
    def verify_chain() -> dict:
        from mlops_airflow.audit_operator import verify_audit_chain

        return verify_audit_chain()

    verify_chain()


audit_verify()
