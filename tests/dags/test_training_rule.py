"""What train trusts of its triggering events: only `validated_data` events the ingest DAG emitted, with a
well-formed date, count as batches. Anyone allowed to create asset events (`POST /api/v2/assets/events`) can
add others with any `extra`; they are ignored, never a crash (a non-string date used to fail every retry)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference, AssetReferenceAssetEventDagRun


def _event(source_dag: str | None, extra: dict) -> AssetEventDagRunReference:
    return AssetEventDagRunReference(
        asset=AssetReferenceAssetEventDagRun(
            name="mlops.validated_data", uri="mlops.validated_data", extra={}
        ),
        extra=extra,
        source_task_id="validate_and_stage" if source_dag else None,
        source_dag_id=source_dag,
        source_run_id="r1" if source_dag else None,
        source_map_index=-1,
        source_aliases=[],
        timestamp=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
    )


def test_only_ingest_emitted_events_with_a_valid_date_are_batches():
    from mlops_airflow.train_tasks import _triggering_batches

    real = {"dataset": "churn", "date": "2026-05-01", "fingerprint": "sha256:ab"}
    run = SimpleNamespace(
        consumed_asset_events=[
            _event("ingest", real),
            _event(None, {**real, "date": "2026-05-02"}),  # made through the REST API
            _event("ingest", {**real, "date": 20260503}),  # not a string
            _event("ingest", {**real, "date": "2026-05-04T00:00"}),  # not YYYY-MM-DD
        ]
    )
    assert _triggering_batches(run) == [{**real, "source_run": "ingest/r1"}]
