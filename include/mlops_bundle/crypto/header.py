"""The on-disk format's header: what precedes Tink's streaming ciphertext in every encrypted object.

Format (version 1) -- a small header, then Tink's own streaming ciphertext::

    magic        8 bytes   b"MLOPSENC"
    version      1 byte    0x01
    key_id_len   2 bytes   big-endian
    key_id       UTF-8     "local:<Tink key id of the KEK>" or "kms:<KMS key ARN>"
    wrapped_len  4 bytes   big-endian (at most 64 KiB)
    wrapped      bytes     Tink EncryptedKeyset proto (``tink.proto_keyset_format.serialize_encrypted``)
                           of a fresh single-key AES256_GCM_HKDF_1MB streaming keyset, encrypted by the KEK
    body         ...       Tink streaming AEAD ciphertext (its own header: salt + nonce prefix, then
                           1 MiB segments with a 16-byte GCM tag each; the last segment is flagged)

Associated data (authenticated, not stored): the KEK encrypts the data keyset with
``magic|version|key_id_len|key_id|aad``; the stream is encrypted with ``<the whole header>|aad``. ``aad`` is
the caller's context -- ``EncryptingStorage`` passes the object's key relative to the store root, so an
object copied to another key (or a header moved onto another body) does not decrypt. For KMS, Tink sends
the associated data as the encryption context ``{"associatedData": <hex>}``, so keep ``aad`` short.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
from collections.abc import Callable
from typing import IO

from mlops_bundle.crypto.keyrings import CryptoError

MAGIC = b"MLOPSENC"
VERSION = 1
_PREFIX = struct.Struct(">8sBH")  # magic, version, key_id_len
_WRAPPED_LEN = struct.Struct(">I")
MAX_WRAPPED_LEN = 64 * 1024
MAX_KEY_ID_LEN = 2048


class DecryptionError(CryptoError):
    """An object failed to decrypt; the message names the object and the probable cause."""


@dataclasses.dataclass(frozen=True)
class Header:
    key_id: str
    wrapped_keyset: bytes
    raw: bytes  # the header bytes exactly as stored (the stream's associated data)

    @property
    def wrap_ad_prefix(self) -> bytes:
        return self.raw[: _PREFIX.size + len(self.key_id.encode())]


def build_header(key_id: str, wrap: Callable[[bytes], bytes]) -> Header:
    """The header for `key_id`; `wrap(prefix)` wraps the data key with the prefix as associated data."""
    kid = key_id.encode("utf-8")
    prefix = _PREFIX.pack(MAGIC, VERSION, len(kid)) + kid
    wrapped = wrap(prefix)
    raw = prefix + _WRAPPED_LEN.pack(len(wrapped)) + wrapped
    return Header(key_id, wrapped, raw)


def is_encrypted(first_bytes: bytes) -> bool:
    """Whether data starts with this module's magic and a known version (9 bytes are enough)."""
    return len(first_bytes) >= len(MAGIC) + 1 and first_bytes.startswith(MAGIC) and first_bytes[8] == VERSION


def _read_exact(src: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        b = src.read(left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_header(src: IO[bytes], name: str) -> Header:
    """Read and check the header at the start of src; DecryptionError naming `name` and what is wrong."""
    prefix = _read_exact(src, _PREFIX.size)
    if len(prefix) < len(MAGIC) or not prefix.startswith(MAGIC):
        if len(prefix) == 0:
            raise DecryptionError(f"{name}: empty file, not an encrypted object (truncated to 0 bytes?)")
        raise DecryptionError(
            f"{name}: not an encrypted object (bad magic; plaintext, another format, or a corrupted header)"
        )
    if len(prefix) < _PREFIX.size:
        raise DecryptionError(f"{name}: truncated header ({len(prefix)} bytes)")
    _magic, version, kid_len = _PREFIX.unpack(prefix)
    if version != VERSION:
        raise DecryptionError(
            f"{name}: unsupported format version {version} (this code reads version {VERSION}); "
            "a corrupted header or an object written by a newer release"
        )
    if kid_len == 0 or kid_len > MAX_KEY_ID_LEN:
        raise DecryptionError(f"{name}: corrupted header (key id length {kid_len})")
    kid = _read_exact(src, kid_len)
    wlen_raw = _read_exact(src, _WRAPPED_LEN.size)
    if len(kid) < kid_len or len(wlen_raw) < _WRAPPED_LEN.size:
        raise DecryptionError(f"{name}: truncated header")
    try:
        key_id = kid.decode("utf-8")
    except UnicodeDecodeError:
        raise DecryptionError(f"{name}: corrupted header (key id is not UTF-8)") from None
    (wlen,) = _WRAPPED_LEN.unpack(wlen_raw)
    if wlen == 0 or wlen > MAX_WRAPPED_LEN:
        raise DecryptionError(f"{name}: corrupted header (wrapped data key length {wlen}), key id {key_id!r}")
    wrapped = _read_exact(src, wlen)
    if len(wrapped) < wlen:
        raise DecryptionError(f"{name}: truncated header (wrapped data key), key id {key_id!r}")
    return Header(key_id, wrapped, prefix + kid + wlen_raw + wrapped)


def read_key_id(src: str | os.PathLike[str] | bytes | IO[bytes]) -> str:
    """The KEK id named in an encrypted object's header (a path, the object's first bytes, or a stream)."""
    if isinstance(src, bytes):
        return read_header(io.BytesIO(src), "<bytes>").key_id
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as fh:
            return read_header(fh, str(src)).key_id
    return read_header(src, "<stream>").key_id
