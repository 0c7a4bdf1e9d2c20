"""
### Audit verify: check the hash-chained audit log every hour

The bundle's audit log (every task/DAG-run state change, asset event and business decision, see
`mlops_bundle.audit`) is an append-only chain: each record carries the hash of the previous one (HMAC-keyed
when `audit.hmac_conn_id` names a connection). This DAG walks the whole chain in order and

1. **fails** when a link is broken, naming the first broken record (`seq`) and why: an edited field, a
   deleted or reordered record, a forged record without the HMAC key, or a **truncated** tail (the log
   is checked against the head this DAG verified last time, kept in the Airflow Variable
   `mlops_audit_verified_head`, i.e. outside the audit store);
2. on success remembers the new head (Variable + an anchor row in the audit store) and returns
   `{records, head_seq, head_hash}`.

A failure is not retried away: do not repair the log in place; export it for the auditors
(`python -m mlops_bundle.audit export --out audit.jsonl`) and escalate.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import dag, task


@dag(
    schedule="@hourly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "audit"],
    default_args={"owner": "ml-platform", "retries": 2, "retry_delay": dt.timedelta(seconds=30)},
    doc_md=__doc__,
)
def audit_verify():
    @task
    def verify_chain() -> dict:
        from mlops_airflow.audit_operator import verify_audit_chain

        return verify_audit_chain()

    verify_chain()


audit_verify()
