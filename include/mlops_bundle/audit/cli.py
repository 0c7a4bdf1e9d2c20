"""``python -m mlops_bundle.audit``: verify, export, head and anchor from a shell.

Defaults from the config (``audit_uri``, ``audit.anchor_uri``); the HMAC key from ``$MLOPS_AUDIT_HMAC_KEY``;
the anchor bucket through boto3's default credential chain (``AWS_*`` env vars, ``AWS_ENDPOINT_URL_S3``
for MinIO)::

    python -m mlops_bundle.audit verify [--uri URI] [--expect-head SEQ:HASH] [--anchor-uri s3://b/p/]
    python -m mlops_bundle.audit export --out audit.jsonl [--since-seq N]
    python -m mlops_bundle.audit head
    python -m mlops_bundle.audit anchor [--anchor-uri s3://b/p/]   # verify, then anchor the verified head

Exit codes: 0 ok, 1 the chain is broken (the first broken link is printed), 2 the store or an argument
cannot be used.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from mlops_bundle.audit.anchors import AnchorError, S3Anchors
from mlops_bundle.audit.chain import HMAC_ENV, anchor, as_key, head
from mlops_bundle.audit.store import AuditError
from mlops_bundle.audit.verification import VerifyResult, export_jsonl, parse_head, verify

if TYPE_CHECKING:
    from mlops_bundle.config import BundleConfig


def _config() -> BundleConfig:
    # one audit chain per deployment: every data set's config names it (mlops_bundle.catalog)
    from mlops_bundle.catalog import deployment_config

    return deployment_config()


def _bucket(args: argparse.Namespace) -> S3Anchors | None:
    """The anchor bucket of ``--anchor-uri`` (else audit.anchor_uri); None when neither is set."""
    cfg = _config()
    uri = args.anchor_uri if args.anchor_uri is not None else cfg.audit.anchor_uri
    if not uri:
        return None
    import boto3

    return S3Anchors(
        boto3.client("s3"),
        uri,
        retention_days=cfg.audit.anchor_retention_days,
        mode=cfg.audit.anchor_retention_mode,
    )


def _report(res: VerifyResult, key: bytes | None) -> int:
    for warning in res.warnings:
        print(f"WARNING: {warning}")
    if res.ok:
        tail = f"head {res.head_seq}:{res.head_hash}" if res.head_seq else "empty"
        print(f"OK: {res.records} record(s), chain intact ({'HMAC' if key else 'sha256'}); {tail}")
        return 0
    where = f"first broken link at seq {res.first_bad_seq}" if res.first_bad_seq else "not verifiable"
    print(f"BROKEN: {where}: {res.reason} ({res.records} intact record(s) before it)")
    return 1


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
    sub.add_parser("anchor", help="verify, then anchor the verified head (audit_anchor + the bucket)")
    for p in sub.choices.values():
        p.add_argument("--uri", help="audit store URI (default: audit.store_uri of the config)")
    for name in ("verify", "anchor"):
        sub.choices[name].add_argument(
            "--anchor-uri",
            help="s3://bucket/prefix/ of the Object Lock anchor bucket (default: audit.anchor_uri)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        uri = args.uri or _config().audit_uri
        key = as_key(os.environ.get(HMAC_ENV))
        if args.command == "verify":
            expect = parse_head(args.expect_head) if args.expect_head else None
            res = verify(
                uri, key, expect_head=expect, check_anchors=not args.no_anchors, bucket=_bucket(args)
            )
            return _report(res, key)
        if args.command == "export":
            if args.out == "-":
                n = export_jsonl(uri, sys.stdout, args.since_seq)
            else:
                n = export_jsonl(uri, args.out, args.since_seq)
                print(f"exported {n} record(s) to {args.out}", file=sys.stderr)
            return 0
        if args.command == "head":
            h = head(uri)
            print("empty" if h is None else f"{h[0]}:{h[1]}")
            return 0
        bucket = _bucket(args)
        res = verify(uri, key, bucket=bucket)
        if not res.ok:
            return _report(res, key)
        if res.head_seq is None:
            print("empty")
            return 0
        anchor(uri, (res.head_seq, res.head_hash), records=res.records, bucket=bucket)
        print(f"{res.head_seq}:{res.head_hash}")
        return 0
    except (AuditError, AnchorError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
