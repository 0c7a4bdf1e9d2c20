"""Reading the chain back: verification, streaming records and the JSON-lines export auditors keep.

**What verification detects** (``verify``, streaming in ``seq`` order, reporting the *first* broken
link): an edited field (hash mismatch at that seq), a deleted record (gap: expected seq N, found N+1),
reordered or moved records (``prev_hash`` no longer links), an edited ``hash`` column, and, with an HMAC
key, a *re-chained forgery* (an attacker who edits record N and recomputes every later hash cannot do so
without the key). Without a key a full re-chain is only detectable against a remembered head.

**Truncation needs a remembered head.** Deleting the newest records leaves a valid, shorter chain; only a
previously observed head ``(seq, hash)`` proves records are missing. Three mechanisms, weakest first:
``verify(expect_head=(seq, hash))`` with a head the caller kept (the ``audit_verify`` DAG keeps the last
verified head in an Airflow Variable, auditors the ``head`` printed by the CLI or an export's last line);
*anchor rows* (``audit_anchor``, checked when present); and the **anchor bucket**
(``verify(bucket=S3Anchors(...))``, ``mlops_bundle.audit.anchors``): the newest anchor in an Object Lock
bucket, which a task with the database's superuser cannot delete. The first two live in databases every
task can write, so they only catch accidental or naive truncation; with the bucket, verify fails naming
what is gone when the tail after an anchor, the anchored head record or the anchor rows were deleted, and
warns when no bucket is configured. What the bucket cannot show: records appended after the newest anchor
and deleted before the next one (the window is the anchor interval, hourly by default).

**Gaps.** A listener that could not write (store down) later appends an ``audit.gap`` record counting the
events it lost; verify sums them (``gaps``, ``lost_events``) and warns.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mlops_bundle.audit.chain import (
    GENESIS_HASH,
    HMAC_ENV,
    UNKEYED,
    as_key,
    canonical_json,
    key_id,
    record_hash,
)
from mlops_bundle.audit.store import FIELDS, reader

if TYPE_CHECKING:
    from mlops_bundle.audit.anchors import BucketState, S3Anchors

GAP_EVENT = "audit.gap"
NO_BUCKET_WARNING = (
    "no anchor bucket (audit.anchor_uri is empty): the anchors and the remembered head live in databases "
    "every task can write, so a deleted tail plus deleted anchors would pass; set audit.anchor_uri to an "
    "S3 bucket with Object Lock"
)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``.

    ``records``: how many records form the intact prefix of the chain (all of them when ``ok``).
    ``first_bad_seq``: the seq of the first broken link (None when ok, or when the problem is not at a
    record, e.g. a key mismatch or deleted anchor rows). ``head_seq``/``head_hash``: the last intact record.
    ``reason``: every finding, ``"; "``-joined (the first broken link first). ``warnings``: what weakens the
    check without being a break (no anchor bucket, lost listener events). ``anchor``: the bucket's newest
    anchor. ``gaps``/``lost_events``: ``audit.gap`` records and the events they count.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None = None
    head_hash: str | None = None
    warnings: tuple[str, ...] = ()
    anchor: dict[str, Any] | None = None
    gaps: int = 0
    lost_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_head(text: str) -> tuple[int, str]:
    """``"SEQ:HASH"`` -> (seq, hash); raises ValueError with the expected form."""
    seq, sep, digest = (text or "").strip().partition(":")
    if not sep or not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"expected head as SEQ:HASH (e.g. 42:<64 hex chars>), got {text!r}")
    return int(seq), digest


def verify(
    uri: str,
    hmac_key: bytes | str | None = None,
    *,
    expect_head: tuple[int, str] | None = None,
    check_anchors: bool = True,
    bucket: S3Anchors | None = None,
) -> VerifyResult:
    """Walk the log in seq order and report the first broken link (see the module docstring).

    With ``bucket`` the bucket is read *before* the log: anchors are only written for heads the log
    already held, so the later log snapshot must reach the newest anchor.
    """
    key = as_key(hmac_key)
    state = bucket.read() if bucket is not None else None
    warnings = [] if state is not None else [NO_BUCKET_WARNING]
    if state is not None:
        warnings.extend(state.warnings)
    with reader(uri) as (be, conn):
        cur = None if conn is None else conn.cursor()
        if cur is not None:
            be.begin_read(cur)  # one snapshot for the whole walk (must come first on PostgreSQL)
        if cur is None or not be.table_exists(cur, "audit_log"):
            return _empty(expect_head, state, warnings)
        cur.execute(be.sql("SELECT value FROM audit_meta WHERE name = ?"), ("key_id",))
        row = cur.fetchone()
        stored_key_id = row[0] if row else None
        if stored_key_id is not None and stored_key_id != key_id(key):
            if stored_key_id == UNKEYED:
                why = "the log is unkeyed (plain sha256) but an HMAC key was given"
            elif key is None:
                why = f"the log is HMAC-keyed (key id {stored_key_id}) but no key was given (set ${HMAC_ENV})"
            else:
                why = f"the log is HMAC-keyed with key id {stored_key_id}, the given key has id {key_id(key)}"
            return VerifyResult(False, 0, None, f"key mismatch: {why}", warnings=tuple(warnings))
        db_anchors: dict[int, str] = {}
        if (check_anchors or state is not None) and be.table_exists(cur, "audit_anchor"):
            cur.execute("SELECT seq, hash FROM audit_anchor")
            db_anchors = {int(s): h for s, h in cur.fetchall()}
        checks = _Checks(
            anchors=dict(db_anchors) if check_anchors else {},
            external=None if expect_head is None else int(expect_head[0]),
        )
        if expect_head is not None:
            checks.anchors[int(expect_head[0])] = expect_head[1]
        if state is not None:
            for anchor in state.anchors:  # every locked anchor, not only the newest (see BucketState)
                checks.anchors[anchor.seq] = anchor.hash
                checks.bucket_uris[anchor.seq] = anchor.uri
            if state.latest is not None:
                checks.bucket_seq, checks.bucket_uri = state.latest.seq, state.latest.uri

        rows = be.stream(conn, f"SELECT {', '.join(FIELDS)} FROM audit_log ORDER BY seq")
        result = _walk(rows, key, checks)
        with contextlib.suppress(Exception):
            rows.close()
    return _with_bucket(result, state, db_anchors, stored_key_id, warnings)


def _empty(
    expect_head: tuple[int, str] | None, state: BucketState | None, warnings: list[str]
) -> VerifyResult:
    """The result for a log that is empty or does not exist (yet)."""
    findings = []
    if expect_head is not None and expect_head[0] > 0:
        findings.append(f"truncated: the log is empty but the remembered head is seq {expect_head[0]}")
    if state is not None and state.latest is not None:
        a = state.latest
        findings.append(
            f"the audit log is empty or missing but the anchor {a.uri} says seq {a.seq} head "
            f"{a.hash[:16]}...: {a.seq} record(s) deleted"
        )
    if state is not None:
        findings.extend(state.problems)
    anchor = None if state is None or state.latest is None else state.latest.to_dict()
    if findings:
        return VerifyResult(False, 0, 1, "; ".join(findings), warnings=tuple(warnings), anchor=anchor)
    return VerifyResult(True, 0, None, "empty log", warnings=tuple(warnings), anchor=anchor)


def _with_bucket(
    result: VerifyResult,
    state: BucketState | None,
    db_anchors: dict[int, str],
    stored_key_id: str | None,
    warnings: list[str],
) -> VerifyResult:
    """Add the bucket's findings (deleted anchor rows, tampered anchor objects) and the warnings."""
    findings = [] if result.ok else [result.reason]
    if state is not None:
        missing = [s for s in state.seqs if s not in db_anchors]
        if missing and not db_anchors:
            findings.append(
                f"anchor table empty but bucket holds {len(state.seqs)} anchor(s): the audit_anchor rows "
                f"were deleted"
            )
        elif missing:
            shown = ", ".join(str(s) for s in missing[:10]) + (" ..." if len(missing) > 10 else "")
            findings.append(
                f"anchor table lacks {len(missing)} of the bucket's {len(state.seqs)} anchor(s) (seq "
                f"{shown}): those audit_anchor rows were deleted"
            )
        if not state.seqs and db_anchors:
            findings.append(
                f"the bucket holds no anchors but the anchor table holds {len(db_anchors)}: the bucket's "
                f"anchors were deleted (retention bypassed?) or audit.anchor_uri was changed"
            )
        foreign = [a for a in state.anchors if stored_key_id is not None and a.key_id != stored_key_id]
        if foreign:
            a = foreign[-1]
            findings.append(
                f"{len(foreign)} anchor(s) (e.g. {a.uri}) name key id {a.key_id or '(none)'}, this log has key "
                f"id {stored_key_id}: forged anchors, or the log was replaced (a new key or store needs its "
                f"own anchor prefix)"
            )
        findings.extend(state.problems)
    if result.lost_events:
        warnings.append(
            f"listeners could not write {result.lost_events} event(s) while the store was down "
            f"({result.gaps} audit.gap record(s)): those state changes are not in the log"
        )
    anchor = None if state is None or state.latest is None else state.latest.to_dict()
    ok = not findings
    return VerifyResult(
        ok,
        result.records,
        result.first_bad_seq,
        "ok" if ok else "; ".join(findings),
        result.head_seq,
        result.head_hash,
        warnings=tuple(warnings),
        anchor=anchor,
        gaps=result.gaps,
        lost_events=result.lost_events,
    )


@dataclass
class _Checks:
    """What the walk compares the log with: seq -> hash of every anchor, and where each came from."""

    anchors: dict[int, str]
    external: int | None = None
    bucket_seq: int | None = None
    bucket_uri: str = ""
    bucket_uris: dict[int, str] = field(default_factory=dict)

    def origin(self, seq: int) -> str:
        if seq in self.bucket_uris:
            return f"the anchor {self.bucket_uris[seq]}"
        return "the remembered head" if seq == self.external else "anchor"


def _edit_reason(rec: dict[str, Any], computed: str, rows: Iterator[tuple], key: bytes | None) -> str:
    """What was probably edited in a record whose hash does not match (peeks at the next record)."""
    nxt = next(rows, None)
    nxt_prev = None if nxt is None else dict(zip(FIELDS, nxt, strict=True))["prev_hash"]
    if nxt_prev is not None and nxt_prev == computed:
        return "the stored hash column was edited"
    what = "a field (at, source, event, actor, subject or payload) was edited"
    try:
        if canonical_json(json.loads(rec["payload"])) != rec["payload"]:
            what = "the payload was edited (it is no longer canonical JSON)"
    except ValueError:
        what = "the payload was edited (it is not valid JSON)"
    if key is not None:
        what += ", or the record was forged without the HMAC key"
    return what


def _walk(rows: Iterator[tuple], key: bytes | None, checks: _Checks) -> VerifyResult:
    expected, prev_hash, count = 1, GENESIS_HASH, 0
    last_seq: int | None = None
    gaps = lost = 0
    anchors = checks.anchors

    def bad(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(
            False, count, seq, reason, last_seq, prev_hash if last_seq else None, gaps=gaps, lost_events=lost
        )

    for raw in rows:
        rec = dict(zip(FIELDS, raw, strict=True))
        seq = int(rec["seq"])
        if seq != expected:
            missing = [s for s in (checks.bucket_seq,) if s is not None and expected <= s < seq]
            also = f" (the anchored head record seq {missing[0]} is among them)" if missing else ""
            return bad(
                expected,
                f"gap: expected seq {expected}, found seq {seq} (record(s) {expected}..{seq - 1} deleted){also}",
            )
        if rec["prev_hash"] != prev_hash:
            return bad(
                seq,
                f"prev_hash mismatch at seq {seq}: it does not link to record {seq - 1} (a record was "
                f"removed, inserted, reordered or moved here)",
            )
        computed = record_hash(rec, key)
        if not hmac.compare_digest(computed, str(rec["hash"])):
            return bad(seq, f"hash mismatch at seq {seq}: {_edit_reason(rec, computed, rows, key)}")
        if seq in anchors and anchors[seq] != rec["hash"]:
            return bad(
                seq,
                f"head mismatch at seq {seq}: {checks.origin(seq)} says hash {anchors[seq][:16]}..., the log "
                f"has {rec['hash'][:16]}...: the log was rewritten at or before seq {seq}",
            )
        if rec["event"] == GAP_EVENT:
            gaps += 1
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                lost += int(json.loads(rec["payload"]).get("lost", 0))
        prev_hash, last_seq, count, expected = rec["hash"], seq, count + 1, seq + 1

    end = last_seq or 0
    missing = [s for s in anchors if s > end]
    if missing:
        top = max(missing)
        if top == checks.bucket_seq:
            return bad(
                end + 1,
                f"truncated: audit log ends at seq {end} but the anchor {checks.bucket_uri} says seq {top} "
                f"head {anchors[top][:16]}...: {top - end} record(s) deleted from the tail, the anchored "
                f"head record seq {top} among them",
            )
        origin = "the remembered head" if top == checks.external else "an anchor"
        return bad(
            end + 1,
            f"truncated: the log ends at seq {end} but {origin} is seq {top} "
            f"(records {end + 1}..{top} are missing)",
        )
    return VerifyResult(
        True, count, None, "ok", last_seq, prev_hash if last_seq else None, gaps=gaps, lost_events=lost
    )


def iter_records(uri: str, since_seq: int = 0) -> Iterator[dict[str, Any]]:
    """Records with seq > since_seq in seq order, streamed (payload parsed back to an object)."""
    with reader(uri) as (be, conn):
        if conn is None:
            return
        cur = conn.cursor()
        be.begin_read(cur)
        if not be.table_exists(cur, "audit_log"):
            return
        for raw in be.stream(
            conn, f"SELECT {', '.join(FIELDS)} FROM audit_log WHERE seq > ? ORDER BY seq", (int(since_seq),)
        ):
            rec = dict(zip(FIELDS, raw, strict=True))
            rec["seq"] = int(rec["seq"])
            try:
                rec["payload"] = json.loads(rec["payload"])
            except ValueError:
                pass  # keep the raw text: export must not hide a damaged record
            yield rec


def export_jsonl(uri: str, out: str | os.PathLike[str] | IO[str], since_seq: int = 0) -> int:
    """Write records with seq > since_seq as JSON lines (one record per line, keys sorted); return the count.

    ``payload`` is exported as an object; ``canonical_json(payload)`` gives back the exact hashed text, so
    an auditor can re-check every hash (and the chain) from the export alone.
    """
    if isinstance(out, str | os.PathLike):
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with tmp.open("w", encoding="utf-8") as fh:
            n = export_jsonl(uri, fh, since_seq)
        tmp.replace(path)
        return n
    n = 0
    for rec in iter_records(uri, since_seq):
        out.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
        n += 1
    return n
