"""Bridge from Airflow to the library: config and storage built from Airflow connections."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.storage import Storage


def bundle_config() -> BundleConfig:
    from mlops_bundle.config import load_config

    return load_config()


def s3_client(aws_conn_id: str) -> Any:
    """A boto3 S3 client from an Airflow AWS connection (endpoint_url in its extra for MinIO/moto)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


def storage(cfg: BundleConfig, uri: str | None = None) -> Storage:
    """The store for `uri` (default: the configured root); S3 credentials come from the Airflow connection.

    With encryption enabled in the config, the root store encrypts and decrypts transparently.
    """
    from mlops_bundle.storage import open_storage

    root = uri is None or uri.rstrip("/") == cfg.root_uri
    uri = uri or cfg.root_uri
    client = s3_client(cfg.storage.aws_conn_id) if uri.startswith("s3://") else None
    store = open_storage(uri, client)
    if root and cfg.encryption.enabled:
        # the lake's staging/quarantine/reports/predictions objects are encrypted at rest; landing stays raw
        from mlops_airflow.crypto_hooks import storage_with_encryption

        store = storage_with_encryption(cfg, store)
    return store


def batch_date(
    param_date: str | None, logical_date: dt.datetime | None, run_after: dt.datetime | None
) -> str:
    """The batch a run ingests: the `date` Param if given, else the day before the run's logical date.

    A scheduled run at midnight therefore ingests the day that just ended.
    """
    from mlops_bundle.ingest import parse_date

    if param_date:
        return parse_date(param_date)
    when = logical_date or run_after
    if when is None:
        raise ValueError("this run has no logical date: trigger it with conf {'date': 'YYYY-MM-DD'}")
    return (when.date() - dt.timedelta(days=1)).isoformat()


def attempt_label(run_id: str, try_number: int | None) -> str:
    """A quarantine folder name unique per task try, safe on every object store."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{run_id}-try{try_number or 1}")
