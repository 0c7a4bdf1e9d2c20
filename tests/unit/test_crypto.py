"""Envelope encryption (mlops_bundle.crypto): round trips with both key sources, every tamper case, rotation,
and the encrypting storage wrapper over a local folder and a moto S3 bucket.

KMS runs against the session's moto server subprocess (the real KMS HTTP API through boto3 and Tink's
awskms integration). The >= 256 MiB stream is generated at test time into tmp_path and never committed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_bundle import crypto
from mlops_bundle.crypto import (
    MAGIC,
    SEGMENT_SIZE,
    STREAM_HEADER_SIZE,
    TAG_SIZE,
    DecryptionError,
    EncryptingStorage,
    KmsKeyring,
    LocalKeyring,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    generate_local_keyset,
    is_encrypted,
    read_key_id,
    rotate_local_keyset,
)
from mlops_bundle.crypto.stream import _DEC_CHUNK, _ENC_CHUNK
from mlops_bundle.storage import LocalStorage
from tests.services import aws_client

FIRST_SEGMENT_PLAINTEXT = SEGMENT_SIZE - STREAM_HEADER_SIZE - TAG_SIZE
SEGMENT_PLAINTEXT = SEGMENT_SIZE - TAG_SIZE


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def keyset() -> str:
    return generate_local_keyset()


@pytest.fixture(scope="module")
def local_keyring(keyset) -> LocalKeyring:
    return LocalKeyring(keyset)


@pytest.fixture(scope="module")
def kms(moto_endpoint):
    return aws_client("kms", moto_endpoint)


@pytest.fixture(scope="module")
def kms_key(kms) -> str:
    return kms.create_key(Description="mlops test KEK")["KeyMetadata"]["Arn"]


@pytest.fixture(scope="module")
def kms_keyring(kms, kms_key) -> KmsKeyring:
    return KmsKeyring(kms, kms_key)


@pytest.fixture(params=["local", pytest.param("kms", marks=pytest.mark.moto)])
def keyring(request):
    return request.getfixturevalue(f"{request.param}_keyring")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_pattern(path: Path, size: int, seed: bytes = b"") -> None:
    """Fast, incompressible-ish deterministic data: a random 1 MiB block repeated, varied per block."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        written, i = 0, 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            chunk = struct.pack(">Q", i) + seed + chunk[8 + len(seed) :] if len(chunk) > 16 else chunk
            fh.write(chunk)
            written += len(chunk)
            i += 1


def _wrapped_start(blob: bytes) -> int:
    """Where the wrapped data key starts in a format-2 header (after key id and context)."""
    kid_len = struct.unpack(">H", blob[9:11])[0]
    ctx_len = struct.unpack(">H", blob[11 + kid_len : 13 + kid_len])[0]
    return 17 + kid_len + ctx_len


def _header_len(blob: bytes) -> int:
    start = _wrapped_start(blob)
    return start + struct.unpack(">I", blob[start - 4 : start])[0]


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        FIRST_SEGMENT_PLAINTEXT,  # ciphertext fills exactly one segment
        FIRST_SEGMENT_PLAINTEXT + 1,
        FIRST_SEGMENT_PLAINTEXT + SEGMENT_PLAINTEXT,  # exactly two segments
        SEGMENT_SIZE,  # a plaintext of exactly 1 MiB
    ],
    ids=["empty", "1byte", "seg-boundary", "seg-boundary+1", "two-segments", "1MiB"],
)
def test_file_round_trip(tmp_path, keyring, size):
    src, enc, dec = tmp_path / "plain.bin", tmp_path / "out" / "data.enc", tmp_path / "back" / "plain.bin"
    data = os.urandom(size)
    src.write_bytes(data)
    res = encrypt_file(src, enc, keyring, aad=b"staging/churn/part-0.parquet")
    assert res.key_id == keyring.current_key_id and res.plaintext_bytes == size
    blob = enc.read_bytes()
    assert res.ciphertext_bytes == len(blob) and is_encrypted(blob)
    assert size < 16 or data[:64] not in blob
    assert read_key_id(enc) == keyring.current_key_id
    back = decrypt_file(enc, dec, keyring, aad=b"staging/churn/part-0.parquet")
    assert dec.read_bytes() == data and back.plaintext_bytes == size and back.key_id == res.key_id
    assert _only(dec.parent) == ["plain.bin"] and _only(enc.parent) == ["data.enc"]
    if size == FIRST_SEGMENT_PLAINTEXT:
        assert len(blob) == _header_len(blob) + SEGMENT_SIZE


def test_large_stream_round_trip(tmp_path, keyring):
    size = (256 << 20) + 17
    src, enc, dec = tmp_path / "big.bin", tmp_path / "big.enc", tmp_path / "big.out"
    _write_pattern(src, size)
    want = _sha256(src)
    res = encrypt_file(src, enc, keyring)
    assert res.plaintext_bytes == size and enc.stat().st_size == res.ciphertext_bytes
    assert enc.stat().st_size - size < 5000  # 16 bytes per MiB plus one small header
    src.unlink()
    back = decrypt_file(enc, dec, keyring)
    assert back.plaintext_bytes == size and _sha256(dec) == want


# ------------------------------------------------------------------- piece boundaries, objects already written
@pytest.mark.parametrize(
    "size",
    [_ENC_CHUNK - 1, _ENC_CHUNK, _ENC_CHUNK + 1, _DEC_CHUNK, _DEC_CHUNK + 1, 4 * _DEC_CHUNK + 7],
    ids=["enc-chunk-1", "enc-chunk", "enc-chunk+1", "dec-chunk", "dec-chunk+1", "4-dec-chunks+7"],
)
def test_round_trip_at_read_and_write_piece_boundaries(local_keyring, size):
    """The pieces stream.py moves through Tink (64 KiB in, 256 KiB out) never align with its 1 MiB segments:
    every size around them round-trips, from a file (readinto) and from a source without readinto that
    returns short reads (a socket, a decompressor)."""
    data = os.urandom(size)

    class _Dribble(io.RawIOBase):
        def __init__(self):
            super().__init__()
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            return self.inner.read(min(size, 5000) if size >= 0 else 5000)

    class _NoReadinto:  # only read(): the loop's fallback path
        def __init__(self):
            self.inner = _Dribble()

        def read(self, size: int = -1) -> bytes:
            return self.inner.read(size)

    for src in (io.BytesIO(data), _NoReadinto()):
        out = io.BytesIO()
        res = crypto.encrypt_stream(src, out, local_keyring, aad=b"k")
        assert res.plaintext_bytes == size and res.ciphertext_bytes == len(out.getvalue())
        out.seek(0)
        back = io.BytesIO()
        assert crypto.decrypt_stream(out, back, local_keyring, aad=b"k").plaintext_bytes == size
        assert back.getvalue() == data


def test_a_source_with_no_data_yet_is_not_taken_for_the_end(local_keyring):
    """A non-blocking source answers read() with None ("nothing yet"): encrypting must stop with an error,
    never seal the prefix read so far as if it were the whole object."""

    class _NotYet(io.RawIOBase):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1):
            self.calls += 1
            return b"first piece" if self.calls == 1 else None

    with pytest.raises(BlockingIOError, match="non-blocking"):
        crypto.encrypt_stream(_NotYet(), io.BytesIO(), local_keyring)


# Written by this release (format 2, AES256_GCM_HKDF_1MB data key) under a test-only keyset, committed so
# that a later change of chunk sizes, template or header code that cannot read objects already in a lake
# fails here. The plaintext is SHA-256 of 0..7 (2 bytes, big-endian), concatenated.
_GOLDEN_KEYSET = '{"primaryKeyId":929852000,"key":[{"keyData":{"typeUrl":"type.googleapis.com/google.crypto.tink.AesGcmKey","value":"GiD2jwa83cdaXf2EeebUV9XUA6/5TJETcYOqWHL6L5tmrg==","keyMaterialType":"SYMMETRIC"},"status":"ENABLED","keyId":929852000,"outputPrefixType":"TINK"}]}'  # noqa: E501
_GOLDEN_OBJECT = (
    "TUxPUFNFTkMCAA9sb2NhbDo5Mjk4NTIwMDAASnsia2V5Ijoic3RhZ2luZy9jaHVybi9kYXk9MjAyNi0xMi0wMi9wYXJ0LTAucGFy"
    "cXVldCIsImxha2UiOiJnb2xkZW4tbGFrZSJ9AAAApxKkAQE3bGpgVrSlpoCvaqiV2oL5z2MkbCaVJCzqv2uxlalzgT93UzKVR8Qf"
    "cKnWP4/0RTZB8ASBeaSIYOYwSBfgDfA8NxT3RExw3JuNMchIAH0Tf/eXz8SgmE6pYe9cnB/HwovEVX8oX0HyPHh4DdUpnJ9i8AwY"
    "jVZJKgzEKp3HmwISN5L0+mHlWD0tqUic5Zjyy8OoGh6dRP9hyVD+6yrCXOxTnl9oKO97tqXbHia3zOXE/e1B+QO+blux7bzXaRb4"
    "cXlPxFsw52AHh//eY339tIm5UliWYbvYryXYIyOp4K8RX6sH/iyAjNwu60sKiKJcT6c76/SgtSv7FyBw1cjxb2HZ2h6Lj+gaeEqB"
    "a+afW8dSyNSNOVxDkgat1GjhqqwIlvW+DmiqzLK9azTaE9Zgvm+LRqbP6Q7xfBRPBBuxZ7YKHMt4EWGoyKxcQjUsRsCwNoNa5+nf"
    "bAtoM0J4R5kvWcKPmC/0NerVTLOjQC1lR5NKqT1wG+KhKVMEtou9ArB2yLrD+Nm/aPF7oE83HJThEfuj2vp85XtC6E8pxZXGh9aS"
    "dmEu8jU4P3jEKixhsSYlFDkYM8qy8mxclwUvJ1H4acgkSyI2GNuQJS6RQkinHn0UUPzmNSsEKuoVJ3xq"
)
_GOLDEN_CONTEXT = ("golden-lake", "staging/churn/day=2026-12-02/part-0.parquet")


def test_objects_written_by_this_release_still_decrypt(tmp_path):
    import base64

    blob = base64.b64decode("".join(_GOLDEN_OBJECT))
    keyring = LocalKeyring(_GOLDEN_KEYSET)
    aad = crypto.object_context(*_GOLDEN_CONTEXT)
    want = b"".join(hashlib.sha256(i.to_bytes(2, "big")).digest() for i in range(8))
    assert decrypt_bytes(blob, keyring, aad=aad) == want
    inner = LocalStorage(tmp_path / "lake")
    inner.write_bytes(_GOLDEN_CONTEXT[1], blob)  # as it lies in a lake
    store = EncryptingStorage(inner, keyring, ["staging"], lake_id="golden-lake")
    assert store.read_bytes(_GOLDEN_CONTEXT[1]) == want
    assert store.get_file(_GOLDEN_CONTEXT[1], tmp_path / "out.parquet").read_bytes() == want
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt_bytes(blob[:-1], keyring, aad=aad)
    with pytest.raises(DecryptionError, match="encrypted for key"):
        decrypt_bytes(blob, keyring, aad=crypto.object_context("golden-lake", "staging/other.parquet"))


def _encrypt_with_template(data: bytes, keyring, aad: bytes, template) -> bytes:
    """A format-2 object whose data key uses another Tink streaming template than the current writer's:
    what an object written before (or after) a change of segment size looks like."""
    import tink
    from tink import streaming_aead

    from mlops_bundle.crypto.header import build_header

    key_id, kek = keyring.encryption_aead()
    handle = tink.new_keyset_handle(template)
    header = build_header(
        key_id, lambda ad: tink.proto_keyset_format.serialize_encrypted(handle, kek, ad), aad
    )

    class _KeepOpen(io.BytesIO):
        def close(self) -> None:  # Tink closes the stream it writes to
            pass

    out = _KeepOpen()
    with handle.primitive(streaming_aead.StreamingAead).new_encrypting_stream(out, header.raw) as stream:
        stream.write(data)
    return header.raw + out.getvalue()


def test_segment_size_travels_with_the_object(local_keyring):
    """The data key's template (segment size) is inside the wrapped keyset in the header, so objects written
    with 4 KiB segments decrypt with today's reader, and are still truncation/reorder-proof."""
    from tink import streaming_aead

    templates = streaming_aead.streaming_aead_key_templates
    data = os.urandom(3 * (4096 - TAG_SIZE) + 100)
    blob = _encrypt_with_template(data, local_keyring, b"k", templates.AES256_GCM_HKDF_4KB)
    assert decrypt_bytes(blob, local_keyring, aad=b"k") == data
    h = _header_len(blob)
    assert len(blob) == h + STREAM_HEADER_SIZE + len(data) + 4 * TAG_SIZE  # 4 segments of 4 KiB
    seg = lambda k: blob[h + k * 4096 : h + (k + 1) * 4096]  # noqa: E731
    for bad in (
        blob[: h + 2 * 4096],
        blob[:h] + seg(0) + seg(2) + seg(1) + blob[h + 3 * 4096 :],
        blob + b"\0",
    ):
        with pytest.raises(DecryptionError, match="authentication failed"):
            decrypt_bytes(bad, local_keyring, aad=b"k")
    with pytest.raises(DecryptionError, match="encrypted for"):
        decrypt_bytes(blob, local_keyring, aad=b"other")


def test_bytes_and_stream_helpers(local_keyring):
    blob = encrypt_bytes(b"hello", local_keyring, aad=b"k")
    assert blob.startswith(MAGIC) and is_encrypted(blob) and not is_encrypted(b"PAR1....")
    assert decrypt_bytes(blob, local_keyring, aad=b"k") == b"hello"
    src, out = io.BytesIO(b"x" * 5000), io.BytesIO()
    crypto.encrypt_stream(src, out, local_keyring)
    assert not out.closed  # the caller's stream stays open
    out.seek(0)
    plain = io.BytesIO()
    crypto.decrypt_stream(out, plain, local_keyring)
    assert plain.getvalue() == b"x" * 5000 and not out.closed


class _FailingSink(io.RawIOBase):
    """A destination whose disk fills up after `limit` bytes."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.written = limit, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        if self.written + len(b) > self.limit:
            raise OSError(28, "No space left on device")
        self.written += len(b)
        return len(b)


class _FailingSource(io.RawIOBase):
    """A source that breaks (a dropped connection) after `limit` bytes."""

    def __init__(self, data: bytes, limit: int):
        super().__init__()
        self.inner, self.limit = io.BytesIO(data), limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.inner.tell() >= self.limit:
            raise ConnectionResetError("connection reset by peer")
        return self.inner.read(min(size, self.limit - self.inner.tell()))

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def test_io_errors_reach_the_caller_unchanged(local_keyring):
    """Tink calls back into Python to read the source / write the destination and wraps whatever fails
    there in a TinkError: the caller must get the I/O error itself (a full disk, a dropped connection),
    never a "corrupted ciphertext" verdict for an I/O failure."""
    data = os.urandom(3 * SEGMENT_SIZE + 123)
    with pytest.raises(OSError, match="No space left"):
        crypto.encrypt_stream(io.BytesIO(data), _FailingSink(SEGMENT_SIZE + 5), local_keyring)
    with pytest.raises(ConnectionResetError):
        crypto.encrypt_stream(_FailingSource(data, 2 * SEGMENT_SIZE), io.BytesIO(), local_keyring)

    blob = encrypt_bytes(data, local_keyring)
    with pytest.raises(OSError, match="No space left"):
        crypto.decrypt_stream(io.BytesIO(blob), _FailingSink(SEGMENT_SIZE), local_keyring)
    with pytest.raises(ConnectionResetError):
        crypto.decrypt_stream(_FailingSource(blob, 2 * SEGMENT_SIZE), io.BytesIO(), local_keyring)

    # a short-writing raw destination still receives every byte, in order
    class _Short(io.RawIOBase):
        def __init__(self):
            super().__init__()
            self.buf = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            n = min(len(b), 1000)
            self.buf += bytes(b[:n])
            return n

    short = _Short()
    crypto.encrypt_stream(io.BytesIO(data), short, local_keyring)
    assert decrypt_bytes(bytes(short.buf), local_keyring) == data


def test_fresh_data_key_per_object(local_keyring):
    a, b = encrypt_bytes(b"same", local_keyring), encrypt_bytes(b"same", local_keyring)
    assert a != b and a[_header_len(a) :] != b[_header_len(b) :]


def test_kms_alias_resolves_to_key_arn(kms, kms_key):
    kms.create_alias(AliasName="alias/mlops-test-alias", TargetKeyId=kms_key)
    ring = KmsKeyring(kms, "alias/mlops-test-alias")
    blob = encrypt_bytes(b"payload", ring)
    assert read_key_id(blob) == f"kms:{kms_key}"
    # a decrypt-only keyring unwraps only with the key ARNs it is told to allow
    assert decrypt_bytes(blob, KmsKeyring(kms, "", allowed_key_ids=[kms_key])) == b"payload"
    with pytest.raises(DecryptionError, match="unknown key id .*neither encryption.kms_key_id"):
        decrypt_bytes(blob, KmsKeyring(kms, ""))


def test_wrong_associated_data_fails(keyring):
    blob = encrypt_bytes(b"payload", keyring, aad=b"staging/a.parquet")
    with pytest.raises(DecryptionError, match="encrypted for 'staging/a.parquet', but is read as 'staging/b"):
        decrypt_bytes(blob, keyring, aad=b"staging/b.parquet")


# ------------------------------------------------------------------------------------------------- tampering
@pytest.fixture(scope="module")
def victim(tmp_path_factory, local_keyring):
    """A 3.5-segment object: header, then 4 Tink segments (3 full + a short last one)."""
    folder = tmp_path_factory.mktemp("victim")
    plain = os.urandom(FIRST_SEGMENT_PLAINTEXT + 2 * SEGMENT_PLAINTEXT + 12345)
    (folder / "plain.bin").write_bytes(plain)
    encrypt_file(folder / "plain.bin", folder / "v.enc", local_keyring)
    blob = (folder / "v.enc").read_bytes()
    return blob, _header_len(blob)


def _flip(blob: bytes, pos: int) -> bytes:
    b = bytearray(blob)
    b[pos] ^= 0x01
    return bytes(b)


def _swap_segments(blob: bytes, h: int, i: int, j: int) -> bytes:
    seg = lambda k: blob[h + k * SEGMENT_SIZE : h + (k + 1) * SEGMENT_SIZE]  # noqa: E731
    parts = [blob[:h]] + [seg(k) for k in range(4)]
    parts[1 + i], parts[1 + j] = parts[1 + j], parts[1 + i]
    return b"".join(parts)


TAMPERS = {
    # header
    "flip-magic": (lambda b, h: _flip(b, 0), "not an encrypted object"),
    "flip-version": (lambda b, h: _flip(b, 8), "unsupported format version"),
    "flip-key-id": (lambda b, h: _flip(b, 12), "unknown key id"),
    "flip-wrapped-len": (lambda b, h: _flip(b, _wrapped_start(b) - 4), "corrupted header"),
    "flip-wrapped-key": (lambda b, h: _flip(b, h - 10), "does not unwrap"),
    # Tink's stream header (salt), a body byte, a segment tag, the final tag
    "flip-stream-salt": (lambda b, h: _flip(b, h + 5), "authentication failed"),
    "flip-body": (lambda b, h: _flip(b, h + SEGMENT_SIZE + 1000), "authentication failed"),
    "flip-tag": (lambda b, h: _flip(b, h + SEGMENT_SIZE - 1), "authentication failed"),
    "flip-final-tag": (lambda b, h: _flip(b, len(b) - 1), "authentication failed"),
    # truncation
    "truncate-0": (lambda b, h: b"", "empty file"),
    "truncate-in-magic": (lambda b, h: b[:5], "not an encrypted object"),
    "truncate-in-key-id": (lambda b, h: b[:14], "truncated header"),
    "truncate-in-wrapped-key": (lambda b, h: b[: h - 20], "truncated header"),
    "truncate-after-header": (lambda b, h: b[:h], "truncated"),
    "truncate-in-stream-header": (lambda b, h: b[: h + 20], "truncated"),
    "truncate-mid-segment": (lambda b, h: b[: h + SEGMENT_SIZE + 4096], "authentication failed"),
    "truncate-at-segment-boundary": (lambda b, h: b[: h + 2 * SEGMENT_SIZE], "authentication failed"),
    "truncate-last-byte": (lambda b, h: b[:-1], "authentication failed"),
    # reordering and extension
    "swap-segments-1-2": (lambda b, h: _swap_segments(b, h, 1, 2), "reordered"),
    "swap-segments-0-1": (lambda b, h: _swap_segments(b, h, 0, 1), "authentication failed"),
    "append-1-byte": (lambda b, h: b + b"\0", "extended"),
    "append-segment": (lambda b, h: b + b[h + SEGMENT_SIZE : h + 2 * SEGMENT_SIZE], "extended"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampering_fails_loudly_and_leaves_no_plaintext(tmp_path, victim, local_keyring, case):
    blob, h = victim
    mutate, expected = TAMPERS[case]
    bad = tmp_path / "in" / "object.enc"
    bad.parent.mkdir()
    bad.write_bytes(mutate(blob, h))
    dst = tmp_path / "out" / "object.bin"
    with pytest.raises(DecryptionError, match=expected) as err:
        decrypt_file(bad, dst, local_keyring)
    assert str(bad) in str(err.value)
    assert not dst.exists() and _only(dst.parent) == []  # no plaintext, no temp file left behind


def test_failed_decrypt_keeps_existing_destination(tmp_path, victim, local_keyring):
    blob, h = victim
    bad, dst = tmp_path / "bad.enc", tmp_path / "dst.bin"
    bad.write_bytes(blob[:-1])
    dst.write_bytes(b"previous good version")
    with pytest.raises(DecryptionError):
        decrypt_file(bad, dst, local_keyring)
    assert dst.read_bytes() == b"previous good version" and _only(tmp_path) == ["bad.enc", "dst.bin"]


def _with_key_id(blob: bytes, key_id: str) -> bytes:
    old_len = struct.unpack(">H", blob[9:11])[0]
    kid = key_id.encode()
    return blob[:9] + struct.pack(">H", len(kid)) + kid + blob[11 + old_len :]


def test_wrong_key_fails(tmp_path, victim):
    blob, _h = victim
    (tmp_path / "v.enc").write_bytes(blob)
    other = LocalKeyring(generate_local_keyset())
    with pytest.raises(DecryptionError, match="unknown key id 'local:") as err:
        decrypt_file(tmp_path / "v.enc", tmp_path / "out.bin", other)
    assert read_key_id(blob) in str(err.value)
    assert _only(tmp_path) == ["v.enc"]


def test_wrong_key_with_the_same_key_id_fails(tmp_path, victim, keyset):
    blob, _h = victim
    (tmp_path / "v.enc").write_bytes(blob)
    impostor = json.loads(generate_local_keyset())
    impostor["primaryKeyId"] = impostor["key"][0]["keyId"] = json.loads(keyset)["primaryKeyId"]
    with pytest.raises(DecryptionError, match="does not unwrap with key id .*wrong key"):
        decrypt_file(tmp_path / "v.enc", tmp_path / "out.bin", LocalKeyring(json.dumps(impostor)))
    assert _only(tmp_path) == ["v.enc"]


def test_edited_key_id_fails(tmp_path, victim, keyset):
    blob, _h = victim
    rotated = LocalKeyring(rotate_local_keyset(keyset))
    # another key the keyring holds: the id is authenticated, so the data key no longer unwraps
    (tmp_path / "a.enc").write_bytes(_with_key_id(blob, rotated.current_key_id))
    with pytest.raises(DecryptionError, match="does not unwrap"):
        decrypt_file(tmp_path / "a.enc", tmp_path / "a.out", rotated)
    # an id nobody holds
    (tmp_path / "b.enc").write_bytes(_with_key_id(blob, "local:12345"))
    with pytest.raises(DecryptionError, match="unknown key id 'local:12345'"):
        decrypt_file(tmp_path / "b.enc", tmp_path / "b.out", rotated)
    assert _only(tmp_path) == ["a.enc", "b.enc"]


def test_kms_wrong_key_and_wrong_key_id(tmp_path, kms, kms_key, kms_keyring):
    other = kms.create_key(Description="another KEK")["KeyMetadata"]["Arn"]
    blob = encrypt_bytes(os.urandom(3000), kms_keyring)
    (tmp_path / "swapped.enc").write_bytes(_with_key_id(blob, f"kms:{other}"))
    with pytest.raises(DecryptionError, match="unknown key id"):  # not allowlisted: KMS is never asked
        decrypt_file(tmp_path / "swapped.enc", tmp_path / "x.out", kms_keyring)
    both = KmsKeyring(kms, kms_key, allowed_key_ids=[other])  # allowed, but KMS says it is the wrong key
    with pytest.raises(DecryptionError, match="does not unwrap"):
        decrypt_file(tmp_path / "swapped.enc", tmp_path / "x.out", both)
    (tmp_path / "v.enc").write_bytes(blob)
    restricted = KmsKeyring(kms, other, allowed_key_ids=[other])
    with pytest.raises(DecryptionError, match=f"unknown key id 'kms:{kms_key}'"):
        decrypt_file(tmp_path / "v.enc", tmp_path / "y.out", restricted)
    with pytest.raises(DecryptionError, match="unknown key id"):
        decrypt_bytes(blob, LocalKeyring(generate_local_keyset()))
    assert _only(tmp_path) == ["swapped.enc", "v.enc"]


def test_bad_keysets_fail_without_echoing_them():
    secret_like = '{"primaryKeyId": 1, "key": [{"keyData": {"value": "c2VjcmV0c2VjcmV0"}}]}'
    with pytest.raises(crypto.KeyringError) as err:
        LocalKeyring(secret_like)
    assert "c2VjcmV0" not in str(err.value)
    with pytest.raises(crypto.KeyringError, match="empty"):
        LocalKeyring("")
    assert "c2VjcmV0" not in repr(LocalKeyring(generate_local_keyset()))


# ------------------------------------------------------------------------------------------------- rotation
def test_rotation_old_keys_decrypt_new_key_encrypts(tmp_path, keyset):
    v1 = LocalKeyring(keyset)
    old = encrypt_bytes(b"written under v1", v1, aad=b"obj")
    v2_json = rotate_local_keyset(keyset)
    v2 = LocalKeyring(v2_json)
    assert v2.current_key_id != v1.current_key_id and set(v1.key_ids) < set(v2.key_ids)
    new = encrypt_bytes(b"written under v2", v2, aad=b"obj")
    assert read_key_id(new) == v2.current_key_id and read_key_id(old) == v1.current_key_id
    assert decrypt_bytes(old, v2, aad=b"obj") == b"written under v1"
    assert decrypt_bytes(new, v2, aad=b"obj") == b"written under v2"
    with pytest.raises(DecryptionError, match="unknown key id"):
        decrypt_bytes(new, v1, aad=b"obj")  # the old keyring never saw v2
    # retire v1: drop it from the keyset; its objects now fail naming the key id
    retired = json.loads(v2_json)
    v1_id = int(v1.current_key_id.split(":")[1])
    retired["key"] = [k for k in retired["key"] if k["keyId"] != v1_id]
    v3 = LocalKeyring(json.dumps(retired))
    assert decrypt_bytes(new, v3, aad=b"obj") == b"written under v2"
    (tmp_path / "old.enc").write_bytes(old)
    with pytest.raises(DecryptionError, match=f"unknown key id 'local:{v1_id}'"):
        decrypt_file(tmp_path / "old.enc", tmp_path / "old.bin", v3, aad=b"obj")
    assert not (tmp_path / "old.bin").exists()


def test_kms_rotation_to_a_new_key(kms, kms_key, kms_keyring):
    old = encrypt_bytes(b"under key A", kms_keyring)
    key_b = kms.create_key(Description="rotated KEK")["KeyMetadata"]["Arn"]
    ring_b = KmsKeyring(kms, key_b, allowed_key_ids=[kms_key])  # key A stays allowed to unwrap
    new = encrypt_bytes(b"under key B", ring_b)
    assert read_key_id(new) == f"kms:{key_b}"
    assert decrypt_bytes(old, ring_b) == b"under key A" and decrypt_bytes(new, ring_b) == b"under key B"
    with pytest.raises(DecryptionError, match="unknown key id"):  # retired from the allowlist: refused
        decrypt_bytes(old, KmsKeyring(kms, key_b))


def test_cli_new_and_rotate_keyset():
    env = {**os.environ}
    new = subprocess.run(
        [sys.executable, "-m", "mlops_bundle.crypto", "new-keyset"], capture_output=True, text=True, env=env
    )
    assert new.returncode == 0 and "SECRET" in new.stderr
    ring = LocalKeyring(new.stdout)
    rot = subprocess.run(
        [sys.executable, "-m", "mlops_bundle.crypto", "rotate-keyset"],
        input=new.stdout,
        capture_output=True,
        text=True,
        env=env,
    )
    assert rot.returncode == 0, rot.stderr
    rotated = LocalKeyring(rot.stdout)
    assert ring.current_key_id in rotated.key_ids and rotated.current_key_id != ring.current_key_id
    bad = subprocess.run(
        [sys.executable, "-m", "mlops_bundle.crypto", "rotate-keyset"],
        input="{not json",
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "not a valid Tink JSON keyset" in bad.stderr


def test_key_use_callback(local_keyring):
    seen = []
    previous = crypto.set_key_use_callback(lambda *a: seen.append(a))
    try:
        blob = encrypt_bytes(b"x", local_keyring, aad=b"reports/r.html")
        decrypt_bytes(blob, local_keyring, aad=b"reports/r.html")
        with pytest.raises(DecryptionError):
            decrypt_bytes(blob[:-1], local_keyring, aad=b"reports/r.html")
    finally:
        crypto.set_key_use_callback(previous)
    kid = local_keyring.current_key_id
    assert seen == [
        ("encrypt", kid, "reports/r.html"),
        ("decrypt", kid, "reports/r.html"),
        ("decrypt_failed", kid, "reports/r.html"),
    ]


# ------------------------------------------------------------------------------------------ storage wrapper
@pytest.fixture
def store(lake_storage):
    return lake_storage


def test_encrypting_storage(tmp_path, store, keyring):
    enc = EncryptingStorage(store, keyring, ["staging", "reports/"])
    # bytes under a prefix: encrypted at rest, same key, transparent read
    enc.write_bytes("staging/churn/ds=2026-01-05/part-0.parquet", b"PAR1 data")
    raw = store.read_bytes("staging/churn/ds=2026-01-05/part-0.parquet")
    assert is_encrypted(raw) and b"PAR1 data" not in raw
    assert enc.read_bytes("staging/churn/ds=2026-01-05/part-0.parquet") == b"PAR1 data"
    assert enc.local_path("staging/churn/ds=2026-01-05/part-0.parquet") is None
    # outside the prefixes: untouched
    enc.write_bytes("landing/churn/a.csv", b"a,b\n")
    assert store.read_bytes("landing/churn/a.csv") == b"a,b\n"
    assert enc.local_path("landing/churn/a.csv") == store.local_path("landing/churn/a.csv")
    assert not enc.encrypts("stagingfoo/x") and enc.encrypts("reports/x.html")
    # files: streamed both ways
    src = tmp_path / "report.html"
    src.write_bytes(os.urandom(3 * SEGMENT_SIZE + 5))
    enc.put_file("reports/churn/report.html", src)
    assert is_encrypted(store.read_bytes("reports/churn/report.html")[:16])
    out = enc.get_file("reports/churn/report.html", tmp_path / "got" / "report.html")
    assert out.read_bytes() == src.read_bytes() and _only(out.parent) == ["report.html"]
    assert [o.key for o in enc.list("reports")] == ["reports/churn/report.html"]
    # strict: a plaintext object under a prefix is refused; only the migration setting reads it
    store.write_bytes("staging/old/part-0.parquet", b"legacy plaintext")
    with pytest.raises(
        DecryptionError, match="'staging/old/part-0.parquet' is not encrypted.*prefix 'staging/'"
    ):
        enc.read_bytes("staging/old/part-0.parquet")
    migrating = EncryptingStorage(store, keyring, ["staging"], allow_legacy=True)
    assert migrating.read_bytes("staging/old/part-0.parquet") == b"legacy plaintext"
    legacy = migrating.get_file("staging/old/part-0.parquet", tmp_path / "legacy")
    assert legacy.read_bytes() == b"legacy plaintext"
    # a ciphertext moved to another key does not decrypt (its key is associated data)
    store.write_bytes("staging/churn/moved.parquet", raw)
    with pytest.raises(
        DecryptionError, match="moved.parquet: this object was encrypted for key 'staging/churn/ds"
    ):
        enc.read_bytes("staging/churn/moved.parquet")
    with pytest.raises(DecryptionError):
        enc.get_file("staging/churn/moved.parquet", tmp_path / "moved.parquet")
    assert not (tmp_path / "moved.parquet").exists()
    assert not [p for p in tmp_path.rglob(".tmp-*")]
