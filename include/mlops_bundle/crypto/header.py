"""The on-disk format's header: what precedes Tink's streaming ciphertext in every encrypted object.

Format (version 2, written since strict encryption) -- a small header, then Tink's own streaming ciphertext::

    magic        8 bytes   b"MLOPSENC"
    version      1 byte    0x02
    key_id_len   2 bytes   big-endian
    key_id       UTF-8     "local:<Tink key id of the KEK>" or "kms:<KMS key ARN>"
    context_len  2 bytes   big-endian (at most 4 KiB)
    context      bytes     the associated data the object is bound to, stored in the clear so a mismatch
                           can be reported ("encrypted for key X of lake L"); ``EncryptingStorage`` writes
                           ``{"key": <object key>, "lake": <lake id>}`` (:func:`object_context`)
    wrapped_len  4 bytes   big-endian (at most 64 KiB)
    wrapped      bytes     Tink EncryptedKeyset proto (``tink.proto_keyset_format.serialize_encrypted``)
                           of a fresh single-key AES256_GCM_HKDF_1MB streaming keyset, encrypted by the KEK
    body         ...       Tink streaming AEAD ciphertext (its own header: salt + nonce prefix, then
                           1 MiB segments with a 16-byte GCM tag each; the last segment is flagged)

Associated data (authenticated): the KEK wraps the data keyset with ``magic|version|key_id_len|key_id|
context_len|context``; the stream is encrypted with the whole header. The reader passes the context it
expects (for the lake: its lake id and the object's key) and a header naming another context is refused
before any key is used; editing the stored context breaks both authentications. For KMS, Tink sends the
wrap's associated data as the encryption context ``{"associatedData": <hex>}``, which KMS limits in size:
object keys and the lake id must stay short (a few hundred bytes; the context is capped at 4 KiB).

Version 1 (before strict encryption) had no context field: the caller's associated data was appended,
unstored, to both associated data (``<prefix>|aad`` and ``<header>|aad``). It is still read by the
functions of :mod:`~mlops_bundle.crypto.stream` (``format_version`` tells them apart), but
``EncryptingStorage`` refuses it unless the migration setting allows legacy objects, because a version-1
object is not bound to a lake.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
from collections.abc import Callable
from typing import IO

from mlops_bundle.crypto.keyrings import CryptoError

MAGIC = b"MLOPSENC"
VERSION = 2
LEGACY_VERSION = 1
KNOWN_VERSIONS = (LEGACY_VERSION, VERSION)
_PREFIX = struct.Struct(">8sBH")  # magic, version, key_id_len
_CONTEXT_LEN = struct.Struct(">H")
_WRAPPED_LEN = struct.Struct(">I")
MAX_WRAPPED_LEN = 64 * 1024
MAX_KEY_ID_LEN = 2048
MAX_CONTEXT_LEN = 4096


class DecryptionError(CryptoError):
    """An object failed to decrypt; the message names the object and the probable cause."""


@dataclasses.dataclass(frozen=True)
class Header:
    key_id: str
    wrapped_keyset: bytes
    raw: bytes  # the header bytes exactly as stored (the stream's associated data)
    version: int = VERSION
    context: bytes | None = None  # the stored associated data (version 2); None in version 1
    wrap_end: int = 0  # where the wrap's associated data ends in raw (before wrapped_len)

    @property
    def wrap_ad_prefix(self) -> bytes:
        return self.raw[: self.wrap_end]

    def wrap_ad(self, aad: bytes) -> bytes:
        """The associated data the KEK wrapped the data key with (version 1 appended the caller's)."""
        return self.wrap_ad_prefix + (aad if self.version == LEGACY_VERSION else b"")

    def stream_ad(self, aad: bytes) -> bytes:
        """The associated data of the Tink stream (version 1 appended the caller's)."""
        return self.raw + (aad if self.version == LEGACY_VERSION else b"")


def object_context(lake_id: str, key: str) -> bytes:
    """The associated data binding an object to its lake and its key (relative to the store root)."""
    return json.dumps(
        {"key": key.strip("/"), "lake": lake_id}, sort_keys=True, separators=(",", ":")
    ).encode()


def describe_context(context: bytes | None) -> str:
    """A human-readable form of associated data, for errors."""
    if context is None:
        return "no stored context (format version 1)"
    if not context:
        return "no associated data"
    text = context.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and set(parsed) == {"key", "lake"}:
        return f"key {parsed['key']!r} of lake {parsed['lake']!r}"
    return repr(text)


def check_context(header: Header, aad: bytes, name: str) -> None:
    """Refuse (before any key is used) a version-2 object bound to another context than the expected one."""
    if header.version == LEGACY_VERSION or header.context == aad:
        return
    raise DecryptionError(
        f"{name}: this object was encrypted for {describe_context(header.context)}, but is read as "
        f"{describe_context(aad)}: it was copied or moved here from another key or lake (or planted). "
        "Delete it and re-run the task that produces this object"
    )


def build_header(key_id: str, wrap: Callable[[bytes], bytes], context: bytes = b"") -> Header:
    """The header for `key_id` bound to `context`; `wrap(ad)` wraps the data key with `ad` as associated data."""
    kid = key_id.encode("utf-8")
    if len(context) > MAX_CONTEXT_LEN:
        raise CryptoError(f"associated data of {len(context)} bytes: at most {MAX_CONTEXT_LEN} are stored")
    prefix = _PREFIX.pack(MAGIC, VERSION, len(kid)) + kid + _CONTEXT_LEN.pack(len(context)) + context
    wrapped = wrap(prefix)
    raw = prefix + _WRAPPED_LEN.pack(len(wrapped)) + wrapped
    return Header(key_id, wrapped, raw, VERSION, context, len(prefix))


def format_version(first_bytes: bytes) -> int | None:
    """The format version of data starting with the magic (9 bytes are enough), None if it is not ours."""
    if len(first_bytes) < len(MAGIC) + 1 or not first_bytes.startswith(MAGIC):
        return None
    return first_bytes[8] if first_bytes[8] in KNOWN_VERSIONS else None


def is_encrypted(first_bytes: bytes) -> bool:
    """Whether data starts with this module's magic and a known version (9 bytes are enough)."""
    return format_version(first_bytes) is not None


def _read_exact(src: IO[bytes], n: int) -> bytes:
    chunks, left = [], n
    while left:
        b = src.read(left)
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _read_context(src: IO[bytes], name: str) -> tuple[bytes, bytes]:
    """(the raw context_len + context bytes, the context) of a version-2 header."""
    raw_len = _read_exact(src, _CONTEXT_LEN.size)
    if len(raw_len) < _CONTEXT_LEN.size:
        raise DecryptionError(f"{name}: truncated header")
    (clen,) = _CONTEXT_LEN.unpack(raw_len)
    if clen > MAX_CONTEXT_LEN:
        raise DecryptionError(f"{name}: corrupted header (context length {clen})")
    context = _read_exact(src, clen)
    if len(context) < clen:
        raise DecryptionError(f"{name}: truncated header")
    return raw_len + context, context


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
    if version not in KNOWN_VERSIONS:
        raise DecryptionError(
            f"{name}: unsupported format version {version} (this code reads versions {KNOWN_VERSIONS}); "
            "a corrupted header or an object written by a newer release"
        )
    if kid_len == 0 or kid_len > MAX_KEY_ID_LEN:
        raise DecryptionError(f"{name}: corrupted header (key id length {kid_len})")
    kid = _read_exact(src, kid_len)
    if len(kid) < kid_len:
        raise DecryptionError(f"{name}: truncated header")
    ctx_raw, context = _read_context(src, name) if version == VERSION else (b"", None)
    wlen_raw = _read_exact(src, _WRAPPED_LEN.size)
    if len(wlen_raw) < _WRAPPED_LEN.size:
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
    wrap_end = len(prefix) + kid_len + len(ctx_raw)
    raw = prefix + kid + ctx_raw + wlen_raw + wrapped
    return Header(key_id, wrapped, raw, version, context, wrap_end)


def read_key_id(src: str | os.PathLike[str] | bytes | IO[bytes]) -> str:
    """The KEK id named in an encrypted object's header (a path, the object's first bytes, or a stream)."""
    if isinstance(src, bytes):
        return read_header(io.BytesIO(src), "<bytes>").key_id
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as fh:
            return read_header(fh, str(src)).key_id
    return read_header(src, "<stream>").key_id
