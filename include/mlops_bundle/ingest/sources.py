"""Which folders the ingest DAG's ``source`` Param may name: the ``ingest.allowed_sources`` allowlist.

Whoever may trigger the ingest DAG controls its Params. Unchecked, a ``source`` of ``file:///etc`` or
``s3://someone-elses-bucket/`` makes the pipeline list and copy (to quarantine) whatever the platform's own
disk access and AWS connection can read, and show file names and header lines in the task's error. So the
requested URI is checked before any store is built or listed:

- only folders under a prefix of ``ingest.allowed_sources`` pass; an empty list (the default) allows no
  override at all (runs read ``landing/<dataset>/<date>/`` under the storage root);
- anything that could make two spellings name different places is refused outright, not "cleaned":
  ``.``/``..`` segments, percent-escapes (``%2e%2e``), query or fragment, NUL, backslashes, control
  characters, a ``file://`` host, a scheme other than ``file``/``s3``;
- prefixes match on whole path segments (``s3://b/landing`` does not admit ``s3://b/landing-evil``),
  buckets compare exactly, and local paths compare after resolving symlinks on both sides, so a link
  inside an allowed folder cannot lead out of it;
- the error names only the allowlist and how to extend it, never the requested path: a foreign file or
  folder name must not reach the task log.

The caller opens the canonical URI :func:`check_source` returns (symlinks resolved), not the raw Param.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlops_bundle.config import BundleConfig, absolute_location
from mlops_bundle.storage import file_uri
from mlops_bundle.uris import local_path, parse_s3_uri

ALLOWLIST_FIELD = "ingest.allowed_sources"
ALLOWLIST_ENV = "MLOPS_INGEST__ALLOWED_SOURCES"
_REFUSED_CHARS = {
    "\x00": "a NUL byte",
    "\\": "a backslash",
    "%": "a percent-escape (write the folder name literally)",
    "?": "a query ('?')",
    "#": "a fragment ('#')",
}


class SourceNotAllowed(ValueError):
    """The ``source`` Param names a folder outside ``ingest.allowed_sources`` (or is malformed).

    The message names the allowlist and how to extend it, never the requested path.
    """


@dataclass(frozen=True)
class _Location:
    scheme: str  # "file" or "s3"
    bucket: str  # "" for file
    path: str  # file: absolute resolved path; s3: key prefix without leading/trailing slashes

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return file_uri(Path(self.path))
        return f"s3://{self.bucket}/{self.path}".rstrip("/")

    def contains(self, other: _Location) -> bool:
        """Whether ``other`` is this folder or below it, on whole path segments."""
        if (other.scheme, other.bucket) != (self.scheme, self.bucket):
            return False
        base = self.path.rstrip("/")
        return not base or other.path == base or other.path.startswith(base + "/")


def allowed_prefixes(cfg: BundleConfig) -> list[str]:
    """The allowlist as absolute URIs, local folders with symlinks resolved (what a request must be under)."""
    return [_allowed(cfg, entry).uri for entry in cfg.ingest.allowed_sources]


def check_source(cfg: BundleConfig, requested: str) -> str:
    """The canonical URI of ``requested`` if it lies under an ``ingest.allowed_sources`` prefix.

    Raise :class:`SourceNotAllowed` otherwise; its message never repeats ``requested`` (see module doc).
    """
    allowed = [_allowed(cfg, entry) for entry in cfg.ingest.allowed_sources]
    if not allowed:
        raise SourceNotAllowed(
            f"the `source` Param is refused: {ALLOWLIST_FIELD} is empty, so this deployment accepts no "
            "source override; trigger without `source` to ingest landing/<dataset>/<date>/ under the "
            f"storage root. {_how_to_extend()}"
        )
    location, scheme, reason = _parse_requested(requested)
    if location is not None and any(prefix.contains(location) for prefix in allowed):
        return location.uri
    what = f"the `source` Param ({scheme}://...)" if scheme else "the `source` Param"
    raise SourceNotAllowed(
        f"{what} is refused: {reason or 'it is not under any allowed prefix'}. Allowed prefixes "
        f"({ALLOWLIST_FIELD}): {[p.uri + '/' for p in allowed]}; name a folder under one of them. "
        f"{_how_to_extend()}"
    )


def check_keys(prefix: str, keys: Iterable[str]) -> None:
    """Refuse object keys (handed from one task to the next) that are not below ``prefix`` on whole
    segments or hold ``.``/``..`` segments: a tampered hand-over must not widen what is read."""
    base = prefix.strip("/")
    for key in keys:
        parts = key.split("/")
        if "." in parts or ".." in parts or "" in parts or (base and not key.startswith(base + "/")):
            raise SourceNotAllowed(
                f"a discovered file key is not below the batch's folder {base or '(source root)'}: the "
                "hand-over between discover_files and validate_and_stage was altered; trigger the run again"
            )


def _how_to_extend() -> str:
    return (
        f"To allow a folder, add its prefix to {ALLOWLIST_FIELD} in the config file (e.g. "
        '`allowed_sources: ["s3://bucket/incoming/", "file:///data/incoming/"]`) or set '
        f"{ALLOWLIST_ENV}='[\"s3://bucket/incoming/\"]' for every Airflow component."
    )


def _allowed(cfg: BundleConfig, entry: str) -> _Location:
    """A configured (trusted, load-time validated) entry as a location: same resolution as the root."""
    uri = absolute_location(entry, cfg.base_dir, ALLOWLIST_FIELD)
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        return _Location("s3", bucket, key.strip("/"))
    return _Location("file", "", str(local_path(uri).resolve()))


def _parse_requested(requested: object) -> tuple[_Location | None, str, str]:
    """(location or None, scheme to name in the error or '', reason it was refused or '').

    Refuses rather than normalises anything ambiguous; reasons never quote the input.
    """
    if not isinstance(requested, str) or not requested:
        return None, "", "it is empty or not a string"
    for char, what in _REFUSED_CHARS.items():
        if char in requested:
            return None, "", f"it holds {what}"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in requested):
        return None, "", "it holds control characters"
    try:
        requested.encode("utf-8")
    except UnicodeEncodeError:
        return None, "", "it is not valid UTF-8 text"
    scheme, sep, rest = requested.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("file", "s3"):
        return None, "", "its scheme is not file:// or s3://"
    segments = rest.split("/")
    if scheme == "file" and segments[0] != "":
        return None, scheme, "it names a host or a relative path (use file:///absolute/folder/)"
    if any(seg in (".", "..") for seg in segments):
        return None, scheme, "it holds a '.' or '..' path segment"
    parts = [seg for seg in segments[1:] if seg]
    if scheme == "s3":
        if not segments[0]:
            return None, scheme, "it names no bucket"
        return _Location("s3", segments[0], "/".join(parts)), scheme, ""
    # resolve() follows symlinks, so a link inside an allowed folder is judged by where it leads; a link
    # loop or an unreadable path is refused like anything else (its error would quote the path)
    try:
        resolved = str(Path("/", *parts).resolve())
    except (OSError, RuntimeError, ValueError):
        return None, scheme, "it cannot be resolved (a symlink loop or an unreadable path)"
    return _Location("file", "", resolved), scheme, ""
