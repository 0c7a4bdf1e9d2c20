"""``python -m mlops_bundle.audit``: verify, export, head and anchor from a shell.

Defaults from ``load_config().audit_uri``; the HMAC key from ``$MLOPS_AUDIT_HMAC_KEY``::

    python -m mlops_bundle.audit verify [--uri URI] [--expect-head SEQ:HASH]   # exit 1 + first broken link
    python -m mlops_bundle.audit export --out audit.jsonl [--since-seq N]
    python -m mlops_bundle.audit head
    python -m mlops_bundle.audit anchor

Exit codes: 0 ok, 1 the chain is broken (the first broken link is printed), 2 the store or an argument
cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys

from mlops_bundle.audit.chain import HMAC_ENV, anchor, as_key, head
from mlops_bundle.audit.store import AuditError
from mlops_bundle.audit.verification import export_jsonl, parse_head, verify


def _default_uri() -> str:
    from mlops_bundle.config import load_config

    return load_config().audit_uri


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_bundle.audit",
        description="Tamper-evident audit trail: one append-only, hash-chained log in a shared SQL store.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_verify = sub.add_parser("verify", help="verify the chain; exit 1 naming the first broken link")
    p_verify.add_argument("--expect-head", help="a previously seen head SEQ:HASH (detects truncation)")
    p_verify.add_argument("--no-anchors", action="store_true", help="ignore anchors stored in the log's DB")
    p_export = sub.add_parser("export", help="write the log as JSON lines")
    p_export.add_argument("--out", required=True, help="output file, or - for stdout")
    p_export.add_argument("--since-seq", type=int, default=0)
    sub.add_parser("head", help="print the newest record as SEQ:HASH (remember it outside the store)")
    sub.add_parser("anchor", help="store the current head as an anchor inside the store")
    for p in sub.choices.values():
        p.add_argument("--uri", help="audit store URI (default: audit.store_uri of the config)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        uri = args.uri or _default_uri()
        key = as_key(os.environ.get(HMAC_ENV))
        if args.command == "verify":
            expect = parse_head(args.expect_head) if args.expect_head else None
            res = verify(uri, key, expect_head=expect, check_anchors=not args.no_anchors)
            if res.ok:
                tail = f"head {res.head_seq}:{res.head_hash}" if res.head_seq else "empty"
                print(f"OK: {res.records} record(s), chain intact ({'HMAC' if key else 'sha256'}); {tail}")
                return 0
            where = f"first broken link at seq {res.first_bad_seq}" if res.first_bad_seq else "not verifiable"
            print(f"BROKEN: {where}: {res.reason} ({res.records} intact record(s) before it)")
            return 1
        if args.command == "export":
            if args.out == "-":
                n = export_jsonl(uri, sys.stdout, args.since_seq)
            else:
                n = export_jsonl(uri, args.out, args.since_seq)
                print(f"exported {n} record(s) to {args.out}", file=sys.stderr)
            return 0
        h = head(uri) if args.command == "head" else anchor(uri)
        print("empty" if h is None else f"{h[0]}:{h[1]}")
        return 0
    except (AuditError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
