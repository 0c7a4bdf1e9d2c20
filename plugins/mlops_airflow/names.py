"""The Airflow names of a data set: DAG ids, Assets and pool (no Airflow import, so scripts can use it).

Every data set of the catalog (``mlops_bundle.catalog``) gets its own DAGs from the same DAG files, named
``<dataset>__<kind>``; a task finds its data set from its DAG id (never from a Param, which the person who
triggers the run chooses). A broken config file gets ``<dataset>__config_error`` instead.
"""

from __future__ import annotations

SEP = "__"
# the per-data-set DAGs, by kind (the DAG file dags/<kind>.py builds one per data set)
INGEST, TRAIN, MONITOR, ROLLBACK, BACKFILL, REGISTRY_WATCH = (
    "ingest", "train", "monitor", "rollback", "backfill", "registry_watch"
)  # fmt: skip
DAG_KINDS = (INGEST, TRAIN, MONITOR, ROLLBACK, BACKFILL, REGISTRY_WATCH)
CONFIG_ERROR = "config_error"
# the one DAG of the deployment, not of a data set (one audit chain)
AUDIT_VERIFY_DAG = "audit_verify"

# the Assets' last name part: mlops.<dataset>.<event>
VALIDATED_DATA = "validated_data"
CHAMPION_MODEL = "champion_model"
DRIFT_DETECTED = "drift_detected"


def dag_id(dataset: str, kind: str) -> str:
    """The DAG id of ``dataset``'s DAG of ``kind`` (``churn__train``)."""
    return f"{dataset}{SEP}{kind}"


def dataset_of(dag_id_: str | None) -> str | None:
    """The data set a DAG id belongs to (``churn__train`` -> ``churn``); None for a deployment DAG."""
    if not dag_id_:
        return None
    dataset, sep, kind = dag_id_.rpartition(SEP)
    return dataset if sep and dataset and kind in (*DAG_KINDS, CONFIG_ERROR) else None


def asset_name(dataset: str, event: str) -> str:
    """An Asset's name (= its URI): ``mlops.<dataset>.<event>``, e.g. ``mlops.churn.validated_data``."""
    return f"mlops.{dataset}.{event}"


def training_pool(dataset: str) -> str:
    """The Airflow pool that bounds ``dataset``'s concurrently training candidates (slots:
    training.pool_slots in its config)."""
    return f"{dataset}{SEP}training"
