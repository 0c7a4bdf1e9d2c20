"""Envelope encryption at rest, built on Google Tink (streaming AEAD), never on a home-made cipher.

Every object gets a fresh data key; the data key is wrapped by a key-encryption key (KEK) held either in a
local Tink AEAD keyset (an Airflow connection in embedded mode) or in AWS KMS. The object's header names the
KEK that wrapped its data key, so rotating the KEK never strands old objects: the keyring's current key
encrypts, every key it still holds decrypts. One module per concern:

* :mod:`~mlops_bundle.crypto.keyrings` -- ``LocalKeyring`` (Tink keyset), ``KmsKeyring`` (AWS KMS), key
  ids, generating and rotating a local keyset;
* :mod:`~mlops_bundle.crypto.header` -- the on-disk format (magic, version, key id, wrapped data key) and
  the associated data that binds an object to its name;
* :mod:`~mlops_bundle.crypto.stream` -- streaming encrypt/decrypt of streams, bytes and files, and the
  key-use callback the audit trail hooks into;
* :mod:`~mlops_bundle.crypto.encrypting_storage` -- ``EncryptingStorage``, the lake's transparent and strict
  wrapper (objects bound to the lake id and their key; plaintext under an encrypted prefix refused);
* :mod:`~mlops_bundle.crypto.artifacts` -- sealing MLflow artifacts that hold data rows;
* :mod:`~mlops_bundle.crypto.cli` -- ``python -m mlops_bundle.crypto new-keyset|rotate-keyset|key-id``.

Operators bootstrap a local KEK keyset with ``python -m mlops_bundle.crypto new-keyset`` and rotate it with
``python -m mlops_bundle.crypto rotate-keyset < old.json`` (new primary, old keys kept for decryption).
Everything importable from here before the split still is.
"""

from mlops_bundle.crypto.artifacts import artifact_key, open_artifact, seal_artifact
from mlops_bundle.crypto.cli import main
from mlops_bundle.crypto.encrypting_storage import MIGRATION_SETTING, EncryptingStorage
from mlops_bundle.crypto.header import (
    LEGACY_VERSION,
    MAGIC,
    MAX_KEY_ID_LEN,
    MAX_WRAPPED_LEN,
    VERSION,
    DecryptionError,
    Header,
    format_version,
    is_encrypted,
    object_context,
    read_key_id,
)
from mlops_bundle.crypto.keyrings import (
    CryptoError,
    Keyring,
    KeyringError,
    KmsKeyring,
    LocalKeyring,
    generate_local_keyset,
    rotate_local_keyset,
)
from mlops_bundle.crypto.stream import (
    SEGMENT_SIZE,
    STREAM_HEADER_SIZE,
    TAG_SIZE,
    CryptoResult,
    KeyUseCallback,
    decrypt_bytes,
    decrypt_file,
    decrypt_stream,
    encrypt_bytes,
    encrypt_file,
    encrypt_stream,
    set_key_use_callback,
)

__all__ = [
    "LEGACY_VERSION",
    "MAGIC",
    "MAX_KEY_ID_LEN",
    "MAX_WRAPPED_LEN",
    "MIGRATION_SETTING",
    "SEGMENT_SIZE",
    "STREAM_HEADER_SIZE",
    "TAG_SIZE",
    "VERSION",
    "CryptoError",
    "CryptoResult",
    "DecryptionError",
    "EncryptingStorage",
    "Header",
    "KeyUseCallback",
    "Keyring",
    "KeyringError",
    "KmsKeyring",
    "LocalKeyring",
    "artifact_key",
    "decrypt_bytes",
    "decrypt_file",
    "decrypt_stream",
    "encrypt_bytes",
    "encrypt_file",
    "encrypt_stream",
    "format_version",
    "generate_local_keyset",
    "is_encrypted",
    "main",
    "object_context",
    "open_artifact",
    "read_key_id",
    "rotate_local_keyset",
    "seal_artifact",
    "set_key_use_callback",
]
