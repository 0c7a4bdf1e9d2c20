"""Object storage behind one small interface: a local folder (file://) or S3 (s3://bucket/prefix).

The library never creates credentials: an S3 store is handed a ready boto3 client, which the Airflow side
builds from an Airflow connection (S3Hook). Keys are always relative ("staging/churn/ds=.../part-0.parquet")
so the same layout works on both backends. Writes are atomic per object: a local write goes to a temporary
file in the same folder and is renamed into place; an S3 PUT is atomic by nature.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, urlparse

from mlops_bundle.uris import local_path, parse_s3_uri


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI."""


TMP_PREFIX = ".tmp-"  # temp files of atomic writes; listings skip them


@contextlib.contextmanager
def atomic_file(dest: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary temp file in ``dest``'s folder that becomes ``dest`` (fsynced, renamed) when the ``with``
    body succeeds and disappears on any failure: readers see the old file or the whole new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store root
    size: int


class Storage(Protocol):
    root_uri: str

    def uri(self, key: str) -> str: ...
    def list(self, prefix: str) -> list[ObjectInfo]: ...
    def exists(self, key: str) -> bool: ...
    def read_bytes(self, key: str) -> bytes: ...
    def write_bytes(self, key: str, data: bytes) -> str: ...
    def put_file(self, key: str, path: Path) -> str: ...
    def get_file(self, key: str, path: Path) -> Path: ...
    def local_path(self, key: str) -> Path | None: ...
    def delete(self, key: str) -> None: ...


def join(*parts: str) -> str:
    """Join key parts with '/', ignoring empty parts and stray slashes."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def match_any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pat) for pat in patterns)


def file_uri(path: Path) -> str:
    """file:// URI of an absolute path, keeping '=' readable (Path.as_uri() turns ds=... into ds%3D...)."""
    return "file://" + quote(str(path), safe="/=:@-._~+,")


class LocalStorage:
    """A folder on local disk (embedded mode and tests)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root_uri = file_uri(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise StorageError(f"key {key!r} escapes the storage root {self.root_uri}")
        return path

    def uri(self, key: str) -> str:
        return file_uri(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [ObjectInfo(prefix.strip("/"), base.stat().st_size)]
        if not base.is_dir():
            return []
        out = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    continue
                p = Path(dirpath) / name
                out.append(ObjectInfo(p.relative_to(self.root).as_posix(), p.stat().st_size))
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri(key)}: {exc}") from exc

    def _atomic(self, key: str, writer) -> str:
        dest = self._path(key)
        with atomic_file(dest) as fh:
            writer(fh)
        return file_uri(dest)

    def write_bytes(self, key: str, data: bytes) -> str:
        return self._atomic(key, lambda fh: fh.write(data))

    def put_file(self, key: str, path: Path) -> str:
        def copy(fh):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        return self._atomic(key, copy)

    def get_file(self, key: str, path: Path) -> Path:
        shutil.copyfile(self._path(key), path)
        return path

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Storage:
    """s3://bucket/prefix through a boto3 S3 client built by the caller (Airflow's S3Hook)."""

    def __init__(self, client: Any, bucket: str, prefix: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    def _key(self, key: str) -> str:
        return join(self.prefix, key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    def _call(self, what: str, key: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # botocore errors carry the reason; keep the URI in the message
            raise StorageError(f"S3 {what} {self.uri(key)} failed: {exc}") from exc

    def list(self, prefix: str) -> list[ObjectInfo]:
        full = self._key(prefix)
        if full and not full.endswith("/"):
            full += "/"
        paginator = self.client.get_paginator("list_objects_v2")
        out = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self._call("list", prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)))
        for page in pages:
            for obj in page.get("Contents", []):
                out.append(ObjectInfo(obj["Key"][strip:], int(obj["Size"])))
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"S3 head {self.uri(key)} failed: {exc}") from exc

    def read_bytes(self, key: str) -> bytes:
        resp = self._call("get", key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return resp["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> str:
        self._call("put", key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def put_file(self, key: str, path: Path) -> str:
        self._call("upload", key, self.client.upload_file, str(path), self.bucket, self._key(key))
        return self.uri(key)

    def get_file(self, key: str, path: Path) -> Path:
        self._call("download", key, self.client.download_file, self.bucket, self._key(key), str(path))
        return path

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))


def parse_uri(uri: str) -> tuple[str, str, str]:
    """Split a storage URI into (scheme, bucket-or-empty, path)."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return "file", "", str(local_path(uri))
    if scheme == "s3":
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError:
            raise StorageError(f"{uri!r} has no bucket: use s3://bucket/prefix") from None
        return "s3", bucket, key.strip("/")
    raise StorageError(f"unsupported storage URI {uri!r}: use file:///path or s3://bucket/prefix")


def open_storage(uri: str, s3_client: Any | None = None) -> Storage:
    """A store rooted at `uri`. s3:// needs a boto3 S3 client (build it from an Airflow connection)."""
    scheme, bucket, path = parse_uri(uri)
    if scheme == "file":
        return LocalStorage(path)
    if s3_client is None:
        raise StorageError(
            f"{uri} needs an S3 client: configure storage.aws_conn_id with an Airflow AWS connection"
        )
    return S3Storage(s3_client, bucket, path)
