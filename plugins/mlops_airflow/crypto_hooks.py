"""Hooks of the bundle's operators and task bodies: the only place S3 and KMS clients and keyrings are built.

In the amazon provider's style, operators build these hooks in ``execute`` and never make clients or parse
URIs themselves:

* ``MlopsStorageHook`` -- local paths, ``file://`` and ``s3://`` URIs (parsed by ``mlops_bundle.uris``);
  the S3 client comes from the amazon provider's ``S3Hook`` on an Airflow AWS connection (endpoint_url in
  its extra for MinIO/moto), built only when an S3 URI is used.
* ``KeyringHook`` -- the key-encryption keyring. ``key_source: connection``: the KEK keyset (Tink JSON,
  from ``python -m mlops_bundle.crypto new-keyset``) is the password of the connection
  ``encryption.keyset_conn_id`` (or its extra ``{"keyset": ...}``). ``key_source: kms``: AWS KMS through
  ``AwsBaseHook(client_type="kms")`` (the provider has no KMS hook) on ``storage.aws_conn_id`` and
  ``encryption.kms_key_id``; only that key and the ARNs in ``encryption.kms_key_ids`` may unwrap.

Every piece of key material is registered with Airflow's secrets masker (``mask_secret``) before anything
can log it; the keyset never leaves this module except inside the library's ``LocalKeyring``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from mlops_bundle.uris import is_s3, local_path, parse_s3_uri

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig
    from mlops_bundle.crypto import Keyring
    from mlops_bundle.storage import Storage


class MlopsStorageHook(BaseHook):
    """Files and stores at local paths, ``file://`` or ``s3://`` URIs; one S3 client per hook, made lazily.

    :param aws_conn_id: the Airflow AWS connection for S3 (region, endpoint, credentials)
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    hook_name = "MLOps bundle storage"

    def __init__(self, aws_conn_id: str | None = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    @cached_property
    def s3_client(self) -> Any:
        """A boto3 S3 client built by the amazon provider's ``S3Hook``."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def get_conn(self) -> Any:
        return self.s3_client

    def open_storage(self, uri: str) -> Storage:
        """The library's store rooted at ``uri`` (``file://`` or ``s3://bucket/prefix``)."""
        from mlops_bundle.storage import open_storage

        return open_storage(uri, self.s3_client if is_s3(uri) else None)

    @contextlib.contextmanager
    def local_files(self, source: str, destination: str) -> Iterator[tuple[Path, Path]]:
        """(a readable path for ``source``, a writable path for ``destination``), local or S3 objects.

        Both URIs are checked before any transfer. An S3 source is downloaded to a temporary directory
        first; an S3 destination is written there and uploaded only when the block succeeds; the
        temporary files are removed either way (constant memory, any object size).
        """
        src_obj = parse_s3_uri(source, require_key=True) if is_s3(source) else None
        dst_obj = parse_s3_uri(destination, require_key=True) if is_s3(destination) else None
        with tempfile.TemporaryDirectory(prefix="mlops-files-") as tmp:
            src, dst = local_path(source), local_path(destination)
            if src_obj is not None:
                src = Path(tmp) / "source"
                self.log.info("Downloading %s", source)
                self.s3_client.download_file(src_obj[0], src_obj[1], str(src))
            if dst_obj is not None:
                dst = Path(tmp) / "destination"
            yield src, dst
            if dst_obj is not None:
                self.log.info("Uploading to %s", destination)
                self.s3_client.upload_file(str(dst), dst_obj[0], dst_obj[1])


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


class KeyringHook(BaseHook):
    """The KEK keyring: a Tink keyset from an Airflow connection, or AWS KMS through an AWS connection.

    :param key_source: ``"connection"`` (local Tink keyset) or ``"kms"``
    :param keyset_conn_id: the connection whose password (or extra ``keyset``) holds the Tink JSON keyset
    :param kms_key_id: KMS key id/ARN/alias that wraps new data keys (always allowed to unwrap)
    :param kms_key_ids: further KMS key ARNs allowed to unwrap (headers naming any other key are refused)
    :param aws_conn_id: the Airflow AWS connection for KMS
    """

    conn_name_attr = "keyset_conn_id"
    default_conn_name = "mlops_keyset"
    hook_name = "MLOps bundle keyring"

    def __init__(
        self,
        *,
        key_source: str = "connection",
        keyset_conn_id: str = default_conn_name,
        kms_key_id: str = "",
        kms_key_ids: list[str] | None = None,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.key_source = key_source
        self.keyset_conn_id = keyset_conn_id
        self.kms_key_id = kms_key_id
        self.kms_key_ids = list(kms_key_ids or [])
        self.aws_conn_id = aws_conn_id

    @classmethod
    def from_config(
        cls,
        cfg: BundleConfig,
        *,
        key_source: str | None = None,
        keyset_conn_id: str | None = None,
        kms_key_id: str | None = None,
        aws_conn_id: str | None = None,
    ) -> KeyringHook:
        """The keyring the config's ``encryption`` section names; each argument given overrides its field."""
        enc = cfg.encryption
        return cls(
            key_source=key_source or enc.key_source,
            keyset_conn_id=keyset_conn_id or enc.keyset_conn_id,
            kms_key_id=kms_key_id if kms_key_id is not None else enc.kms_key_id,
            kms_key_ids=list(enc.kms_key_ids),
            aws_conn_id=aws_conn_id or cfg.storage.aws_conn_id,
        )

    def get_keyset(self) -> str:
        """The Tink JSON keyset held by the connection (password, else extra "keyset"), masked."""
        conn = self.get_connection(self.keyset_conn_id)
        keyset: Any = conn.password
        if not keyset:
            keyset = conn.extra_dejson.get("keyset")
            if isinstance(keyset, dict):
                keyset = json.dumps(keyset)
        if not keyset:
            raise ValueError(
                f"Airflow connection {self.keyset_conn_id!r} holds no keyset: put the JSON printed by "
                "`python -m mlops_bundle.crypto new-keyset` in its password (or extra 'keyset')"
            )
        _mask_keyset(keyset)
        return keyset

    def get_kms_client(self) -> Any:
        """A boto3 KMS client from the AWS connection (the amazon provider has no dedicated KMS hook)."""
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        return AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="kms").get_conn()

    def get_conn(self) -> Keyring:
        from mlops_bundle.crypto import KmsKeyring, LocalKeyring

        if self.key_source == "connection":
            return LocalKeyring(self.get_keyset())
        if self.key_source == "kms":
            return KmsKeyring(self.get_kms_client(), self.kms_key_id, allowed_key_ids=self.kms_key_ids)
        raise ValueError(f"unknown encryption key_source {self.key_source!r}: use 'connection' or 'kms'")


def storage_with_encryption(cfg: BundleConfig, store: Storage) -> Storage:
    """`store` wrapped so objects under the encrypted prefixes are encrypted at rest (when enabled).

    Strict: objects are bound to ``encryption.lake_id`` (default: the root URI) and their key, and a
    plaintext object under an encrypted prefix is refused unless ``encryption.allow_legacy_objects``.
    """
    enc = cfg.encryption
    if not enc.enabled:
        return store
    from mlops_bundle.crypto import EncryptingStorage, set_key_use_callback

    set_key_use_callback(_audit_key_use(cfg))
    return EncryptingStorage(
        store,
        KeyringHook.from_config(cfg).get_conn(),
        cfg.encrypted_prefixes,
        lake_id=enc.lake_id or None,
        allow_legacy=enc.allow_legacy_objects,
    )


def _audit_key_use(cfg: BundleConfig):
    """Record every use of a key-encryption key (ids and object names only) in the audit trail."""
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
