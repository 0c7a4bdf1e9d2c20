"""Run the bundle through real Airflow processes on this machine (the README's `make demo` / `make up`).

  python scripts/demo.py demo   set up, start Airflow, ingest a good and a corrupt sample batch through the
                                REST API, follow every run they cause, print a summary, stop Airflow
  python scripts/demo.py up     set up, start Airflow, unpause the DAGs, keep running until Ctrl-C

Setup is idempotent: the metadata DB is migrated only when Airflow changed, the sample landing batches
are written only if missing. Airflow (api-server, scheduler, dag-processor, triggerer) runs from
.airflow/ with LocalExecutor on SQLite; each process logs to .airflow/logs/<name>.log and is stopped on
exit, Ctrl-C or SIGTERM.

Stdlib only (plus the bundle's own sample-data helpers), so it runs before anything else is set up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airflow_local as al  # noqa: E402

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
MLFLOW_PORT = int(os.environ.get("DEMO_MLFLOW_PORT") or 5000)
TRAIN_DAG = "train"
GOOD_DATE = "2026-01-05"
CORRUPT_DATE = "2026-01-06"
CORRUPTION = "unknown_category"
SAMPLE_ROWS = 5000
INGEST_DAG = "ingest"
GATE_TASK = "validate_and_stage"
DRIFT_DATE = "2026-01-07"
MONITOR_DAG = "monitor"
# What the demo does, in order; each phase waits until its runs and the runs they trigger have finished.
PHASES = (
    (
        "day 1: a good and a corrupt batch arrive (the good one trains the first champion)",
        ((INGEST_DAG, GOOD_DATE), (INGEST_DAG, CORRUPT_DATE)),
    ),
    (
        "day 3: a batch with drifted customers arrives (validated, so it retrains; the gate judges)",
        ((INGEST_DAG, DRIFT_DATE),),
    ),
    (
        "monitoring day 3 against the champion's reference: drift report, guarded retrain trigger",
        ((MONITOR_DAG, DRIFT_DATE),),
    ),
)
TERMINAL = {"success", "failed"}
TI_DONE = {"success", "failed", "skipped", "upstream_failed", "removed"}


def say(msg: str = "") -> None:
    print(msg, flush=True)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


class DemoError(Exception):
    """A setup/runtime problem the user has to act on; the message says what to do."""


# --------------------------------------------------------------------------------------------- setup


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        if s.connect_ex((al.HOST, port)) == 0:
            raise DemoError(
                f"port {port} is already in use (another Airflow or web server?). Stop it, or run on "
                f"another port: DEMO_PORT=8081 make demo"
            )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like uvicorn: TIME_WAIT is fine
        try:
            s.bind((al.HOST, port))
        except OSError as exc:
            raise DemoError(f"cannot bind {al.HOST}:{port}: {exc}; set DEMO_PORT to a free port") from None


def pid_file() -> Path:
    return al.AIRFLOW_HOME / "demo.pids.json"


def check_leftovers() -> None:
    """Refuse to start beside Airflow processes of an earlier run that was killed hard (kill -9)."""
    path = pid_file()
    if not path.is_file():
        return
    alive = []
    for name, pid in json.loads(path.read_text()).items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "airflow" in cmdline:
            alive.append((name, pid))
    if alive:
        listing = ", ".join(f"{n} (pid {p})" for n, p in alive)
        groups = " ".join(f"-{p}" for _, p in alive)
        raise DemoError(
            f"Airflow processes started by scripts/demo.py for {al.AIRFLOW_HOME} are still running: "
            f"{listing} (another `make up`/`make demo`, or a run that was killed hard). "
            f"Stop that one, or: kill -TERM -- {groups}"
        )
    path.unlink()


def migrate_db(env: dict[str, str]) -> None:
    """`airflow db migrate`, skipped when this Airflow version already migrated this DB."""
    db = al.AIRFLOW_HOME / "airflow.db"
    marker = al.AIRFLOW_HOME / ".db_migrated"
    version = metadata.version("apache-airflow")
    if db.is_file() and marker.is_file() and marker.read_text().strip() == version:
        say(f"metadata DB     {db} (up to date, Airflow {version})")
        return
    t0 = time.monotonic()
    proc = subprocess.run(
        al.airflow_cmd("db", "migrate"), env=env, capture_output=True, text=True, cwd=al.PROJECT_ROOT
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise DemoError(f"`airflow db migrate` failed (exit {proc.returncode}):\n{tail}")
    marker.write_text(version + "\n")
    say(f"metadata DB     {db} (migrated in {time.monotonic() - t0:.1f}s)")


def lake_root() -> tuple[Any, Path | None]:
    """The bundle config and the local path of its storage root (None for s3:// roots)."""
    try:
        from mlops_bundle.config import load_config
    except ImportError:  # not pip-installed yet: use the checkout
        sys.path.insert(0, str(al.PROJECT_ROOT / "include"))
        from mlops_bundle.config import load_config
    cfg = load_config()
    uri = cfg.root_uri
    if not uri.startswith("file://"):
        return cfg, None
    return cfg, Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def seed_landing() -> None:
    """Write the demo's sample batches into landing/ unless they are already there."""
    cfg, root = lake_root()
    if root is None:
        say(
            f"sample data     skipped: storage root is {cfg.root_uri}; upload batches to its landing/ yourself"
        )
        return
    if cfg.dataset.name != "churn":
        say(
            f"sample data     skipped: the sample generator makes 'churn' data, config is {cfg.dataset.name!r}"
        )
        return
    from mlops_bundle.sample import generate_batch, write_landing

    # Unpausing the daily ingest DAG makes the scheduler run it once for its latest interval, which
    # ingests the day before: seed that batch too (either of the last two days, depending on the hour).
    today = now_utc().date()
    scheduled = [(str(today - dt.timedelta(days=n)), None) for n in (1, 2)]
    for day, corrupt in ((GOOD_DATE, None), (CORRUPT_DATE, CORRUPTION), (DRIFT_DATE, "drift"), *scheduled):
        folder = root / cfg.storage.landing_prefix / cfg.dataset.name / day
        label = {None: "good", "drift": "good, drifted customers"}.get(corrupt, f"corrupt: {corrupt}")
        if folder.is_dir() and any(folder.iterdir()):
            say(f"sample data     {folder} (already there, {label})")
            continue
        if corrupt == "drift":
            df = generate_batch(day, rows=SAMPLE_ROWS, drift=1.0)
        else:
            df = generate_batch(day, rows=SAMPLE_ROWS, corrupt=corrupt)
        path = write_landing(df, folder, fmt="csv")
        say(f"sample data     {path} ({len(df)} rows, {label})")


# ------------------------------------------------------------------------------------------ processes


class Processes:
    """The Airflow components as subprocesses, each in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], extra: dict[str, list[str]] | None = None) -> None:
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()  # stopped on purpose by kill(): check_alive does not complain
        self.log_dir = al.AIRFLOW_HOME / "logs"
        # name -> argv; extra services (the MLflow server) start first
        self.commands = {**(extra or {}), **{name: al.airflow_cmd(name) for name in COMPONENTS}}

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _spawn(self, name: str) -> subprocess.Popen:
        fh = open(self.log(name), "ab")  # noqa: SIM115 (owned by the child)
        fh.write(f"\n===== {now_utc().isoformat()} {name} (scripts/demo.py) =====\n".encode())
        fh.flush()
        self.procs[name] = subprocess.Popen(
            self.commands[name],
            env=self.env,
            cwd=al.PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop them in order
        )
        fh.close()
        return self.procs[name]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in self.commands:
            self._spawn(name)
        pid_file().write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        say(f"started         {', '.join(f'{n} (pid {p.pid})' for n, p in self.procs.items())}")
        say(f"process logs    {self.log_dir}/<component>.log")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.killed and proc.poll() is not None:
                raise DemoError(
                    f"{name} exited with code {proc.returncode}; last lines of {self.log(name)}:\n"
                    + tail_file(self.log(name))
                )

    def _descendants(self, roots: list[int] | None = None) -> set[int]:
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
            except (OSError, IndexError, ValueError):
                continue
        out: set[int] = set()
        todo = list(roots) if roots is not None else [p.pid for p in self.procs.values()]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return out

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> list[int]:
        """Send `sig` to one component's process group and to every process below it (task processes run
        in their own groups), wait until the component exited, and let check_alive ignore it until
        restart(name). For fault tests: SIGKILL is a crashed host/container. Returns the pids signalled."""
        proc = self.procs[name]
        if proc.poll() is not None:
            raise DemoError(f"{name} (pid {proc.pid}) is not running (exit code {proc.returncode})")
        self.killed.add(name)
        descendants = self._descendants([proc.pid])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DemoError(f"{name} (pid {proc.pid}) still runs {timeout:.0f}s after signal {sig}") from None
        say(f"killed          {name} (pid {proc.pid}, signal {sig}, {len(descendants)} descendant(s))")
        return [proc.pid, *sorted(descendants)]

    def restart(self, name: str) -> subprocess.Popen:
        """Start a component again with its original command (after kill(name) or after it exited)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise DemoError(f"{name} (pid {old.pid}) is still running: kill it first")
        proc = self._spawn(name)
        self.killed.discard(name)
        with contextlib.suppress(OSError, ValueError):  # keep the pids another Processes wrote there
            pids = json.loads(pid_file().read_text()) if pid_file().is_file() else {}
            pid_file().write_text(json.dumps({**pids, name: proc.pid}))
        say(f"restarted       {name} (pid {proc.pid})")
        return proc

    def stop(self, timeout: float = 30.0) -> None:
        running = {n: p for n, p in self.procs.items() if p.poll() is None}
        if not self.procs:
            return
        say(f"stopping        {', '.join(running) or 'nothing left running'}")
        try:
            descendants = self._descendants()  # task processes run in their own groups
        except OSError:
            descendants = set()
        for proc in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"                {name} ignored SIGTERM for {timeout:.0f}s: killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the component's group
        for pid in descendants:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            pid_file().unlink()
        self.procs.clear()
        say("stopped         all processes")


def tail_file(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------ API


class Api:
    """Minimal Airflow REST client (urllib; proxies bypassed since the server is on loopback)."""

    def __init__(self, base: str, username: str, password: str) -> None:
        self.base = base.rstrip("/")
        self.username, self.password = username, password
        self.token: str | None = None
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict | None = None,
        auth: bool = True,
        timeout: float = 30,
    ) -> Any:
        url = self.base + path
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        with self.opener.open(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        if self.token is None:
            self.login()
        try:
            return self._call(method, path, body, **kw)
        except urllib.error.HTTPError as exc:
            if exc.code != 401:
                raise
            self.login()  # expired token
            return self._call(method, path, body, **kw)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def login(self) -> None:
        resp = self._call(
            "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
        )
        self.token = resp["access_token"]

    def ready(self) -> bool:
        try:
            self._call("GET", "/api/v2/monitor/health", auth=False, timeout=3)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False


def http_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return f"HTTP {exc.code}: {body.get('detail', body)}"
    except (ValueError, AttributeError):
        return f"HTTP {exc.code}"


def wait_for(what: str, check, timeout: float, procs: Processes, every: float = 5.0) -> Any:
    """Poll check() until truthy; print a progress line every few seconds."""
    t0 = time.monotonic()
    last = t0
    while True:
        procs.check_alive()
        result = check()
        if result:
            return result
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise DemoError(f"gave up waiting for {what} after {timeout:.0f}s; see {procs.log_dir}/*.log")
        if time.monotonic() - last >= every:
            say(f"waiting for {what}... {elapsed:.0f}s")
            last = time.monotonic()
        time.sleep(1)


def candidate_dag_files(folder: Path) -> set[str]:
    """Files in the DAG folder Airflow will parse (its default heuristic: mentions 'airflow' and 'dag')."""
    out = set()
    for path in folder.rglob("*.py"):
        if any(part.startswith((".", "__")) for part in path.relative_to(folder).parts):
            continue
        text = path.read_text(errors="replace").lower()
        if "airflow" in text and "dag" in text:
            out.add(str(path.resolve()))
    return out


def wait_for_dags(api: Api, procs: Processes, need: set[str], timeout: float = 180) -> list[dict]:
    """Wait until every DAG file was parsed (a DAG or an import error for it) and `need` DAGs exist."""
    folder = Path(procs.env["AIRFLOW__CORE__DAGS_FOLDER"])
    files = candidate_dag_files(folder)
    state: dict[str, Any] = {}

    def check():
        dags = api.get("/api/v2/dags", limit=100)["dags"]
        errors = api.get("/api/v2/importErrors", limit=100)["import_errors"]
        seen = {str(Path(d["fileloc"]).resolve()) for d in dags}
        seen |= {str((folder / e["filename"]).resolve()) for e in errors}
        seen |= {str(Path(e["filename"]).resolve()) for e in errors}
        names = {d["dag_id"] for d in dags}
        if names != state.get("names"):
            state.update(names=names, changed_at=time.monotonic())
        state.update(dags=dags, errors=errors, missing=files - seen)
        stable_for = time.monotonic() - state["changed_at"]
        if need <= names:
            # files that hold no DAG (helpers) leave no trace: accept once the DAG list stops changing
            return not state["missing"] or stable_for > 15
        if not state["missing"] or stable_for > 30:
            # every file parsed (or nothing changes any more) but a needed DAG is absent: say so
            state.setdefault("parsed_at", time.monotonic())
            if time.monotonic() - state["parsed_at"] > 20:
                raise DemoError(
                    f"DAG(s) {sorted(need - names)} not found in {folder}; found {sorted(names) or 'no DAGs'}"
                    + (" (see the import errors above)" if errors else "")
                )
        return False

    try:
        wait_for(f"DAGs to be parsed from {folder}", check, timeout, procs)
    finally:
        for err in state.get("errors", []):
            say(
                f"IMPORT ERROR in {err['filename']}:\n"
                + "\n".join("    " + line for line in err["stack_trace"].strip().splitlines()[-12:])
            )
    return state["dags"]


def unpause_all(api: Api, dags: list[dict]) -> None:
    for dag in dags:
        if dag["is_paused"]:
            api.call("PATCH", f"/api/v2/dags/{q(dag['dag_id'])}", {"is_paused": False})
    say(f"unpaused        {', '.join(sorted(d['dag_id'] for d in dags)) or '(no DAGs)'}")


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# ------------------------------------------------------------------------------------------- follow


def run_key(run: dict) -> tuple[str, str]:
    return run["dag_id"], run["dag_run_id"]


def task_instances(api: Api, dag_id: str, run_id: str) -> list[dict]:
    return api.get(f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances", limit=100)["task_instances"]


def follow(
    api: Api, procs: Processes, since: dt.datetime, mine: set[tuple[str, str]], timeout: float, settle: float
) -> dict[tuple[str, str], dict]:
    """Poll the runs we started and every run created since `since` (e.g. Asset-triggered ones) until
    all are finished and nothing new appeared for `settle` seconds."""
    runs: dict[tuple[str, str], dict] = {}
    shown: dict[tuple[str, str], str] = {}
    t0 = time.monotonic()
    quiet_since: float | None = None
    # updated_at covers runs created since (any run type); queued_at/run_after then drops older runs
    # that merely changed state meanwhile
    params = {"updated_at_gte": since.isoformat(), "limit": 100, "order_by": "id"}
    while True:
        procs.check_alive()
        for run in api.get("/api/v2/dags/~/dagRuns", **params)["dag_runs"]:
            created = parse_ts(run.get("queued_at") or run.get("run_after"))
            if run_key(run) in mine or (created and created >= since):
                runs[run_key(run)] = run
        for key in mine - runs.keys():  # cannot happen unless the filter misses them; fetch directly
            runs[key] = api.get(f"/api/v2/dags/{q(key[0])}/dagRuns/{q(key[1])}")
        active = False
        for key, run in runs.items():
            state = run["state"]
            tis = task_instances(api, *key)
            done = sum(1 for t in tis if t["state"] in TI_DONE)
            line = f"{state}: {done}/{len(tis)} tasks done" if tis else state
            running = [
                t["task_id"] for t in tis if t["state"] in ("running", "queued", "scheduled", "deferred")
            ]
            if state not in TERMINAL and running:
                line += f" (now: {', '.join(running)})"
            if shown.get(key) != line:
                tag = "" if key in mine else f" <- {run['run_type']}"
                say(f"[{key[0]} {key[1]}] {line}{tag}")
                shown[key] = line
            active |= state not in TERMINAL
        if active:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
            say(f"all {len(runs)} run(s) finished; watching {settle:.0f}s for runs they trigger...")
        elif time.monotonic() - quiet_since >= settle:
            return runs
        if time.monotonic() - t0 > timeout:
            still = [
                f"{d} {r} ({run['state']})" for (d, r), run in runs.items() if run["state"] not in TERMINAL
            ]
            raise DemoError(
                f"timed out after {timeout:.0f}s; still not finished: {', '.join(still) or 'none'}. "
                f"Airflow logs: {procs.log_dir} (task logs under dag_id=*/); UI: {al.ui_url()}"
            )
        time.sleep(2)


# ------------------------------------------------------------------------------------------ summary


def xcom_return(
    api: Api, dag_id: str, run_id: str, task_id: str, map_index: int = -1, key: str = "return_value"
) -> Any:
    try:
        entry = api.get(
            f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/xcomEntries/{q(key)}",
            map_index=map_index,
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    value = entry.get("value")
    if isinstance(value, str):  # stored JSON text in some versions/backends
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    return value


def task_log_tail(api: Api, dag_id: str, run_id: str, ti: dict, lines: int = 15) -> list[str]:
    try:
        resp = api.get(
            f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(ti['task_id'])}"
            f"/logs/{ti['try_number']}",
            full_content="true",
            map_index=ti.get("map_index", -1),
        )
    except urllib.error.HTTPError as exc:
        return [f"(log not available: {http_detail(exc)})"]
    out: list[str] = []
    errors: list[str] = []
    sources: list[str] = []
    for item in resp.get("content", []):
        if isinstance(item, str):
            out.append(item)
            continue
        event = str(item.get("event", ""))
        level = str(item.get("level", "")).upper()
        sources += [str(x) for x in item.get("sources") or []]
        if event.startswith(("::group::", "::endgroup::")) or event == "Log message source details":
            continue
        out.append(f"{level + ' ' if level else ''}{event}")
        for err in item.get("error_detail") or []:
            if isinstance(err, dict):
                errors.append(f"{err.get('exc_type', 'Error')}: {err.get('exc_value', '')}")
    picked = [line for line in out if line.strip()][-lines:]
    return [f"(log file: {x})" for x in sources] + picked + ([f"=> {errors[-1]}"] if errors else [])


def fmt_duration(run: dict) -> str:
    if run.get("duration") is not None:
        return f"{run['duration']:.1f}s"
    start, end = parse_ts(run.get("start_date")), parse_ts(run.get("end_date"))
    return f"{(end - start).total_seconds():.1f}s" if start and end else "-"


def result_task(api: Api, run: dict, tis: list[dict]) -> tuple[str | None, Any]:
    """The run's headline result: validate_and_stage for ingest, else the last task that returned one."""
    dag_id, run_id = run_key(run)
    if dag_id == INGEST_DAG:
        return GATE_TASK, xcom_return(api, dag_id, run_id, GATE_TASK)
    done = [t for t in tis if t["state"] == "success" and t.get("end_date")]
    for ti in sorted(done, key=lambda t: t["end_date"], reverse=True):
        value = xcom_return(api, dag_id, run_id, ti["task_id"], ti.get("map_index", -1))
        if value is not None:
            return ti["task_id"], value
    return None, None


def expected_state(run: dict, mine: set[tuple[str, str]]) -> str | None:
    """What the demo expects of a run; None = not judged (e.g. the scheduled run Airflow creates for
    the latest interval when a DAG is unpaused)."""
    if run_key(run) not in mine and run["run_type"] not in ("asset_triggered", "asset_materialization"):
        return None
    if run["dag_id"] == INGEST_DAG and (run.get("conf") or {}).get("date") == CORRUPT_DATE:
        return "failed"
    return "success"


def print_value(value: Any, indent: str = "    ") -> None:
    if isinstance(value, dict):
        width = max((len(str(k)) for k in value), default=0)
        for k, v in value.items():
            say(f"{indent}{str(k):<{width}}  {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    else:
        say(f"{indent}{value}")


def summarize_train(api: Api, dag_id: str, run_id: str) -> None:
    """MLflow run, registered version, the gate's decision and how to load the champion."""
    reg = xcom_return(api, dag_id, run_id, "register_best")
    decision = xcom_return(api, dag_id, run_id, "promote", key="decision")
    cfg, _ = lake_root()
    mlflow_url = os.environ.get("DEMO_MLFLOW_URL") or f"http://localhost:{MLFLOW_PORT}"
    if isinstance(reg, dict):
        metrics = reg.get("metrics") or {}
        score = metrics.get(cfg.training.metric)
        say(
            f"  best candidate: {reg.get('candidate')} ({cfg.training.metric}="
            f"{score:.4f}) MLflow run {reg.get('run_id')}"
            if isinstance(score, float)
            else f"  best candidate: {reg.get('candidate')} MLflow run {reg.get('run_id')}"
        )
        reused = " (reused: same data and params as an earlier run)" if reg.get("reused") else ""
        say(f"  registered    : {cfg.model_name} version {reg.get('version')}{reused}")
        say(f"  MLflow UI     : {mlflow_url}/#/models/{cfg.model_name}/versions/{reg.get('version')}")
    if isinstance(decision, dict):
        say(f"  gate decision : {decision.get('verdict')} - {decision.get('reason')}")
        if decision.get("applied"):
            say(
                f"  champion      : version {decision['challenger']['version']} (previous: "
                f"{decision.get('previous_champion') or 'none'})"
            )
    say(
        f"  load it       : mlflow.sklearn.load_model('models:/{cfg.model_name}@champion')"
        f"  (MLFLOW_TRACKING_URI={mlflow_url})"
    )


def summarize_monitor(api: Api, dag_id: str, run_id: str, tis: list[dict]) -> None:
    """Drift verdict, report locations (file and Airflow link) and what the retrain guard decided."""
    states = {t["task_id"]: t["state"] for t in tis}
    for task in ("score_batch", "decide_retrain"):
        if states.get(task) == "skipped":
            reason = xcom_return(api, dag_id, run_id, task, key="skip_reason")
            if task == "score_batch":
                say(f"  skipped       : {reason}")
                return
    result = xcom_return(api, dag_id, run_id, "drift_report")
    if not isinstance(result, dict):
        return
    verdict = "DRIFT" if result.get("dataset_drift") else "no drift"
    say(
        f"  drift verdict : {verdict}: share of drifted features {result.get('drift_share'):.2f}"
        f" ({', '.join(result.get('drifted_columns') or []) or 'none'})"
    )
    pdrift = result.get("prediction_drift") or {}
    say(
        f"  prediction    : {'drifted' if pdrift.get('drifted') else 'stable'} "
        f"({pdrift.get('method')} {pdrift.get('score')})"
    )
    quality = (result.get("quality") or {}).get("current") or {}
    if quality:
        shown = ", ".join(
            f"{k} {quality[k]:.3f}" for k in ("roc_auc", "f1") if isinstance(quality.get(k), float)
        )
        say(f"  quality       : {shown} on the day's labels")
    say(f"  report        : {result.get('report_html')}")
    link = xcom_return(api, dag_id, run_id, "drift_report", key="report_url")
    if link:
        say(f"  in Airflow    : {link if str(link).startswith('http') else al.ui_url() + str(link)}")
    if states.get("decide_retrain") == "success":
        say("  retrain       : triggered (asset mlops.drift_detected -> train DAG)")
    elif states.get("decide_retrain") == "skipped":
        say(
            f"  retrain       : not triggered - {xcom_return(api, dag_id, run_id, 'decide_retrain', key='skip_reason')}"
        )


def champion_line() -> None:
    """The champion after the demo, read from the MLflow REST API."""
    cfg, _ = lake_root()
    url = os.environ.get("DEMO_MLFLOW_URL", "")
    if not url.startswith("http"):
        return
    query = urllib.parse.urlencode({"name": cfg.model_name, "alias": "champion"})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/registered-models/alias?{query}", timeout=5) as r:
            version = json.loads(r.read())["model_version"]["version"]
    except (OSError, KeyError, ValueError, urllib.error.URLError):
        say(f"champion: none yet for {cfg.model_name}")
        return
    say(
        f"champion: {cfg.model_name} version {version}  ->  mlflow.sklearn.load_model("
        f"'models:/{cfg.model_name}@champion')  (MLFLOW_TRACKING_URI={url}; MLflow UI {url})"
    )


def summarize(api: Api, runs: dict[tuple[str, str], dict], mine: set[tuple[str, str]]) -> bool:
    cfg, root = lake_root()
    say("")
    say("=" * 100)
    say("SUMMARY")
    say("=" * 100)
    all_ok = True
    ordered = sorted(runs.values(), key=lambda r: (r.get("queued_at") or r["run_after"], r["dag_id"]))
    for run in ordered:
        dag_id, run_id = run_key(run)
        tis = task_instances(api, dag_id, run_id)
        want = expected_state(run, mine)
        ok = want is None or run["state"] == want
        verdict = "as expected" if ok else f"UNEXPECTED (expected {want})"
        if want is None:
            verdict = "not part of the demo (created by the DAG's schedule when it was unpaused)"
        elif ok and want == "failed":
            verdict = "as expected: the quality gate stopped a corrupt batch"
        all_ok &= ok
        date = (run.get("conf") or {}).get("date")
        say(f"\n{dag_id}  {run_id}  [{run['run_type']}{', date ' + date if date else ''}]")
        say(f"  state: {run['state']}  duration: {fmt_duration(run)}  -> {verdict}")
        task_id, value = result_task(api, run, tis)
        if dag_id == INGEST_DAG and isinstance(value, dict):
            say(f"  rows ingested : {value.get('rows')}")
            gx = value.get("gx_success")
            say(f"  GX verdict    : {'passed' if gx else 'FAILED' if gx is not None else '-'}")
            say(f"  fingerprint   : {value.get('fingerprint')}")
            say(f"  staging       : {value.get('staging_uri')}")
            say(f"  Data Docs     : {value.get('data_docs_url')}")
        elif dag_id == TRAIN_DAG:
            summarize_train(api, dag_id, run_id)
        elif dag_id == MONITOR_DAG:
            summarize_monitor(api, dag_id, run_id, tis)
        elif value is not None:
            say(f"  result of {task_id}:")
            print_value(value)
        failed = [t for t in tis if t["state"] == "failed"]
        for ti in failed:
            say(f"  failed task {ti['task_id']} (try {ti['try_number']}), log tail:")
            for line in task_log_tail(api, dag_id, run_id, ti):
                say(f"    | {line}")
        if dag_id == INGEST_DAG and run["state"] == "failed" and date and root is not None:
            quarantine = root / cfg.storage.quarantine_prefix / cfg.dataset.name / f"ds={date}"
            where = quarantine if quarantine.exists() else f"{quarantine} (not created)"
            say(f"  quarantine    : {where}")
            say(f"  raw batch kept: {root / cfg.storage.landing_prefix / cfg.dataset.name / date}")
    missing = mine - runs.keys()
    for dag_id, run_id in sorted(missing):
        say(f"\n{dag_id} {run_id}: never seen")
        all_ok = False
    say("")
    say("=" * 100)
    say(
        f"RESULT: {'OK - every run ended as expected' if all_ok else 'NOT OK - see UNEXPECTED above'}"
        f"  (UI: {al.ui_url()}, logs: {al.AIRFLOW_HOME / 'logs'})"
    )
    return all_ok


# --------------------------------------------------------------------------------------------- main


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def mlflow_service(env: dict[str, str]) -> tuple[dict[str, list[str]], str | None]:
    """With a local (SQLite) tracking store in the config, serve it with `mlflow server` for the demo.

    Every Airflow task then talks to one server (no SQLite writers racing each other) and the MLflow UI
    is there to look at. The server's store is the configured folder, so runs survive between demos.
    """
    cfg, _ = lake_root()
    uri = cfg.tracking_uri
    os.environ["DEMO_MLFLOW_URL"] = uri
    if not uri.startswith("sqlite:///"):
        say(f"MLflow          {uri} (as configured)")
        return {}, None
    check_port_free(MLFLOW_PORT)
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = db.parent / "artifacts"
    url = f"http://{al.HOST}:{MLFLOW_PORT}"
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host", al.HOST,
        "--port", str(MLFLOW_PORT),
        "--workers", "1",
        "--backend-store-uri", uri,
        "--artifacts-destination", str(artifacts),
        "--allowed-hosts", f"{al.HOST}:{MLFLOW_PORT},localhost:{MLFLOW_PORT}",
    ]  # fmt: skip
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else it forks ~2 GB of job workers
    env["MLOPS_MLFLOW__TRACKING_URI"] = url
    os.environ["DEMO_MLFLOW_URL"] = url
    say(f"MLflow          {url} serving {db} (artifacts {artifacts})")
    return {"mlflow": argv}, url


def ensure_pool(api: Api) -> None:
    """The pool that bounds concurrently training candidates; slots from training.pool_slots."""
    cfg, _ = lake_root()
    sys.path.insert(0, str(al.PLUGINS_FOLDER))
    from mlops_airflow.names import TRAINING_POOL

    body = {"name": TRAINING_POOL, "slots": cfg.training.pool_slots, "description": "mlops: training"}
    try:
        api.call("POST", "/api/v2/pools", body)
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise
        api.call("PATCH", f"/api/v2/pools/{q(TRAINING_POOL)}", body)
    say(f"pool            {TRAINING_POOL} ({cfg.training.pool_slots} slots)")


def trigger(api: Api, dag_id: str, date: str) -> tuple[str, str]:
    run_id = f"demo__{date}__{now_utc().strftime('%Y%m%dT%H%M%S')}"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": {"date": date}}
    try:
        api.call("POST", f"/api/v2/dags/{q(dag_id)}/dagRuns", body)
    except urllib.error.HTTPError as exc:
        raise DemoError(f"triggering {dag_id} for {date} failed: {http_detail(exc)}") from None
    say(f"triggered       {dag_id} {run_id} (conf date={date})")
    return dag_id, run_id


@contextlib.contextmanager
def airflow_running(env: dict[str, str], extra: dict[str, list[str]] | None = None) -> Iterator[Processes]:
    procs = Processes(env, extra)

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        procs.start()
        yield procs
    finally:
        # a second Ctrl-C while stopping must not leave processes behind
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "mode", choices=("demo", "up"), help="demo: run the sample job and stop; up: keep running"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="demo: give up after this many seconds (900)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=15,
        help="demo: after the last run finished, wait this long for runs it triggers (15)",
    )
    parser.add_argument("--no-seed", action="store_true", help="up: do not write the sample landing batches")
    parser.add_argument("--paused", action="store_true", help="up: leave the DAGs paused")
    args = parser.parse_args(argv)

    started = time.monotonic()
    # Ctrl-C must reach us even if the parent shell started us with SIGINT ignored (background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_leftovers()
        check_port_free(al.PORT)
        al.write_auth_files()
        env = al.airflow_env()
        say(f"AIRFLOW_HOME    {al.AIRFLOW_HOME}")
        say(f"DAGs folder     {env['AIRFLOW__CORE__DAGS_FOLDER']}")
        migrate_db(env)
        extra, mlflow_url = mlflow_service(env)
        with airflow_running(env, extra) as procs:
            if not args.no_seed:
                seed_landing()
            api = Api(al.api_url(), "admin", al.USERS["admin"])
            t_api = time.monotonic()
            wait_for("api-server", api.ready, 180, procs)
            say(f"api-server      ready after {time.monotonic() - t_api:.1f}s ({al.api_url()})")
            if mlflow_url:
                wait_for("mlflow server", lambda: http_ok(mlflow_url + "/health"), 120, procs)
                say(f"mlflow server   ready ({mlflow_url})")
            api.login()
            need = {INGEST_DAG, TRAIN_DAG, MONITOR_DAG} if args.mode == "demo" else set()
            dags = wait_for_dags(api, procs, need)
            since = now_utc() - dt.timedelta(seconds=1)
            ensure_pool(api)
            if not args.paused:
                unpause_all(api, dags)
            if args.mode == "up":
                say("")
                say(
                    f"Airflow UI: {al.ui_url()}  login: admin / {al.USERS['admin']}"
                    f"  (read-only: viewer / {al.USERS['viewer']})"
                )
                say(f"REST API:   {al.api_url()}/api/v2 (token: POST {al.api_url()}/auth/token)")
                if mlflow_url:
                    say(f"MLflow UI:  {mlflow_url}")
                say(f"ready after {time.monotonic() - started:.0f}s; press Ctrl-C to stop")
                try:
                    while True:
                        procs.check_alive()
                        time.sleep(2)
                except KeyboardInterrupt:
                    say("\nCtrl-C")
                    return 0
            mine: set[tuple[str, str]] = set()
            runs: dict[tuple[str, str], dict] = {}
            for title, triggers in PHASES:
                say("")
                say(f"--- {title}")
                phase_since = since if not runs else now_utc() - dt.timedelta(seconds=1)
                started_now = {trigger(api, dag_id, date) for dag_id, date in triggers}
                if (INGEST_DAG, CORRUPT_DATE) in triggers:
                    say(
                        f"(the {CORRUPT_DATE} batch is corrupt on purpose: its run is EXPECTED to fail at the gate)"
                    )
                mine |= started_now
                runs.update(follow(api, procs, phase_since, started_now, args.timeout, args.settle))
            ok = summarize(api, runs, mine)
            champion_line()
            say(f"demo took {time.monotonic() - started:.0f}s")
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    except DemoError as exc:
        say(f"\nERROR: {exc}")
        return 1
    except urllib.error.HTTPError as exc:
        say(
            f"\nERROR: Airflow API call {exc.url} failed: {http_detail(exc)}; logs: {al.AIRFLOW_HOME / 'logs'}"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
