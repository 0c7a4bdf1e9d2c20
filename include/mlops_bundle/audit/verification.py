"""Reading the chain back: verification, streaming records and the JSON-lines export auditors keep.

**What verification detects** (``verify``, streaming in ``seq`` order, reporting the *first* broken
link): an edited field (hash mismatch at that seq), a deleted record (gap: expected seq N, found N+1),
reordered or moved records (``prev_hash`` no longer links), an edited ``hash`` column, and, with an HMAC
key, a *re-chained forgery* (an attacker who edits record N and recomputes every later hash cannot do so
without the key). Without a key a full re-chain is only detectable against a remembered head.

**Truncation needs a remembered head.** Deleting the newest records leaves a valid, shorter chain; only a
previously observed head ``(seq, hash)`` proves records are missing. Two mechanisms:
``verify(expect_head=(seq, hash))`` with a head kept *outside* this database (the ``audit_verify`` DAG
keeps the last verified head in an Airflow Variable, i.e. in Airflow's metadata DB; auditors keep the
``head`` printed by the CLI or the last line of an export), and *anchors*: ``anchor()`` stores the current
head in the ``audit_anchor`` table and ``verify`` checks every stored anchor. Anchors live in the same
database, so they catch accidental or naive truncation but not an attacker who also deletes the anchor
rows; for that, the external head is what counts.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

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


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``verify``.

    ``records``: how many records form the intact prefix of the chain (all of them when ``ok``).
    ``first_bad_seq``: the seq of the first broken link (None when ok, or when the problem is not at a
    record, e.g. a key mismatch). ``head_seq``/``head_hash``: the last intact record.
    """

    ok: bool
    records: int
    first_bad_seq: int | None
    reason: str
    head_seq: int | None = None
    head_hash: str | None = None

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
) -> VerifyResult:
    """Walk the log in seq order and report the first broken link (see the module docstring)."""
    key = as_key(hmac_key)
    with reader(uri) as (be, conn):
        cur = None if conn is None else conn.cursor()
        if cur is not None:
            be.begin_read(cur)  # one snapshot for the whole walk (must come first on PostgreSQL)
        if cur is None or not be.table_exists(cur, "audit_log"):
            if expect_head is not None and expect_head[0] > 0:
                return VerifyResult(
                    False,
                    0,
                    1,
                    f"truncated: the log is empty but the remembered head is seq {expect_head[0]}",
                )
            return VerifyResult(True, 0, None, "empty log")
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
            return VerifyResult(False, 0, None, f"key mismatch: {why}")
        anchors: dict[int, str] = {}
        if check_anchors and be.table_exists(cur, "audit_anchor"):
            cur.execute("SELECT seq, hash FROM audit_anchor")
            anchors = {int(s): h for s, h in cur.fetchall()}
        if expect_head is not None:
            anchors[int(expect_head[0])] = expect_head[1]
        external = expect_head[0] if expect_head is not None else None

        rows = be.stream(conn, f"SELECT {', '.join(FIELDS)} FROM audit_log ORDER BY seq")
        result = _walk(rows, key, anchors, external)
        with contextlib.suppress(Exception):
            rows.close()
        return result


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


def _walk(
    rows: Iterator[tuple], key: bytes | None, anchors: dict[int, str], external: int | None
) -> VerifyResult:
    expected, prev_hash, count = 1, GENESIS_HASH, 0
    last_seq: int | None = None

    def bad(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, count, seq, reason, last_seq, prev_hash if last_seq else None)

    for raw in rows:
        rec = dict(zip(FIELDS, raw, strict=True))
        seq = int(rec["seq"])
        if seq != expected:
            return bad(
                expected,
                f"gap: expected seq {expected}, found seq {seq} (record(s) {expected}..{seq - 1} deleted)",
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
            origin = "the remembered head" if seq == external else "anchor"
            return bad(
                seq,
                f"head mismatch at seq {seq}: {origin} says hash {anchors[seq][:16]}..., the log has "
                f"{rec['hash'][:16]}...: the log was rewritten at or before seq {seq}",
            )
        prev_hash, last_seq, count, expected = rec["hash"], seq, count + 1, seq + 1

    missing = [s for s in anchors if s > (last_seq or 0)]
    if missing:
        top = max(missing)
        origin = "the remembered head" if top == external else "an anchor"
        return bad(
            (last_seq or 0) + 1,
            f"truncated: the log ends at seq {last_seq or 0} but {origin} is seq {top} "
            f"(records {(last_seq or 0) + 1}..{top} are missing)",
        )
    return VerifyResult(True, count, None, "ok", last_seq, prev_hash if last_seq else None)


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
