"""Envelope encryption at rest, built on Google Tink (streaming AEAD), never on a home-made cipher.

Every object gets a fresh data key; the data key is wrapped by a key-encryption key (KEK) held either in a
local Tink AEAD keyset (an Airflow connection in embedded mode) or in AWS KMS. The object's header names the
KEK that wrapped its data key, so rotating the KEK never strands old objects: the keyring's current key
encrypts, every key it still holds decrypts.

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

Guarantees: constant memory (1 MiB segments), any bit flip, truncation, segment swap, appended byte, wrong
key or edited key id fails with ``DecryptionError``; ``decrypt_file`` writes to a temporary file beside the
destination and renames it only after the last segment authenticated, so a failed decrypt leaves no
plaintext behind. Key material never appears in errors, reprs or return values.

Operators bootstrap a local KEK keyset with ``python -m mlops_bundle.crypto new-keyset`` and rotate it with
``python -m mlops_bundle.crypto rotate-keyset < old.json`` (new primary, old keys kept for decryption).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import IO, Any, Protocol

import tink
from tink import aead, secret_key_access, streaming_aead
from tink.proto import tink_pb2

from mlops_bundle.storage import atomic_file

log = logging.getLogger(__name__)

MAGIC = b"MLOPSENC"
VERSION = 1
_PREFIX = struct.Struct(">8sBH")  # magic, version, key_id_len
_WRAPPED_LEN = struct.Struct(">I")
MAX_WRAPPED_LEN = 64 * 1024
MAX_KEY_ID_LEN = 2048
# segment size trades per-call overhead (Python <-> C++) against the 16-byte tag per segment; 1 MiB measured
# fastest for decrypt here and makes the size overhead negligible (see benchmarks/bench_crypto.py)
SEGMENT_SIZE = 1 << 20
# Tink's AES-GCM-HKDF stream header: 1 length byte + 32-byte salt + 7-byte nonce prefix; tag 16 bytes
STREAM_HEADER_SIZE = 1 + 32 + 7
TAG_SIZE = 16
# plaintext bytes per write into the encrypting stream: large reads (>= 1 MiB) allocate fresh mmapped buffers
# on every call inside Tink's binding and run ~3x slower than 64 KiB
_ENC_CHUNK = 64 * 1024
_DEC_CHUNK = 256 * 1024


class CryptoError(RuntimeError):
    """Base class of the errors of this module; messages never contain key material."""


class KeyringError(CryptoError):
    """A keyring cannot be built or used (bad keyset, unreachable KMS, unknown key id)."""


class DecryptionError(CryptoError):
    """An object failed to decrypt; the message names the object and the probable cause."""


# ----------------------------------------------------------------------------------------------- tink setup
@cache
def _register() -> None:
    aead.register()
    streaming_aead.register()


def _data_key_template():
    return streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB


# ------------------------------------------------------------------------------------------------- keyrings
class Keyring(Protocol):
    """Where key-encryption keys come from: the current key encrypts, every held key decrypts."""

    @property
    def current_key_id(self) -> str: ...

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        """(key id to write in the header, the AEAD that wraps new data keys)."""
        ...

    def decryption_aead(self, key_id: str) -> aead.Aead:
        """The AEAD that unwraps data keys wrapped under `key_id`; KeyringError if it is not held."""
        ...


def _parse_keyset(keyset_json: str) -> tink.KeysetHandle:
    _register()
    if not isinstance(keyset_json, str) or not keyset_json.strip():
        raise KeyringError("the KEK keyset is empty: put a Tink JSON keyset in the connection's password")
    try:
        return tink.json_proto_keyset_format.parse(keyset_json, secret_key_access.TOKEN)
    except Exception as exc:  # the original message may quote the keyset: never propagate it
        raise KeyringError(
            f"the KEK keyset is not a valid Tink JSON keyset ({type(exc).__name__}); "
            "generate one with `python -m mlops_bundle.crypto new-keyset`"
        ) from None


class LocalKeyring:
    """KEKs from a Tink AEAD keyset in JSON (AES256_GCM keys): the primary encrypts, all enabled keys decrypt.

    Key ids in headers are ``local:<Tink key id>``. Removing a key from the keyset makes the objects it
    wrapped undecryptable (they fail naming the key id), which is how a compromised key is retired.
    """

    def __init__(self, keyset_json: str):
        handle = _parse_keyset(keyset_json)
        try:
            self._aead = handle.primitive(aead.Aead)
        except tink.TinkError:
            raise KeyringError(
                "the KEK keyset is not an AEAD keyset: generate one with "
                "`python -m mlops_bundle.crypto new-keyset`"
            ) from None
        info = handle.keyset_info()
        enabled = [k.key_id for k in info.key_info if k.status == tink_pb2.ENABLED]
        self._primary = info.primary_key_id
        self._key_ids = {f"local:{k}" for k in enabled}

    @property
    def current_key_id(self) -> str:
        return f"local:{self._primary}"

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._key_ids)

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        return self.current_key_id, self._aead

    def decryption_aead(self, key_id: str) -> aead.Aead:
        if key_id not in self._key_ids:
            raise KeyringError(
                f"unknown key id {key_id!r}: the local keyset holds {self.key_ids} "
                "(was the key removed, or was this object encrypted with another keyset or with KMS?)"
            )
        return self._aead

    def __repr__(self) -> str:
        return f"LocalKeyring(current={self.current_key_id!r}, keys={self.key_ids!r})"


class KmsKeyring:
    """KEKs in AWS KMS through a ready boto3 KMS client (the amazon provider's ``AwsBaseHook`` builds it).

    ``current_key_id`` may be a key id, key ARN, alias name (``alias/x``) or alias ARN; it is resolved once
    with ``DescribeKey`` to the key ARN written in headers, so repointing an alias later never strands
    objects. Decryption uses the ARN from the header (KMS policy decides who may use it); pass
    ``allowed_key_ids`` (ARNs) to restrict which keys this keyring will ask KMS to decrypt with.
    """

    def __init__(
        self, kms_client: Any, current_key_id: str = "", *, allowed_key_ids: list[str] | None = None
    ):
        from tink.integration import awskms

        _register()
        self._client = kms_client
        self._tink_client = awskms.new_client(boto3_client=kms_client)
        self._requested = current_key_id
        self._current_arn: str | None = None
        self._allowed = set(allowed_key_ids) if allowed_key_ids is not None else None

    def _resolve(self) -> str:
        if self._current_arn is None:
            if not self._requested:
                raise KeyringError(
                    "no KMS key configured for encryption: set encryption.kms_key_id "
                    "(key id, ARN or alias) in the bundle config"
                )
            try:
                meta = self._client.describe_key(KeyId=self._requested)["KeyMetadata"]
            except Exception as exc:
                raise KeyringError(f"KMS key {self._requested!r} cannot be described: {exc}") from exc
            if meta.get("KeyState", "Enabled") != "Enabled":
                raise KeyringError(f"KMS key {meta['Arn']} is {meta['KeyState']}: it cannot encrypt")
            self._current_arn = meta["Arn"]
        return self._current_arn

    @property
    def current_key_id(self) -> str:
        return f"kms:{self._resolve()}"

    def _aead_for(self, arn: str) -> aead.Aead:
        try:
            return self._tink_client.get_aead("aws-kms://" + arn)
        except tink.TinkError as exc:
            raise KeyringError(f"KMS key {arn!r} is not a usable AWS KMS key ARN: {exc}") from None

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        arn = self._resolve()
        return f"kms:{arn}", self._aead_for(arn)

    def decryption_aead(self, key_id: str) -> aead.Aead:
        if not key_id.startswith("kms:"):
            raise KeyringError(f"unknown key id {key_id!r}: this keyring only holds AWS KMS keys (kms:<arn>)")
        arn = key_id[4:]
        if self._allowed is not None and arn not in self._allowed:
            raise KeyringError(f"unknown key id {key_id!r}: not in this keyring's allowed KMS keys")
        return self._aead_for(arn)

    def __repr__(self) -> str:
        return f"KmsKeyring(current={self._current_arn or self._requested!r})"


def generate_local_keyset() -> str:
    """A new Tink AEAD keyset (one AES256_GCM key) as JSON. It is SECRET: store it in a connection."""
    _register()
    handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
    return tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN)


def rotate_local_keyset(keyset_json: str) -> str:
    """The keyset plus a fresh AES256_GCM key that becomes primary; old keys stay for decryption."""
    LocalKeyring(keyset_json)  # validates, with a clean error
    keyset = tink.JsonKeysetReader(keyset_json).read()
    used = {k.key_id for k in keyset.key}
    while True:
        fresh = tink.JsonKeysetReader(generate_local_keyset()).read()
        if fresh.primary_key_id not in used:
            break
    keyset.key.append(fresh.key[0])
    keyset.primary_key_id = fresh.primary_key_id
    out = io.StringIO()
    tink.JsonKeysetWriter(out).write(keyset)
    return out.getvalue()


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


# ---------------------------------------------------------------------------------------------- the header
@dataclasses.dataclass(frozen=True)
class Header:
    key_id: str
    wrapped_keyset: bytes
    raw: bytes  # the header bytes exactly as stored (the stream's associated data)

    @property
    def wrap_ad_prefix(self) -> bytes:
        return self.raw[: _PREFIX.size + len(self.key_id.encode())]


def _build_header(key_id: str, wrap: Callable[[bytes], bytes]) -> Header:
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


def _read_header(src: IO[bytes], name: str) -> Header:
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
        return _read_header(io.BytesIO(src), "<bytes>").key_id
    if isinstance(src, str | os.PathLike):
        with open(src, "rb") as fh:
            return _read_header(fh, str(src)).key_id
    return _read_header(src, "<stream>").key_id


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
    _register()
    name = _name_of(aad, name)
    key_id, kek = keyring.encryption_aead()
    handle = tink.new_keyset_handle(_data_key_template())

    def wrap(prefix: bytes) -> bytes:
        try:
            return tink.proto_keyset_format.serialize_encrypted(handle, kek, prefix + aad)
        except tink.TinkError as exc:
            raise KeyringError(f"{name}: wrapping the data key with {key_id!r} failed: {exc}") from None

    header = _build_header(key_id, wrap)
    dst.write(header.raw)
    primitive = handle.primitive(streaming_aead.StreamingAead)
    shield = _Shield(dst, "w")
    try:
        total = _encrypt_body(primitive, src, shield, header.raw + aad)
    except tink.TinkError:
        if shield.error is not None:  # the destination failed (disk full...), not the cipher
            raise shield.error from None
        raise
    _key_used("encrypt", key_id, name)
    return CryptoResult(key_id, total, len(header.raw) + shield.count)


def _encrypt_body(primitive: Any, src: IO[bytes], shield: _Shield, aad: bytes) -> int:
    """Stream src through Tink into shield; the plaintext byte count."""
    total = 0
    with primitive.new_encrypting_stream(shield, aad) as enc:
        buf = bytearray(_ENC_CHUNK)
        view = memoryview(buf)
        readinto = getattr(src, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(buf)
                if not n:
                    break
                enc.write(view[:n])
            else:
                chunk = src.read(_ENC_CHUNK)
                if not chunk:
                    break
                n = len(chunk)
                enc.write(chunk)
            total += n
    return total


def _unwrap(header: Header, keyring: Keyring, aad: bytes, name: str) -> tink.KeysetHandle:
    try:
        kek = keyring.decryption_aead(header.key_id)
    except KeyringError as exc:
        raise DecryptionError(f"{name}: {exc}") from None
    try:
        return tink.proto_keyset_format.parse_encrypted(
            header.wrapped_keyset, kek, header.wrap_ad_prefix + aad
        )
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
    _register()
    name = _name_of(aad, name)
    key_id = "?"
    total = 0
    try:
        header = _read_header(src, name)
        key_id = header.key_id
        handle = _unwrap(header, keyring, aad, name)
        primitive = handle.primitive(streaming_aead.StreamingAead)
        counter = _Shield(src, "r")
        try:
            with primitive.new_decrypting_stream(counter, header.raw + aad) as dec:
                while True:
                    chunk = dec.read(_DEC_CHUNK)
                    if not chunk:
                        break
                    dst.write(chunk)
                    total += len(chunk)
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


# ------------------------------------------------------------------------------------------ storage wrapper
def _norm_prefixes(prefixes: list[str]) -> list[str]:
    return [p.strip("/") for p in prefixes]


class EncryptingStorage:
    """A Storage that encrypts objects under `prefixes` at rest; keys (and thus layouts) are unchanged.

    * writes (write_bytes/put_file) under the prefixes are encrypted with the object's key (relative to
      the store root) as associated data, so a ciphertext copied to another key does not decrypt;
    * reads (read_bytes/get_file) decrypt; objects under the prefixes that are NOT encrypted (written
      before encryption was switched on) are returned as they are when ``allow_plaintext`` is true (the
      default, for migration) and refused otherwise -- set it false once a lake is fully encrypted, so a
      plaintext object planted in its place is rejected;
    * local_path() is None for keys under the prefixes, so callers fall back to read_bytes/get_file and
      never parse ciphertext; list()/exists()/delete()/uri() pass through (sizes are ciphertext sizes).
    put_file/get_file stream through temporary files in constant memory.
    """

    def __init__(self, inner: Any, keyring: Keyring, prefixes: list[str], *, allow_plaintext: bool = True):
        self.inner = inner
        self.keyring = keyring
        self.prefixes = _norm_prefixes(prefixes)
        self.allow_plaintext = allow_plaintext
        self.root_uri = inner.root_uri

    def __getattr__(self, attr: str) -> Any:  # root, bucket, client... of the wrapped store
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def encrypts(self, key: str) -> bool:
        key = key.strip("/")
        return any(p == "" or key == p or key.startswith(p + "/") for p in self.prefixes)

    @staticmethod
    def _aad(key: str) -> bytes:
        return key.strip("/").encode("utf-8")

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def list(self, prefix: str):
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def local_path(self, key: str) -> Path | None:
        return None if self.encrypts(key) else self.inner.local_path(key)

    def _plaintext_ok(self, key: str) -> None:
        if not self.allow_plaintext:
            raise DecryptionError(
                f"{self.inner.uri(key)}: not encrypted, but objects under {self.prefixes} must be "
                "(allow_plaintext is off): it was written without encryption or replaced"
            )
        log.debug("%s is not encrypted; reading it as plaintext (migration)", self.inner.uri(key))

    def read_bytes(self, key: str) -> bytes:
        data = self.inner.read_bytes(key)
        if not self.encrypts(key):
            return data
        if not is_encrypted(data[: len(MAGIC) + 1]):
            self._plaintext_ok(key)
            return data
        return decrypt_bytes(data, self.keyring, aad=self._aad(key), name=self.inner.uri(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        if not self.encrypts(key):
            return self.inner.write_bytes(key, data)
        blob = encrypt_bytes(data, self.keyring, aad=self._aad(key), name=self.inner.uri(key))
        return self.inner.write_bytes(key, blob)

    def put_file(self, key: str, path: Path) -> str:
        if not self.encrypts(key):
            return self.inner.put_file(key, path)
        name = self.inner.uri(key)
        dest = self.inner.local_path(key)
        if dest is not None:  # local: encrypt straight into a temp file beside the object
            with open(path, "rb", buffering=0) as fin, atomic_file(Path(dest)) as fout:
                encrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
            return name
        with tempfile.TemporaryDirectory(prefix="mlops-enc-") as tmp:
            enc = Path(tmp) / "object.enc"
            with open(path, "rb", buffering=0) as fin, open(enc, "wb") as fout:
                encrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
            return self.inner.put_file(key, enc)

    def get_file(self, key: str, path: Path) -> Path:
        if not self.encrypts(key):
            return self.inner.get_file(key, path)
        path = Path(path)
        name = self.inner.uri(key)
        src = self.inner.local_path(key)
        with contextlib.ExitStack() as stack:
            if src is None:  # remote: download the ciphertext beside the destination first
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent)))
                src = self.inner.get_file(key, tmp / "object.enc")
            with open(src, "rb") as fh:
                head = fh.read(len(MAGIC) + 1)
            if not is_encrypted(head):
                self._plaintext_ok(key)
                with open(src, "rb") as fin, atomic_file(path) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                return path
            with open(src, "rb") as fin, atomic_file(path) as fout:
                decrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
        return path


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_bundle.crypto",
        description="Manage the local Tink KEK keyset kept in the Airflow connection (key_source=connection).",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("new-keyset", help="print a new AES256_GCM keyset (JSON) to stdout")
    rot = sub.add_parser("rotate-keyset", help="add a new primary key to a keyset, keeping the old ones")
    rot.add_argument("keyset", nargs="?", default="-", help="keyset JSON file, or - for stdin (default)")
    kid = sub.add_parser("key-id", help="print the key id in the header of an encrypted file")
    kid.add_argument("path")
    args = parser.parse_args(argv)
    warn = (
        "WARNING: the JSON on stdout is SECRET key material. Store it only as the password of the Airflow "
        "connection named by encryption.keyset_conn_id (or a secrets backend); never commit or log it."
    )
    try:
        if args.cmd == "new-keyset":
            out = generate_local_keyset()
        elif args.cmd == "rotate-keyset":
            text = sys.stdin.read() if args.keyset == "-" else Path(args.keyset).read_text()
            out = rotate_local_keyset(text)
            keyring = LocalKeyring(out)
            print(f"new primary {keyring.current_key_id}; keys {keyring.key_ids}", file=sys.stderr)
        else:
            print(read_key_id(args.path))
            return 0
    except CryptoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(warn, file=sys.stderr)
    sys.stdout.write(json.dumps(json.loads(out)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
