"""What train trusts of its triggering events: only its own data set's `validated_data` events, emitted by
its own data set's ingest DAG, with a well-formed date, count as batches. Anyone allowed to create asset
events (`POST /api/v2/assets/events`) can add others with any `extra`; they are ignored, never a crash (a
non-string date used to fail every retry). Another data set's events are never this data set's batches."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference, AssetReferenceAssetEventDagRun


def _event(source_dag: str | None, extra: dict, asset: str = "mlops.churn.validated_data"):
    return AssetEventDagRunReference(
        asset=AssetReferenceAssetEventDagRun(name=asset, uri=asset, extra={}),
        extra=extra,
        source_task_id="validate_and_stage" if source_dag else None,
        source_dag_id=source_dag,
        source_run_id="r1" if source_dag else None,
        source_map_index=-1,
        source_aliases=[],
        timestamp=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
    )


def test_only_own_ingest_emitted_events_with_a_valid_date_are_batches():
    from mlops_airflow.train_tasks import _triggering_batches

    real = {"dataset": "churn", "date": "2026-05-01", "fingerprint": "sha256:ab"}
    run = SimpleNamespace(
        dag_id="churn__train",
        consumed_asset_events=[
            _event("churn__ingest", real),
            _event(None, {**real, "date": "2026-05-02"}),  # made through the REST API
            _event("churn__ingest", {**real, "date": 20260503}),  # not a string
            _event("churn__ingest", {**real, "date": "2026-05-04T00:00"}),  # not YYYY-MM-DD
            _event("ingest", {**real, "date": "2026-05-05"}),  # the old, single-data-set DAG id
            _event("wine__ingest", {**real, "date": "2026-05-06"}),  # another data set's ingest
            # another data set's asset, even if emitted under this data set's DAG id
            _event("churn__ingest", {**real, "date": "2026-05-07"}, asset="mlops.wine.validated_data"),
        ],
    )
    assert _triggering_batches(run) == [{**real, "source_run": "churn__ingest/r1"}]


def test_the_other_data_set_trusts_only_its_own_ingest():
    from mlops_airflow.train_tasks import _triggering_batches

    wine = {"dataset": "wine", "date": "2026-05-01", "fingerprint": "sha256:cd"}
    run = SimpleNamespace(
        dag_id="wine__train",
        consumed_asset_events=[
            _event("churn__ingest", {**wine, "date": "2026-05-02"}),
            _event("wine__ingest", wine, asset="mlops.wine.validated_data"),
        ],
    )
    assert _triggering_batches(run) == [{**wine, "source_run": "wine__ingest/r1"}]
