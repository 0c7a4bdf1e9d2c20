"""Parsing and printing the URIs the bundle is configured with: one home for each rule.

- ``s3://bucket/key`` -> (bucket, key) (:func:`parse_s3_uri`); the Airflow hooks call this too;
- ``postgresql[+driver]://...`` (SQLAlchemy/MLflow spelling) -> a libpq DSN (:func:`pg_dsn`);
- any URI with a password -> the same URI with the password replaced by ``***`` (:func:`redact`), for
  every error message and log line that names a database or server.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

_PG_RE = re.compile(r"^postgres(?:ql)?(?:\+[A-Za-z0-9_]+)?://")
_SQLITE_RE = re.compile(r"^sqlite(?:\+[A-Za-z0-9_]+)?:///")
_PASSWORD_RE = re.compile(r"//([^:/@]+):[^@/]*@")


def redact(uri: str) -> str:
    """``uri`` with any ``user:password@`` reduced to ``user:***@`` (safe to log)."""
    return _PASSWORD_RE.sub(r"//\1:***@", uri or "")


def is_postgres(uri: str) -> bool:
    return bool(_PG_RE.match(uri or ""))


def is_sqlite(uri: str) -> bool:
    return bool(_SQLITE_RE.match(uri or ""))


def is_s3(uri: str) -> bool:
    """Whether ``uri`` names S3 (``s3://...``); anything else is a local path or ``file://`` URI."""
    return urlparse(uri or "").scheme == "s3"


def sqlite_path(uri: str) -> str:
    """The file path of a ``sqlite[+driver]:///path`` URI ('' for other schemes)."""
    match = _SQLITE_RE.match(uri or "")
    return uri[match.end() :] if match else ""


def pg_dsn(uri: str) -> str | None:
    """``postgresql[+driver]://...`` (SQLAlchemy/MLflow style) -> a libpq URI; None for other schemes."""
    match = _PG_RE.match(uri or "")
    return "postgresql://" + uri[match.end() :] if match else None


def parse_s3_uri(uri: str, *, require_key: bool = False) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ("bucket", "some/key"); ValueError naming the URI when it is not one.

    The key is everything after the bucket's slash, taken literally: S3 keys may hold ``#``, ``?`` and
    ``%``, so the URI is split, not URL-parsed. With ``require_key`` the URI must name an object (a
    non-empty key not ending in ``/``), as a single file transfer needs.
    """
    text = uri or ""
    if text[:5].lower() != "s3://":
        raise ValueError(f"{uri!r} is not an S3 URI: use s3://bucket/key")
    bucket, _, key = text[5:].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket: use s3://bucket/key")
    if require_key and (not key or key.endswith("/")):
        raise ValueError(f"{uri!r} is not an S3 object URI: use s3://bucket/key")
    return bucket, key


def local_path(uri_or_path: str) -> Path:
    """A local path from a ``file:`` URI (``file:///abs``, ``file://localhost/abs``, ``file:/abs``;
    percent-decoded) or a plain path. ValueError for a ``file://`` URI naming another host: it is not on
    this machine, and dropping the host would silently point somewhere else."""
    if uri_or_path[:5].lower() == "file:":
        parsed = urlparse(uri_or_path)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(
                f"{uri_or_path!r} names host {parsed.netloc!r}: use file:///absolute/path for a local folder"
            )
        return Path(unquote(parsed.path))
    return Path(uri_or_path)
