"""Streaming envelope encryption: every object gets a fresh data key, wrapped by the keyring's KEK.

Guarantees: constant memory (1 MiB segments), any bit flip, truncation, segment swap, appended byte, wrong
key or edited key id fails with ``DecryptionError``; ``decrypt_file`` writes to a temporary file beside the
destination and renames it only after the last segment authenticated, so a failed decrypt leaves no
plaintext behind. The on-disk layout is in :mod:`mlops_bundle.crypto.header`.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import tink
from tink import streaming_aead

from mlops_bundle.crypto.header import DecryptionError, Header, build_header, check_context, read_header
from mlops_bundle.crypto.keyrings import Keyring, KeyringError, register_tink
from mlops_bundle.storage import atomic_file

log = logging.getLogger(__name__)

# segment size trades per-call overhead (Python <-> C++) against the 16-byte tag per segment: 1 MiB makes
# the size overhead negligible and keeps calls few (benchmarks/README.md, "Encryption")
SEGMENT_SIZE = 1 << 20
# Tink's AES-GCM-HKDF stream header: 1 length byte + 32-byte salt + 7-byte nonce prefix; tag 16 bytes
STREAM_HEADER_SIZE = 1 + 32 + 7
TAG_SIZE = 16
# plaintext bytes per write into / read from Tink's raw streams: the binding copies every piece into a new
# buffer, so pieces well under a segment cost least CPU per byte; 1 MiB pieces cost 20-45% more
# (benchmarks/README.md, "Encryption")
_ENC_CHUNK = 64 * 1024
_DEC_CHUNK = 256 * 1024


def _data_key_template():
    return streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB


# --------------------------------------------------------------------------------------------- key-use hook
KeyUseCallback = Callable[[str, str, str], None]
_key_use_callback: KeyUseCallback | None = None


def set_key_use_callback(fn: KeyUseCallback | None) -> KeyUseCallback | None:
    """Register fn(action, key_id, object_name), called on every "encrypt", "decrypt" and "decrypt_failed".

    Only ids and names are passed, never key material. It runs after the operation succeeded (before a
    decrypted file is renamed into place), and an exception from it fails the operation -- an audit trail
    that cannot record a key use should stop it. For "decrypt_failed" its exceptions are logged and
    swallowed so the DecryptionError stays the error raised. Returns the previous callback.
    """
    global _key_use_callback
    previous, _key_use_callback = _key_use_callback, fn
    return previous


def _key_used(action: str, key_id: str, name: str) -> None:
    if _key_use_callback is None:
        return
    if action != "decrypt_failed":
        _key_use_callback(action, key_id, name)
        return
    try:
        _key_use_callback(action, key_id, name)
    except Exception:
        log.warning("key-use callback failed for %s of %s", action, name, exc_info=True)


# ---------------------------------------------------------------------------------------------- streaming
class _Shield(io.RawIOBase):
    """The caller's stream as Tink sees it, one direction (mode "r" or "w").

    Tink closes the file object it wraps: closing this one leaves the caller's stream open. It counts the
    bytes that pass, and keeps the exception of a failed read/write: Tink's callback re-raises it wrapped
    in a TinkError, and the caller must get the I/O error itself (disk full, dropped connection), never a
    cipher or "corrupted ciphertext" verdict.
    """

    def __init__(self, inner: IO[bytes], mode: str):
        super().__init__()
        self._inner = inner
        self._mode = mode
        self.count = 0
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return self._mode == "r"

    def writable(self) -> bool:
        return self._mode == "w"

    def _call(self, op: Callable[[Any], Any], arg: Any) -> Any:
        try:
            return op(arg)
        except BaseException as exc:
            self.error = exc
            raise

    def read(self, size: int = -1) -> bytes:
        data = self._call(self._inner.read, size)
        self.count += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def write(self, b) -> int:
        n = self._call(self._inner.write, b)
        n = len(b) if n is None else n
        self.count += n
        return n


@dataclasses.dataclass(frozen=True)
class CryptoResult:
    key_id: str
    plaintext_bytes: int
    ciphertext_bytes: int


def _name_of(aad: bytes, name: str) -> str:
    if name:
        return name
    return aad.decode("utf-8", "replace") if aad else "<stream>"


def encrypt_stream(
    src: IO[bytes], dst: IO[bytes], keyring: Keyring, *, aad: bytes = b"", name: str = ""
) -> CryptoResult:
    """Encrypt everything readable from src into dst (header + Tink stream). Neither stream is closed."""
    register_tink()
    name = _name_of(aad, name)
    key_id, kek = keyring.encryption_aead()
    handle = tink.new_keyset_handle(_data_key_template())

    def wrap(prefix: bytes) -> bytes:
        try:
            return tink.proto_keyset_format.serialize_encrypted(handle, kek, prefix)
        except tink.TinkError as exc:
            raise KeyringError(f"{name}: wrapping the data key with {key_id!r} failed: {exc}") from None

    header = build_header(key_id, wrap, aad)
    dst.write(header.raw)
    primitive = handle.primitive(streaming_aead.StreamingAead)
    shield = _Shield(dst, "w")
    try:
        total = _encrypt_body(primitive, src, shield, header.raw)
    except tink.TinkError:
        if shield.error is not None:  # the destination failed (disk full...), not the cipher
            raise shield.error from None
        raise
    _key_used("encrypt", key_id, name)
    return CryptoResult(key_id, total, len(header.raw) + shield.count)


def _encrypt_body(primitive: Any, src: IO[bytes], shield: _Shield, aad: bytes) -> int:
    """Stream src through Tink into shield; the plaintext byte count.

    Pieces go straight to Tink's raw stream (``.raw`` of the BufferedWriter Tink returns): the buffered
    layer would hand it a memoryview, which the binding copies into a new bytes object before its own
    copy; a bytes piece from ``src.read`` reaches C++ without that extra pass (~7% less CPU per byte).
    """
    total = 0
    with primitive.new_encrypting_stream(shield, aad) as enc:
        write = getattr(enc, "raw", enc).write
        while chunk := src.read(_ENC_CHUNK):
            done = write(chunk)
            while done < len(chunk):  # a raw stream may take less than it was given
                n = write(chunk[done:])
                if not n:
                    raise BlockingIOError("the encrypting stream accepted no bytes")
                done += n
            total += len(chunk)
        if chunk is None:  # "no data yet" from a non-blocking source: never take it for the end
            raise BlockingIOError("the plaintext source returned no data (a non-blocking stream?)")
    return total


def _unwrap(header: Header, keyring: Keyring, aad: bytes, name: str) -> tink.KeysetHandle:
    try:
        kek = keyring.decryption_aead(header.key_id)
    except KeyringError as exc:
        raise DecryptionError(f"{name}: {exc}") from None
    try:
        return tink.proto_keyset_format.parse_encrypted(header.wrapped_keyset, kek, header.wrap_ad(aad))
    except tink.TinkError:
        raise DecryptionError(
            f"{name}: the data key does not unwrap with key id {header.key_id!r}: wrong key (another "
            "keyset/KMS key under this id), a modified header (key id or wrapped key), or different "
            "associated data (the object was written under another name)"
        ) from None


def decrypt_stream(
    src: IO[bytes], dst: IO[bytes], keyring: Keyring, *, aad: bytes = b"", name: str = ""
) -> CryptoResult:
    """Decrypt src into dst, authenticating every segment. Neither stream is closed.

    Plaintext reaches dst segment by segment, so on DecryptionError dst holds an unauthenticated prefix:
    discard it (``decrypt_file`` does that for you).
    """
    register_tink()
    name = _name_of(aad, name)
    key_id = "?"
    total = 0
    try:
        header = read_header(src, name)
        key_id = header.key_id
        check_context(header, aad, name)  # before any key is used: a moved object fails naming both
        handle = _unwrap(header, keyring, aad, name)
        primitive = handle.primitive(streaming_aead.StreamingAead)
        counter = _Shield(src, "r")
        try:
            # Tink's raw stream (``.raw`` of the BufferedReader it returns): each piece is the bytes object
            # the binding made, written as is instead of copied once more into the buffered layer's result
            with primitive.new_decrypting_stream(counter, header.stream_ad(aad)) as dec:
                read = getattr(dec, "raw", dec).read
                while chunk := read(_DEC_CHUNK):
                    dst.write(chunk)
                    total += len(chunk)
                if chunk is None:  # "no data yet" from a non-blocking source: never take it for the end
                    raise BlockingIOError(f"{name}: the ciphertext source returned no data (non-blocking?)")
        except tink.TinkError:
            if counter.error is not None:  # the source failed (I/O), not the authentication
                raise counter.error from None
            body = counter.count
            hint = (
                "truncated"
                if body < STREAM_HEADER_SIZE + TAG_SIZE
                else "corrupted (bit flip), truncated, reordered or extended with extra bytes"
            )
            raise DecryptionError(
                f"{name}: the ciphertext is {hint}: authentication failed after {total} plaintext bytes "
                f"(key id {key_id!r} unwrapped fine, so the key is right and the body is not)"
            ) from None
    except DecryptionError:
        _key_used("decrypt_failed", key_id, name)
        raise
    _key_used("decrypt", key_id, name)
    return CryptoResult(key_id, total, len(header.raw) + counter.count)


def encrypt_bytes(data: bytes, keyring: Keyring, *, aad: bytes = b"", name: str = "") -> bytes:
    """Encrypt a small object held in memory."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, keyring, aad=aad, name=name)
    return out.getvalue()


def decrypt_bytes(data: bytes, keyring: Keyring, *, aad: bytes = b"", name: str = "") -> bytes:
    """Decrypt a small object held in memory (nothing is returned unless all of it authenticated)."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(data), out, keyring, aad=aad, name=name)
    return out.getvalue()


def encrypt_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], keyring: Keyring, *, aad: bytes = b""
) -> CryptoResult:
    """Encrypt file src to dst atomically (dst appears only complete)."""
    src, dst = Path(src), Path(dst)
    with open(src, "rb", buffering=0) as fin, atomic_file(dst) as fout:
        return encrypt_stream(fin, fout, keyring, aad=aad, name=_name_of(aad, str(src)))


def decrypt_file(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], keyring: Keyring, *, aad: bytes = b""
) -> CryptoResult:
    """Decrypt file src to dst; dst appears only after the whole stream authenticated.

    On failure the temporary plaintext is removed, an existing dst is left untouched, and DecryptionError
    names src and the probable cause.
    """
    src, dst = Path(src), Path(dst)
    try:
        fin = open(src, "rb")
    except OSError as exc:
        raise DecryptionError(f"{src}: cannot open: {exc}") from exc
    with fin, atomic_file(dst) as fout:
        return decrypt_stream(fin, fout, keyring, aad=aad, name=str(src))
