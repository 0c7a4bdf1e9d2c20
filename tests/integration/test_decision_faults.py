"""Fault injection in promote and rollback: a failed or killed attempt and its retry make ONE decision.

Real: the `mlflow server` subprocess (tests/conftest.py), PostgreSQL (the audit store, a throwaway
database), the attempt processes (tests/decision_attempt.py: one process per Airflow task attempt, so a
retry shares nothing with the attempt before it but what the bundle stored: MLflow, the decision ledger
beside the file promotion lock, the audit store) and SIGKILL. Emulated by tests/faultproxy.py, two TCP
proxies the attempts reach MLflow and PostgreSQL through: *when* something fails. A dropped request
stands for an outage that outlasts the clients' own retries (MLflow's HTTP retries are off in the
attempts, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``; ``AuditLog.append`` reconnects once by itself, so its
INSERT is dropped twice); ``kill_after_response`` is a worker lost right after its champion alias write
was committed on the server. The setup (versions "f3" and "f5", earlier promotions) runs in the test
process on direct URLs, without faults.

Each case: attempt 1 with the fault fails, attempt 2 (the retry: a new process, the same decision key,
no fault) succeeds, and the outcome is (champion, decision records, audit records, champion events),
counting only what the attempts wrote (actor "fault-test"; champion events = attempts that exited 0
with ``applied``). With the intent it must be what one decision gives: (decided version, 1, 1, 1). The
control runs the same attempts without a decision key (no intent: each attempt decides anew) and must
end otherwise; CONTROL says how it goes wrong (printed with -s).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mlops_bundle import promotion, tracking
from mlops_bundle.config import load_config
from mlops_bundle.tracking import alias_version
from tests.conftest import REPO
from tests.faultproxy import Fault, FaultProxy
from tests.gate_models import decisions_of, make_scorer, register
from tests.integration.conftest import dag

ACTOR = "fault-test"
REASON = "the champion misbehaves on live traffic"
AUDIT_INSERT = b"INSERT INTO audit_log"  # psycopg2 sends the statement with its values inlined
SET_TAG = b"POST /api/2.0/mlflow/model-versions/set-tag"  # the first one: gate.verdict, after the artifact
# the JSON body of POST /api/2.0/mlflow/registered-models/alias that moves champion ("previous" moves first)
CHAMPION_MOVE = b'"alias": "champion"'
FAULTS = {  # fault -> (proxy, pattern, action, times)
    "audit": ("pg", AUDIT_INSERT, "drop_request", 2),
    "mlflow": ("mlflow", SET_TAG, "drop_request", 1),
    "kill": ("mlflow", CHAMPION_MOVE, "kill_after_response", 1),
}
CASES = [pytest.param(a, f, id=f"{a}-{f}") for a in ("promote", "rollback") for f in FAULTS]
# without the intent: the outcome (versions by name) and how it went wrong
CONTROL = {
    ("promote", "audit"): (("f5", 2, 1, 0), "the retry finds f5 already champion and records a noop: "
                           "two records, and the one audit record is the noop, the promotion is unaudited"),
    ("promote", "mlflow"): (("f5", 2, 1, 0), "the retry records a noop: f5's tags say noop, "
                            "applied=false, and the promotion that moved the champion is unaudited"),
    ("promote", "kill"): (("f5", 1, 1, 0), "the champion moved, but the only record and audit record "
                          "are the retry's noop: the promotion is nowhere recorded"),
    ("rollback", "audit"): (("f3", 1, 0, 0), "the retry is refused (the champion was set by a "
                            "rollback): the rollback stands but is never audited"),
    ("rollback", "mlflow"): (("f5", 2, 1, 1), "f3 lacks the rollback tags, so the retry rolls 'back' "
                             "to previous = f5, the bad model the rollback removed"),
    ("rollback", "kill"): (("f5", 1, 1, 1), "f3 has no record of the rollback, so the retry rolls "
                           "'back' to previous = f5, the bad model the rollback removed"),
}  # fmt: skip


@dataclass
class Attempt:
    """One pre-started attempt process (tests/decision_attempt.py reads its arguments from stdin)."""

    proc: subprocess.Popen
    rc: int | None = None
    decision: dict | None = None
    error: str = ""

    def go(self, args: dict) -> Attempt:
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        return self

    def wait(self, timeout: float = 180) -> Attempt:
        out, err = self.proc.communicate(timeout=timeout)
        self.rc = self.proc.returncode
        if self.rc == 0:
            self.decision = json.loads(out.strip().splitlines()[-1])
        self.error = (err.strip().splitlines() or [""])[-1]
        return self

    def __str__(self) -> str:
        if self.decision is None:
            return f"exit {self.rc} ({self.error})"
        return f"exit 0 ({self.decision['verdict']}, applied={self.decision['applied']})"


@dataclass
class World:
    """One case: a fresh model name, proxies in front of MLflow and PostgreSQL, the attempts' env."""

    tmp: Path
    direct: dict
    attempt_env: dict
    proxies: dict[str, FaultProxy]
    audit_url: str
    host: str
    attempts: list[Attempt] = field(default_factory=list)
    v: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.cfg = load_config(environ=self.direct)
        self.client = tracking.client(self.cfg)

    def spawn(self) -> Attempt:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.decision_attempt"],
            cwd=REPO,
            env=self.attempt_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.attempts.append(Attempt(proc))
        return self.attempts[-1]

    def setup(self, action: str) -> None:
        """f3 champion (promote: f5 the challenger); rollback: then f5 champion, previous f3."""
        self.v = register(self.cfg, ["f3", "f5"])
        score = make_scorer(self.tmp)
        for name in ["f3", "f5"] if action == "rollback" else ["f3"]:
            promotion.gate(self.cfg, self.client, challenger_version=self.v[name], score=score, actor="setup")

    def args(self, action: str, key: str | None) -> dict:
        """tests/decision_attempt.py's arguments: promote f5, or roll back to the previous alias."""
        version = self.v["f5"] if action == "promote" else None
        return dict(action=action, version=version, decision_key=key, actor=ACTOR, reason=REASON,
                    download_dir=str(self.tmp), host_header=self.host)  # fmt: skip

    def arm(self, fault: str, pid: int) -> Fault:
        proxy, pattern, action, times = FAULTS[fault]
        settle = {"settle_s": 0.0} if action == "kill_after_response" else {}  # right after the reply
        return self.proxies[proxy].add_fault(pattern, action, times=times, pid=pid, **settle)

    def outcome(self, attempts: list[Attempt]) -> tuple[tuple, list[dict], list[dict]]:
        import psycopg2

        records = [
            r
            for v in self.v.values()
            for r in decisions_of(self.client, self.cfg, v, self.tmp)
            if r["actor"] == ACTOR
        ]
        with contextlib.closing(psycopg2.connect(self.audit_url)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT payload FROM audit_log WHERE actor = %s AND event LIKE 'decision.%%' ORDER BY seq",
                (ACTOR,),
            )
            audits = [json.loads(row[0]) for row in cur.fetchall()]
        champion = alias_version(self.client, self.cfg.model_name, promotion.CHAMPION_ALIAS)
        events = sum(1 for a in attempts if a.rc == 0 and a.decision["applied"])
        return (champion, len(records), len(audits), events), records, audits

    def name(self, version: str | None) -> str | None:
        return {v: k for k, v in self.v.items()}.get(version, version)


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host).geturl()


@pytest.fixture
def world(mlflow_server, pg_database, tmp_path):
    pg = urlsplit(pg_database)
    with (
        FaultProxy("127.0.0.1", urlsplit(mlflow_server).port) as mlflow_proxy,
        FaultProxy(pg.hostname, pg.port or 5432) as pg_proxy,
    ):
        base = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        direct = base | {
            "MLOPS_MLFLOW__TRACKING_URI": mlflow_server,
            "MLOPS_MLFLOW__REGISTERED_MODEL": f"faults-{uuid.uuid4().hex[:12]}",
            "MLOPS_PROMOTION__LOCK_URI": (tmp_path / "promotion-state").as_uri(),
            "MLOPS_AUDIT__STORE_URI": pg_database,
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        attempt_env = direct | {
            "MLOPS_MLFLOW__TRACKING_URI": mlflow_proxy.url,
            # plain text on the wire (the proxy matches SQL), through the proxy
            "MLOPS_AUDIT__STORE_URI": _via(pg_database, pg_proxy.port) + "?sslmode=disable",
            # no client-side retries: one dropped request is a failed attempt (an outage that outlasts them)
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        proxies = {"mlflow": mlflow_proxy, "pg": pg_proxy}
        # the server's --allowed-hosts names its own address: through the proxy the attempts send that Host
        w = World(tmp_path, direct, attempt_env, proxies, pg_database, urlsplit(mlflow_server).netloc)
        try:
            yield w
        finally:
            for a in w.attempts:
                if a.proc.poll() is None:
                    a.proc.kill()
                    a.proc.communicate()


def _run(world: World, action: str, fault: str, key: str | None, retries: int = 1) -> list[Attempt]:
    """Attempt 1 with the fault, then the retries without; every process is started before the setup."""
    attempts = [world.spawn() for _ in range(1 + retries)]
    world.setup(action)
    armed = world.arm(fault, attempts[0].proc.pid)
    first = attempts[0].go(world.args(action, key)).wait()
    assert armed.fired == armed.times, f"the {fault} fault did not fire ({first})"
    assert first.rc == (-9 if fault == "kill" else 1), f"attempt 1 should have failed: {first}"
    for proxy in world.proxies.values():
        proxy.clear_faults()
    for retry in attempts[1:]:
        retry.go(world.args(action, key)).wait()
    return attempts


def _decided(world: World, action: str) -> tuple[str, str]:
    """(champion, previous) after the one decision: promote f5 over f3, or roll f5 back to f3."""
    return (world.v["f5"], world.v["f3"]) if action == "promote" else (world.v["f3"], world.v["f5"])


def _key(action: str) -> str:
    """A fresh decision key like the Airflow side's dag_id/run_id/task_id."""
    run = f"manual__{uuid.uuid4().hex}"
    return f"{dag('train')}/{run}/promote" if action == "promote" else f"{dag('rollback')}/{run}/roll_back"


def _assert_one_decision(world: World, action: str, key: str, attempts: list[Attempt]) -> None:
    got, records, audits = world.outcome(attempts)
    champion, previous = _decided(world, action)
    assert got == (champion, 1, 1, 1), [str(a) for a in attempts]
    assert alias_version(world.client, world.cfg.model_name, promotion.PREVIOUS_ALIAS) == previous
    did = promotion.decision_id(world.cfg.model_name, key)
    assert records[0]["decision_id"] == did and audits[0]["decision_id"] == did
    verdict = promotion.PROMOTE if action == "promote" else promotion.ROLLBACK
    assert records[0]["verdict"] == audits[0]["verdict"] == verdict and records[0]["applied"]


@pytest.mark.parametrize(("action", "fault"), CASES)
def test_a_retried_decision_is_made_once(world, action, fault):
    key = _key(action)
    attempts = _run(world, action, fault, key)
    assert attempts[1].rc == 0, f"the retry failed: {attempts[1]}"
    assert attempts[1].decision["decision_id"] == promotion.decision_id(world.cfg.model_name, key)
    _assert_one_decision(world, action, key, attempts)


@pytest.mark.parametrize(("action", "fault"), CASES)
def test_control_without_intent_goes_wrong(world, action, fault):
    attempts = _run(world, action, fault, None)
    got, _, _ = world.outcome(attempts)
    named = (world.name(got[0]), *got[1:])
    expected, how = CONTROL[(action, fault)]
    print(f"\ncontrol {action}-{fault}: retry {attempts[1]} -> {named}: {how}")
    assert got != (_decided(world, action)[0], 1, 1, 1)
    assert named == expected, f"{how}; got {named}, retry {attempts[1]}"


def test_rollback_retried_after_its_alias_move_never_reverses_itself(world):
    key = _key("rollback")
    attempts = _run(world, "rollback", "kill", key, retries=2)
    assert [a.rc for a in attempts[1:]] == [0, 0], [str(a) for a in attempts]
    assert attempts[1].decision == attempts[2].decision  # the same stored decision, completed twice
    name = world.cfg.model_name
    assert alias_version(world.client, name, promotion.CHAMPION_ALIAS) == world.v["f3"]
    assert alias_version(world.client, name, promotion.PREVIOUS_ALIAS) == world.v["f5"]
    got, _, _ = world.outcome(attempts)
    assert got[1:3] == (1, 1)  # one record, one audit record


def test_two_concurrent_rollbacks_leave_one_champion(world):
    """Two rollback runs of the one bad champion released at once: the promotion lock serializes them;
    the second sees a champion set by a rollback and refuses to restore the version it removed."""
    attempts = [world.spawn(), world.spawn()]
    world.setup("rollback")
    for attempt in attempts:
        attempt.go(world.args("rollback", _key("rollback")))
    done = sorted((a.wait() for a in attempts), key=lambda a: a.rc)
    assert [a.rc for a in done] == [0, 1], [str(a) for a in done]
    assert done[0].decision["applied"] and "was set by rollback" in done[1].error, done[1].error
    name = world.cfg.model_name
    assert alias_version(world.client, name, promotion.CHAMPION_ALIAS) == world.v["f3"]
    assert alias_version(world.client, name, promotion.PREVIOUS_ALIAS) == world.v["f5"]
