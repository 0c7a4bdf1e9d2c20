"""The Assets that carry a data set's data flow between its DAGs (one definition each, used by the DAG files).

Each data set has its own three, ``mlops.<dataset>.<event>`` (names in mlops_airflow.names): an ingest
of one data set triggers only its own train DAG. They are declared by name only (the URI defaults to the
name): an Asset URI with a scheme makes Airflow load every provider's URI normalizers at parse time, which
imports boto3 through the amazon provider (the cost is in benchmarks/README.md, "DAG parse"). The storage
location of each event travels in its `extra`; the keys below are the ones the DAG files set.
"""

from __future__ import annotations

from airflow.sdk import Asset

from mlops_airflow import names


def validated_data(dataset: str) -> Asset:
    """Emitted by ingest when a batch passed the quality gate;
    extra: dataset, date, rows, fingerprint, staging_uri, gx_success."""
    return Asset(name=names.asset_name(dataset, names.VALIDATED_DATA), group="mlops")


def champion_model(dataset: str) -> Asset:
    """Emitted when the champion alias moves (promotion or rollback);
    extra: model, version, previous, verdict, decision_id."""
    return Asset(name=names.asset_name(dataset, names.CHAMPION_MODEL), group="mlops")


def drift_detected(dataset: str) -> Asset:
    """Emitted by monitor when drift passed the guard rails; extra: dataset, date, at, drift_share,
    drifted_columns, champion_version, report_html, reason."""
    return Asset(name=names.asset_name(dataset, names.DRIFT_DETECTED), group="mlops")
