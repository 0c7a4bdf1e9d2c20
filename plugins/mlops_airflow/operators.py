"""The bundle's operators, in Airflow's provider style.

``EncryptFileOperator`` / ``DecryptFileOperator`` encrypt or decrypt one file with the bundle's envelope
encryption (``mlops_bundle.crypto``: Tink streaming AEAD, a fresh data key per object wrapped by a KEK from
an Airflow connection or AWS KMS). Sources and destinations are local paths or ``s3://bucket/key``; S3
objects stream through a temporary file (constant memory); ``execute`` builds the hooks that own the S3
and KMS clients and the URI parsing (``mlops_airflow.crypto_hooks``). A decrypted object reaches its
destination only after the whole stream authenticated.

Key material never passes through these operators' arguments (only connection ids and KMS key ids do),
is masked with ``mask_secret`` as soon as it is read, and never appears in the returned XCom value, which
is ``{"source", "destination", "bytes" (plaintext size), "key_id"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


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
        from mlops_airflow.crypto_hooks import KeyringHook, MlopsStorageHook
        from mlops_airflow.runtime import bundle_config

        cfg = bundle_config()
        keyring = KeyringHook.from_config(
            cfg,
            key_source=self.key_source,
            keyset_conn_id=self.keyset_conn_id,
            kms_key_id=self.kms_key_id,
            aws_conn_id=self.aws_conn_id,
        ).get_conn()
        files = MlopsStorageHook(aws_conn_id=self.aws_conn_id or cfg.storage.aws_conn_id)
        with files.local_files(self.source, self.destination) as (src, dst):
            result = self._transform(src, dst, keyring, self.associated_data.encode("utf-8"))
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
