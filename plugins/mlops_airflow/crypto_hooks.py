"""Airflow side of encryption at rest: keyrings built from Airflow connections, secrets masked first.

* ``key_source: connection`` -- the KEK keyset (Tink JSON, from ``python -m mlops_bundle.crypto new-keyset``)
  is the password of the connection ``encryption.keyset_conn_id`` (or its extra ``{"keyset": ...}``).
* ``key_source: kms`` -- AWS KMS through the amazon provider: ``AwsBaseHook(client_type="kms")`` on the
  connection ``storage.aws_conn_id`` (region/endpoint/credentials from it) and ``encryption.kms_key_id``.

Every piece of key material is registered with Airflow's secrets masker (``mask_secret``) before anything
can log it; the keyset never leaves this module except inside the library's ``LocalKeyring``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.crypto import Keyring
    from mlops_bundle.storage import Storage


def _mask_keyset(keyset_json: str) -> None:
    """Mask the keyset as stored, re-serialized compactly, and each key's base64 value on its own."""
    from airflow.sdk.log import mask_secret

    mask_secret(keyset_json)
    try:
        parsed = json.loads(keyset_json)
    except ValueError:
        return
    mask_secret(json.dumps(parsed))
    mask_secret(json.dumps(parsed, separators=(",", ":")))
    for key in parsed.get("key", []) if isinstance(parsed, dict) else []:
        value = (key.get("keyData") or {}).get("value") if isinstance(key, dict) else None
        if isinstance(value, str):
            mask_secret(value)


def keyset_from_connection(conn_id: str) -> str:
    """The Tink JSON keyset held by an Airflow connection (password, else extra "keyset"), masked."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    keyset: Any = conn.password
    if not keyset:
        extra = conn.extra_dejson
        keyset = extra.get("keyset")
        if isinstance(keyset, dict):
            keyset = json.dumps(keyset)
    if not keyset:
        raise ValueError(
            f"Airflow connection {conn_id!r} holds no keyset: put the JSON printed by "
            "`python -m mlops_bundle.crypto new-keyset` in its password (or extra 'keyset')"
        )
    _mask_keyset(keyset)
    return keyset


def kms_client(aws_conn_id: str) -> Any:
    """A boto3 KMS client from an Airflow AWS connection (the amazon provider has no dedicated KMS hook)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    return AwsBaseHook(aws_conn_id=aws_conn_id, client_type="kms").get_conn()


def keyring_from_config(
    cfg: BundleConfig,
    *,
    key_source: str | None = None,
    keyset_conn_id: str | None = None,
    kms_key_id: str | None = None,
    aws_conn_id: str | None = None,
) -> Keyring:
    """The keyring the config names; each argument overrides its config field when given."""
    from mlops_bundle.crypto import KmsKeyring, LocalKeyring

    enc = cfg.encryption
    source = key_source or enc.key_source
    if source == "connection":
        return LocalKeyring(keyset_from_connection(keyset_conn_id or enc.keyset_conn_id))
    if source == "kms":
        client = kms_client(aws_conn_id or cfg.storage.aws_conn_id)
        return KmsKeyring(client, kms_key_id if kms_key_id is not None else enc.kms_key_id)
    raise ValueError(f"unknown encryption key_source {source!r}: use 'connection' or 'kms'")


def storage_with_encryption(cfg: BundleConfig, store: Storage) -> Storage:
    """`store` wrapped so objects under the encrypted prefixes are encrypted at rest (when enabled)."""
    if not cfg.encryption.enabled:
        return store
    from mlops_bundle.crypto import EncryptingStorage, set_key_use_callback

    set_key_use_callback(_audit_key_use(cfg))
    return EncryptingStorage(store, keyring_from_config(cfg), cfg.encrypted_prefixes)


def _audit_key_use(cfg: BundleConfig):
    """Record every use of a key-encryption key (ids and object names only) in the audit trail."""
    import os

    from mlops_bundle.audit import record_event

    def record(action: str, key_id: str, name: str) -> None:
        record_event(
            cfg,
            f"key.{action}",
            actor=os.environ.get("AIRFLOW_CTX_DAG_ID", "mlops"),
            subject=name,
            payload={"key_id": key_id, "object": name},
            required=False,
        )

    return record
