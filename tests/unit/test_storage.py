"""Both storage backends behave the same: local folders and S3 over a real moto server."""

from __future__ import annotations

import pytest

from mlops_bundle.storage import LocalStorage, S3Storage, StorageError, open_storage
from tests.services import aws_client


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.moto)])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "root")
    client = aws_client("s3", request.getfixturevalue("moto_endpoint"))
    bucket = f"storage-{abs(hash(str(tmp_path))) % 10**8}"
    client.create_bucket(Bucket=bucket)
    return S3Storage(client, bucket, "pre/fix")


def test_write_read_list_delete(store, tmp_path):
    uri = store.write_bytes("a/ds=1/x.bin", b"hello")
    assert uri.endswith("a/ds=1/x.bin") and uri == store.uri("a/ds=1/x.bin")
    assert store.exists("a/ds=1/x.bin") and not store.exists("a/ds=1/y.bin")
    assert store.read_bytes("a/ds=1/x.bin") == b"hello"
    src = tmp_path / "src.bin"
    src.write_bytes(b"world" * 1000)
    store.put_file("a/ds=2/y.bin", src)
    assert [(o.key, o.size) for o in store.list("a")] == [("a/ds=1/x.bin", 5), ("a/ds=2/y.bin", 5000)]
    assert store.get_file("a/ds=2/y.bin", tmp_path / "back.bin").read_bytes() == b"world" * 1000
    store.delete("a/ds=1/x.bin")
    assert [o.key for o in store.list("a")] == ["a/ds=2/y.bin"]
    assert store.list("nothing/here") == []


def test_local_write_is_atomic_and_contained(tmp_path):
    store = LocalStorage(tmp_path)
    store.write_bytes("k/v.txt", b"1")
    store.write_bytes("k/v.txt", b"2")
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["v.txt"]  # no temp files left behind
    with pytest.raises(StorageError, match="escapes the storage root"):
        store.write_bytes("../outside.txt", b"x")


def test_open_storage_refuses_unknown_schemes_and_missing_clients():
    with pytest.raises(StorageError, match="unsupported storage URI"):
        open_storage("gs://bucket/x")
    with pytest.raises(StorageError, match="needs an S3 client"):
        open_storage("s3://bucket/x")
    with pytest.raises(StorageError, match="has no bucket"):
        open_storage("s3:///x", s3_client=object())
