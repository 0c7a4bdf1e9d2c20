"""The bundle's operators, in Airflow's provider style.

``EncryptFileOperator`` / ``DecryptFileOperator`` encrypt or decrypt one file with the bundle's envelope
encryption (``mlops_bundle.crypto``: Tink streaming AEAD, a fresh data key per object wrapped by a KEK from
an Airflow connection or AWS KMS). Sources and destinations are local paths or ``s3://bucket/key``; S3
objects stream through a temporary file (constant memory) with a client built by ``S3Hook`` in
``execute``. A decrypted object reaches its destination only after the whole stream authenticated.

Key material never passes through these operators' arguments (only connection ids and KMS key ids do),
is masked with ``mask_secret`` as soon as it is read, and never appears in the returned XCom value, which
is ``{"source", "destination", "bytes" (plaintext size), "key_id"}``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


def _split_s3(uri: str) -> tuple[str, str] | None:
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri!r} is not an S3 object URI: use s3://bucket/key")
    return bucket, key


def _local(path: str) -> Path:
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(path).path))
    return Path(path)


class _FileCryptoOperator(BaseOperator):
    template_fields: Sequence[str] = (
        "source",
        "destination",
        "key_source",
        "keyset_conn_id",
        "kms_key_id",
        "aws_conn_id",
        "associated_data",
    )
    ui_color = "#f0e4ff"

    def __init__(
        self,
        *,
        source: str,
        destination: str,
        key_source: str | None = None,
        keyset_conn_id: str | None = None,
        kms_key_id: str | None = None,
        aws_conn_id: str | None = None,
        associated_data: str = "",
        **kwargs: Any,
    ) -> None:
        """
        :param source: local path, file:// URI or s3://bucket/key to read (templated)
        :param destination: local path, file:// URI or s3://bucket/key to write (templated)
        :param key_source: "connection" or "kms"; default: encryption.key_source of the bundle config
        :param keyset_conn_id: connection holding the Tink KEK keyset; default: encryption.keyset_conn_id
        :param kms_key_id: KMS key id/ARN/alias that wraps new data keys; default: encryption.kms_key_id
        :param aws_conn_id: AWS connection for S3 and KMS; default: storage.aws_conn_id
        :param associated_data: optional context bound to the ciphertext (e.g. a logical object name);
            decryption must pass the same value. Empty by default, so files can be moved freely.
        """
        super().__init__(**kwargs)
        self.source = source
        self.destination = destination
        self.key_source = key_source
        self.keyset_conn_id = keyset_conn_id
        self.kms_key_id = kms_key_id
        self.aws_conn_id = aws_conn_id
        self.associated_data = associated_data

    # the library call that turns one local file into another
    def _transform(self, src: Path, dst: Path, keyring: Any, aad: bytes) -> Any:
        raise NotImplementedError

    _verb = ""

    def execute(self, context: Context) -> dict[str, Any]:
        from mlops_airflow.crypto_hooks import keyring_from_config
        from mlops_airflow.runtime import bundle_config

        cfg = bundle_config()
        aws_conn_id = self.aws_conn_id or cfg.storage.aws_conn_id
        keyring = keyring_from_config(
            cfg,
            key_source=self.key_source,
            keyset_conn_id=self.keyset_conn_id,
            kms_key_id=self.kms_key_id,
            aws_conn_id=aws_conn_id,
        )
        src_s3, dst_s3 = _split_s3(self.source), _split_s3(self.destination)
        s3 = None
        if src_s3 or dst_s3:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            s3 = S3Hook(aws_conn_id=aws_conn_id).get_conn()
        aad = self.associated_data.encode("utf-8")
        with tempfile.TemporaryDirectory(prefix="mlops-crypto-") as tmp:
            if src_s3:
                src = Path(tmp) / "source"
                self.log.info("Downloading %s", self.source)
                s3.download_file(src_s3[0], src_s3[1], str(src))
            else:
                src = _local(self.source)
            dst = Path(tmp) / "destination" if dst_s3 else _local(self.destination)
            result = self._transform(src, dst, keyring, aad)
            if dst_s3:
                self.log.info("Uploading to %s", self.destination)
                s3.upload_file(str(dst), dst_s3[0], dst_s3[1])
        self.log.info(
            "%s %s -> %s: %d plaintext bytes, %d stored bytes, key id %s",
            self._verb,
            self.source,
            self.destination,
            result.plaintext_bytes,
            result.ciphertext_bytes,
            result.key_id,
        )
        return {
            "source": self.source,
            "destination": self.destination,
            "bytes": result.plaintext_bytes,
            "key_id": result.key_id,
        }


class EncryptFileOperator(_FileCryptoOperator):
    """Encrypt one file (local or S3) with a fresh data key wrapped by the configured KEK."""

    _verb = "Encrypted"

    def _transform(self, src: Path, dst: Path, keyring: Any, aad: bytes) -> Any:
        from mlops_bundle.crypto import encrypt_file

        return encrypt_file(src, dst, keyring, aad=aad)


class DecryptFileOperator(_FileCryptoOperator):
    """Decrypt one file (local or S3); fails with DecryptionError on any tampering or a wrong key."""

    _verb = "Decrypted"
    ui_color = "#e4f0ff"

    def _transform(self, src: Path, dst: Path, keyring: Any, aad: bytes) -> Any:
        from mlops_bundle.crypto import decrypt_file

        return decrypt_file(src, dst, keyring, aad=aad)
