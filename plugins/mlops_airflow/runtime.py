"""Bridge from Airflow to the library: the config, and stores whose clients the bundle's hooks build."""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowSkipException

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage


log = logging.getLogger(__name__)


def skip(ti: Any, reason: str) -> AirflowSkipException:
    """A skip whose reason is kept as XCom `skip_reason` (shown by summaries; logs are not enough)."""
    if ti is not None:
        ti.xcom_push(key="skip_reason", value=reason)
    log.info("skipping: %s", reason)
    return AirflowSkipException(reason)


def current_dataset() -> str | None:
    """The data set of the running task, from its DAG id (``churn__train`` -> ``churn``); None outside a
    task or in a deployment DAG (audit_verify). Never from a Param: whoever triggers a run chooses those."""
    from airflow.sdk import get_current_context

    from mlops_airflow.names import dataset_of

    try:
        context = get_current_context()
    except Exception:  # no task is running in this process
        return None
    dag = context.get("dag")
    return dataset_of(getattr(dag, "dag_id", None))


def deployment_config() -> BundleConfig:
    """The config that speaks for the deployment (the audit chain every data set shares); cached."""
    from mlops_bundle import catalog

    return catalog.deployment_config()


def bundle_config(dataset: str | None = None) -> BundleConfig:
    """The config of ``dataset`` (default: the running task's data set); where no data set is in play, the
    deployment's (mlops_bundle.catalog.deployment_config: the audit chain every data set shares)."""
    from mlops_bundle import catalog

    dataset = dataset or current_dataset()
    if dataset is None:
        return deployment_config()
    return catalog.dataset_config(dataset)


def storage(cfg: BundleConfig, uri: str | None = None) -> Storage:
    """The store for `uri` (default: the configured root); S3 credentials come from the Airflow connection.

    With encryption enabled in the config, the root store encrypts and decrypts transparently.
    """
    from mlops_airflow.crypto_hooks import MlopsStorageHook, storage_with_encryption

    root = uri is None or uri.rstrip("/") == cfg.root_uri
    store = MlopsStorageHook(aws_conn_id=cfg.storage.aws_conn_id).open_storage(uri or cfg.root_uri)
    if root:
        # the lake's staging/quarantine/reports/predictions objects are encrypted at rest; landing stays raw
        store = storage_with_encryption(cfg, store)
    return store


def batch_date(
    param_date: str | None, logical_date: dt.datetime | None, run_after: dt.datetime | None
) -> str:
    """The batch a run ingests: the `date` Param if given, else the day before the run's logical date.

    A scheduled run at midnight therefore ingests the day that just ended.
    """
    from mlops_bundle.names import parse_date

    if param_date:
        return parse_date(param_date)
    when = logical_date or run_after
    if when is None:
        raise ValueError("this run has no logical date: trigger it with conf {'date': 'YYYY-MM-DD'}")
    return (when.date() - dt.timedelta(days=1)).isoformat()


def attempt_label(run_id: str, try_number: int | None) -> str:
    """A quarantine folder name unique per task try, safe on every object store."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run_id}-try{try_number or 1}")
