"""The Assets that carry the data flow between the bundle's DAGs (one definition each, imported by DAGs).

They are declared by name only (the URI defaults to the name): an Asset URI with a scheme makes Airflow
load every provider's URI normalizers at parse time, which imports boto3 through the amazon provider
(the cost is in benchmarks/README.md, "DAG parse"). The storage location of each event travels in its
`extra`; the keys below are the ones the DAG files set.
"""

from __future__ import annotations

from airflow.sdk import Asset

from mlops_airflow import names
from mlops_airflow.names import TRAINING_POOL  # noqa: F401  (re-exported for the DAG files)

# Emitted by ingest when a batch passed the quality gate;
# extra: dataset, date, rows, fingerprint, staging_uri, gx_success.
VALIDATED_DATA = Asset(name=names.VALIDATED_DATA, group="mlops")

# Emitted when the champion alias moves (promotion or rollback);
# extra: model, version, previous, verdict, decision_id.
CHAMPION_MODEL = Asset(name=names.CHAMPION_MODEL, group="mlops")

# Emitted by monitor when drift passed the guard rails; extra: dataset, date, at, drift_share,
# drifted_columns, champion_version, report_html, reason.
DRIFT_DETECTED = Asset(name=names.DRIFT_DETECTED, group="mlops")
