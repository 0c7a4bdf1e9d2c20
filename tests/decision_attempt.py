"""One Airflow task attempt of a promotion decision, as a process of its own.

A retry is a new process, like a new Airflow task attempt, and SIGKILL ends it like a lost worker, so
nothing carries over between attempts except what the bundle itself stored (MLflow, the decision ledger,
the audit store)::

    python -m tests.decision_attempt '{"action": "promote", "version": "2", "decision_key":
        "churn__train/r1/promote", "actor": "fault-test", "reason": "...", "download_dir": "/tmp/x"}'

Without an argument the process first imports MLflow and the bundle (seconds), then reads the arguments
as one JSON line from stdin: a pre-started attempt, like a warm worker, so a test can start the retry's
process while the attempt before it still runs and release it when it is due. It is still a process of
its own: nothing of an earlier attempt is in it.

Arguments (one JSON object): ``action`` "promote" (``promotion.gate`` of ``version``) or "rollback"
(``promotion.rollback`` to ``version``, null: to the ``previous`` alias); ``decision_key`` (null: no
intent, every attempt decides anew: the control); ``actor``; ``reason`` (of a rollback); ``download_dir``
(where the scorer downloads models); ``host_header`` (optional): the Host header sent to MLflow. The
server checks Host against its ``--allowed-hosts``; through a fault proxy the URL's port is the proxy's,
so the attempt names the server behind it, as a Host-preserving load balancer would.

Config comes from the environment (``MLOPS_*``; tests/integration/test_decision_faults.py also sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, so a request its fault proxy drops fails the attempt, as an outage
that outlasts MLflow's own retries would). Prints the decision (``Decision.to_dict()``) as one JSON
line on stdout (the last line) and exits 0; on any exception the traceback and, last, the error go to
stderr and it exits 1.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any


def _send_host(host: str) -> None:
    from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider
    from mlflow.tracking.request_header.registry import _request_header_provider_registry

    class _Host(RequestHeaderProvider):
        def in_context(self) -> bool:
            return True

        def request_headers(self) -> dict[str, str]:
            return {"Host": host}

    _request_header_provider_registry.register(_Host)


def preload() -> None:
    """The imports every attempt needs, before it is due (scikit-learn only when a promote scores)."""
    import mlflow  # noqa: F401
    import psycopg2  # noqa: F401

    import mlops_bundle.audit  # noqa: F401
    import mlops_bundle.promotion  # noqa: F401


def attempt(args: dict[str, Any]) -> dict[str, Any]:
    from mlops_bundle import promotion, tracking
    from mlops_bundle.config import load_config
    from tests.gate_models import make_scorer

    cfg = load_config()
    tracking.use(cfg)  # the scorer's load_model uses MLflow's global URI
    if args.get("host_header"):
        _send_host(args["host_header"])
    client = tracking.client(cfg)
    common = {"actor": args["actor"], "decision_key": args.get("decision_key")}
    if args["action"] == "promote":
        score = make_scorer(Path(args["download_dir"]))
        decision = promotion.gate(cfg, client, challenger_version=args["version"], score=score, **common)
    elif args["action"] == "rollback":
        decision = promotion.rollback(
            cfg, client, reason=args["reason"], to_version=args.get("version"), **common
        )
    else:
        raise ValueError(f"unknown action {args['action']!r}: promote or rollback")
    return decision.to_dict()


def main(argv: list[str]) -> int:
    try:
        if argv:
            args = json.loads(argv[0])
        else:
            preload()
            args = json.loads(sys.stdin.readline())
        out = attempt(args)
    except Exception as exc:
        traceback.print_exc()
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
