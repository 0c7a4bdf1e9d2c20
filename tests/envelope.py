"""Which KMS key really wrapped an encrypted object's data key, asked of KMS itself.

The magic (``MLOPSENC``) and the key id in the header are only labels the writer chose; this reads the
header in its documented layout (``mlops_bundle.crypto``: magic, version, key-id length, key id, context
length and context (format 2), wrapped length, wrapped data keyset) and sends the wrapped data key to KMS ``Decrypt``, which answers with the key
that encrypted it (or refuses)."""

from __future__ import annotations

import struct
from typing import Any

_PREFIX = struct.Struct(">8sBH")  # magic, version, key_id_len
_CONTEXT_LEN = struct.Struct(">H")
_WRAPPED_LEN = struct.Struct(">I")


def kms_key_that_wrapped(blob: bytes, kms_client: Any, aad: bytes = b"") -> str:
    """The ARN of the KMS key whose ciphertext the object's data key is (its first bytes are enough:
    the header). ``aad`` is the associated data of a format-1 object (its key under the store root); format
    2 stores it in the header (context: lake id and key), so ``aad`` is ignored there."""
    from tink.proto import tink_pb2

    from mlops_bundle.crypto import MAGIC

    magic, version, kid_len = _PREFIX.unpack_from(blob)
    assert magic == MAGIC, f"not an encrypted object: {blob[:16]!r}"
    prefix = blob[: _PREFIX.size + kid_len]  # magic|version|key_id_len|key_id: the wrap's associated data
    if version >= 2:  # format 2 stores the context (lake id + object key) in the header, and wraps with it
        (ctx_len,) = _CONTEXT_LEN.unpack_from(blob, len(prefix))
        prefix = blob[: len(prefix) + _CONTEXT_LEN.size + ctx_len]
        aad = b""
    (wrapped_len,) = _WRAPPED_LEN.unpack_from(blob, len(prefix))
    start = len(prefix) + _WRAPPED_LEN.size
    wrapped = blob[start : start + wrapped_len]
    assert len(wrapped) == wrapped_len, "pass at least the whole header"
    ciphertext = tink_pb2.EncryptedKeyset.FromString(wrapped).encrypted_keyset
    # Tink's AWS KMS AEAD sends the associated data as this encryption context
    context = {"associatedData": (prefix + aad).hex()}
    return kms_client.decrypt(CiphertextBlob=ciphertext, EncryptionContext=context)["KeyId"]
