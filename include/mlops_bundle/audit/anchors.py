"""Anchors outside the audit store: verified heads written once to an S3 bucket with Object Lock.

**Why.** The log, its ``audit_anchor`` table and the Airflow Variable holding the last verified head all
live in databases that every task can reach with full rights, so an attacker in a task can delete the
tail of the log *and* every anchor of it, and the shorter chain verifies. An anchor that counts must live
where tasks cannot rewrite it: a bucket with Object Lock. Each verified head becomes a new object
``<prefix><seq:012d>.json`` holding ``{seq, hash, at, records, key_id, store, retain_until}``, written with
a retention (``COMPLIANCE`` by default): S3 then refuses to delete that object version or to shorten its
retention until it expires (AccessDenied), and because the bucket is versioned a PUT to the same key only
adds a version, never replaces the locked one. The bucket is the source of truth for "at least this many
records ending in this head existed".

**Reading.** ``S3Anchors.read()`` lists every object *version* under the prefix (so a delete marker or
an overwrite cannot hide the original), takes each key's oldest version (the one we wrote, locked) and
reads the newest anchor's body. Extra versions and delete markers are reported as tampering attempts,
a newest anchor whose retention was shortened as tampering, one that is not (or no longer) locked as a
warning. Only the newest anchor's body is read: its hash commits to every record before it.

The library never builds the client: it takes a boto3 S3 client (the Airflow side builds one from the
AWS connection with the amazon provider's ``S3Hook``; the CLI uses boto3's default credential chain).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from mlops_bundle.uris import parse_s3_uri

MODES = ("COMPLIANCE", "GOVERNANCE")
_KEY_RE = re.compile(r"^(\d{12})\.json$")


class AnchorError(RuntimeError):
    """The anchor bucket cannot be used (missing Object Lock, refused write, conflicting anchor)."""


@dataclass(frozen=True)
class Anchor:
    """One anchor as written to (and read back from) the bucket."""

    seq: int
    hash: str
    at: str
    records: int
    key_id: str
    uri: str
    version_id: str = ""
    lock_mode: str | None = None
    locked_until: str | None = None
    # the retention the writer asked for (in the body): a shorter lock on the object means tampering
    retain_until: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BucketState:
    """What the bucket holds: every anchored seq, the newest anchor, and what looks wrong.

    ``problems`` are tampering findings (verify fails on them); ``warnings`` weaken the guarantee but
    are not evidence of tampering (e.g. the newest anchor's retention has expired).
    """

    seqs: tuple[int, ...]
    latest: Anchor | None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    # every readable anchor (its original, locked version): verify compares each with the log, so a
    # forged newer anchor cannot stand in for the genuine older ones
    anchors: tuple[Anchor, ...] = ()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="seconds")
    return str(value)


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3Anchors:
    """The anchors of one audit store under ``s3://bucket/prefix/``.

    :param client: a boto3 S3 client allowed to PutObject/GetObject/ListBucketVersions on the bucket
    :param uri: ``s3://bucket/prefix/`` (one prefix per audit store)
    :param retention_days: Object Lock retention of each new anchor
    :param mode: ``COMPLIANCE`` (nobody can delete early) or ``GOVERNANCE`` (bypass permission can)
    """

    def __init__(self, client: Any, uri: str, *, retention_days: int = 400, mode: str = "COMPLIANCE"):
        bucket, prefix = parse_s3_uri(uri)
        if mode not in MODES:
            raise ValueError(f"anchor retention mode must be one of {MODES}, got {mode!r}")
        if retention_days < 1:
            raise ValueError(f"anchor retention must be at least 1 day, got {retention_days}")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.retention_days = retention_days
        self.mode = mode

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, seq: int) -> str:
        """The object key of the anchor of ``seq`` (zero-padded: keys sort like seqs)."""
        return f"{self.prefix}{int(seq):012d}.json"

    # ------------------------------------------------------------------------------------------ write

    def write(self, seq: int, digest: str, *, records: int, key_id: str, store: str) -> Anchor:
        """Write the anchor of a verified head once, under Object Lock; return it.

        Idempotent: when an anchor for ``seq`` already exists with the same hash it is returned unchanged
        (no second version). An existing anchor with another hash raises ``AnchorError``: the log at that
        seq is not the one anchored before (a rewrite), so nothing is written over it.
        """
        existing = self._original(self.key(seq))
        if existing is not None:
            anchor = self._read(self.key(seq), existing["VersionId"])
            if anchor.hash != digest:
                raise AnchorError(
                    f"anchor {self.uri}{int(seq):012d}.json already says seq {seq} has hash "
                    f"{anchor.hash[:16]}..., the verified log has {digest[:16]}...: the log was rewritten "
                    f"at or before seq {seq}; not anchoring"
                )
            return anchor
        now = dt.datetime.now(dt.UTC)
        until = (now + dt.timedelta(days=self.retention_days)).replace(microsecond=0)
        body = json.dumps(
            {
                "seq": int(seq),
                "hash": digest,
                "at": now.isoformat(timespec="microseconds"),
                "records": int(records),
                "key_id": key_id,
                "store": store,
                "retain_until": until.isoformat(timespec="seconds"),
            },
            sort_keys=True,
        ).encode("utf-8")
        try:
            put = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(seq),
                Body=body,
                ContentType="application/json",
                # Object Lock PUTs must carry an integrity checksum (S3, MinIO and moto insist)
                ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode("ascii"),  # noqa: S324
                ObjectLockMode=self.mode,
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:
            code = _error_code(exc)
            hint = (
                f"bucket {self.bucket} has no Object Lock: create it with Object Lock enabled "
                f"(aws s3api create-bucket --bucket {self.bucket} --object-lock-enabled-for-bucket, or "
                f"mc mb --with-lock); it cannot be switched on for most existing buckets"
                if code == "InvalidRequest" or "ObjectLock" in str(exc)
                else "check the AWS connection's credentials (s3:PutObject, s3:PutObjectRetention)"
            )
            raise AnchorError(
                f"could not write anchor {self.uri}{int(seq):012d}.json: {type(exc).__name__}: {exc}; {hint}"
            ) from exc
        return Anchor(
            seq=int(seq),
            hash=digest,
            at=now.isoformat(timespec="microseconds"),
            records=int(records),
            key_id=key_id,
            uri=f"s3://{self.bucket}/{self.key(seq)}",
            version_id=str(put.get("VersionId") or ""),
            lock_mode=self.mode,
            locked_until=_iso(until),
            retain_until=_iso(until),
        )

    # ------------------------------------------------------------------------------------------- read

    def _original(self, key: str) -> dict[str, Any] | None:
        """The oldest version of ``key`` (the anchor as first written), or None."""
        versions = [
            e
            for kind, e in self._versions(key)
            if kind == "version" and e["Key"] == key  # the prefix may match longer keys
        ]
        return versions[-1] if versions else None

    def _versions(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """("version" | "delete_marker", entry) for every object version under ``prefix`` (newest first
        per key, as S3 lists them)."""
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for entry in page.get("Versions", []) or []:
                yield "version", entry
            for entry in page.get("DeleteMarkers", []) or []:
                yield "delete_marker", entry

    def _read(self, key: str, version_id: str) -> Anchor:
        """The anchor stored in one object version (ValueError when its body is not an anchor)."""
        got = self.client.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        raw = got["Body"].read()
        try:
            body = json.loads(raw)
            return Anchor(
                seq=int(body["seq"]),
                hash=str(body["hash"]),
                at=str(body["at"]),
                records=int(body["records"]),
                key_id=str(body.get("key_id", "")),
                uri=f"s3://{self.bucket}/{key}",
                version_id=version_id,
                lock_mode=got.get("ObjectLockMode"),
                locked_until=_iso(got.get("ObjectLockRetainUntilDate")),
                retain_until=body.get("retain_until"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"anchor s3://{self.bucket}/{key} is not an anchor: {exc}") from exc

    def read(self) -> BucketState:
        """Everything verify needs from the bucket (see the module docstring); ``AnchorError`` when the
        bucket cannot be read."""
        try:
            return self._read_state()
        except AnchorError:
            raise
        except Exception as exc:  # botocore's ClientError / connection errors: name the bucket and rights
            raise AnchorError(
                f"could not read the audit anchors in {self.uri}: {type(exc).__name__}: {exc}; check the "
                f"bucket exists and the AWS connection may s3:ListBucketVersions and s3:GetObjectVersion"
            ) from exc

    def _read_state(self) -> BucketState:
        originals: dict[str, dict[str, Any]] = {}
        counts: dict[str, int] = {}
        markers: dict[str, int] = {}
        strays: list[str] = []
        for kind, entry in self._versions(self.prefix):
            key = entry["Key"]
            name = key[len(self.prefix) :]
            if not _KEY_RE.match(name):
                strays.append(key)
                continue
            if kind == "delete_marker":
                markers[key] = markers.get(key, 0) + 1
                continue
            counts[key] = counts.get(key, 0) + 1
            originals[key] = entry  # newest first per key: the last one seen is the oldest
        problems: list[str] = []
        warnings: list[str] = []
        for key in sorted(set(counts) | set(markers)):
            extra, deleted = counts.get(key, 0) - 1, markers.get(key, 0)
            if extra > 0 or deleted:
                what = []
                if extra > 0:
                    what.append(f"overwritten {extra} time(s)")
                if deleted:
                    what.append(f"delete-marked {deleted} time(s)")
                problems.append(
                    f"anchor s3://{self.bucket}/{key} was {' and '.join(what)}: someone tried to rewrite the "
                    f"anchor (the original locked version is used; remove the extra versions/markers only "
                    f"after investigating)"
                )
        if strays:
            warnings.append(
                f"{len(strays)} object(s) under {self.uri} are not anchors (e.g. s3://{self.bucket}/"
                f"{strays[0]}): keep this prefix for the audit anchors only"
            )
        seqs = tuple(sorted(int(_KEY_RE.match(k[len(self.prefix) :]).group(1)) for k in originals))
        # every anchor is read (one GET each: ~9,000 for a year of hourly anchors): checking only the
        # newest would let whoever can PUT to the prefix stand a forged newer anchor in front of the
        # genuine ones after rewriting the log
        anchors: list[Anchor] = []
        for seq in seqs:
            key = self.key(seq)
            try:
                anchor = self._read(key, originals[key]["VersionId"])
            except ValueError as exc:
                problems.append(str(exc))
                continue
            problems.extend(self._check_latest(anchor, seq))
            anchors.append(anchor)
        latest = anchors[-1] if anchors and anchors[-1].seq == seqs[-1] else None
        if latest is not None:
            warnings.extend(self._lock_warnings(latest))
        return BucketState(seqs, latest, tuple(problems), tuple(warnings), tuple(anchors))

    def _check_latest(self, anchor: Anchor, seq: int) -> list[str]:
        if anchor.seq != seq:
            return [f"anchor {anchor.uri} says seq {anchor.seq}, its name says {seq}: it was forged"]
        if anchor.locked_until and anchor.retain_until:
            locked = dt.datetime.fromisoformat(anchor.locked_until)
            if locked < dt.datetime.fromisoformat(anchor.retain_until):
                return [
                    f"anchor {anchor.uri} was written locked until {anchor.retain_until} but is now locked "
                    f"only until {anchor.locked_until}: its retention was shortened (governance bypass?)"
                ]
        return []

    def _lock_warnings(self, anchor: Anchor) -> list[str]:
        if not anchor.lock_mode or not anchor.locked_until:
            return [
                f"anchor {anchor.uri} is not under Object Lock retention: anyone with the bucket's "
                f"credentials can delete it (create the bucket with Object Lock)"
            ]
        until = dt.datetime.fromisoformat(anchor.locked_until)
        if until <= dt.datetime.now(dt.UTC):
            return [
                f"anchor {anchor.uri}'s retention expired on {anchor.locked_until}: it can be deleted now; "
                f"the audit_verify DAG anchors a fresh head on every successful run"
            ]
        return []
