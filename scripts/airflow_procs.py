"""Airflow and its services as local subprocesses: start, watch, kill, restart and stop them, wait for
ports, URLs and log lines. Shared by scripts/demo.py (`make demo` / `make up`) and scripts/stack.py.

Each process runs in its own process group and logs to <AIRFLOW_HOME>/logs/<name>.log; their pids are
kept in <AIRFLOW_HOME>/demo.pids.json so that a later run can refuse to start beside leftovers.

Stdlib only, so it runs before anything else is set up.
"""

from __future__ import annotations

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
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airflow_local as al  # noqa: E402

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# loopback servers: never through a proxy
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RunnerError(RuntimeError):
    """A setup/runtime problem the user has to act on; the message says what to do."""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------------ ports and URLs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port_free(port: int, setting: str = "DEMO_PORT") -> None:
    """Fail naming the environment variable `setting` that chooses `port` when something holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        if s.connect_ex((al.HOST, port)) == 0:
            raise RunnerError(
                f"port {port} ({setting}) is already in use (another Airflow, MLflow or web server, or a "
                f"second checkout?). Stop it, or choose another port: {setting}=<free port> make demo"
            )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like uvicorn: TIME_WAIT is fine
        try:
            s.bind((al.HOST, port))
        except OSError as exc:
            raise RunnerError(
                f"cannot bind {al.HOST}:{port} ({setting}): {exc}; set {setting} to a free port"
            ) from None


def http_ok(url: str, timeout: float = 2) -> bool:
    """True once `url` answers 2xx (any other answer, or none, is False)."""
    try:
        with _OPENER.open(url, timeout=timeout):
            return True
    except (OSError, urllib.error.URLError):
        return False


def wait_http(url: str, what: str, timeout: float, procs: Processes | None = None) -> None:
    """Wait until `url` answers (checking that `procs` are still alive meanwhile)."""
    deadline = time.monotonic() + timeout
    while not http_ok(url):
        if procs is not None:
            procs.check_alive()
        if time.monotonic() > deadline:
            raise RunnerError(f"{what} not ready at {url} after {timeout:.0f}s")
        time.sleep(0.5)


def wait_log(path: Path, text: str, what: str, timeout: float, procs: Processes) -> None:
    """Wait until a process's log file contains `text` (e.g. a Celery worker's " ready.")."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        procs.check_alive()
        if time.monotonic() > deadline:
            raise RunnerError(f"{what} did not log {text!r} within {timeout:.0f}s; see {path}")
        time.sleep(1)


def wait_for(
    what: str, check: Callable[[], Any], timeout: float, procs: Processes, every: float = 5.0
) -> Any:
    """Poll check() until truthy while `procs` stay alive; print a progress line every few seconds."""
    t0 = time.monotonic()
    last = t0
    while True:
        procs.check_alive()
        result = check()
        if result:
            return result
        elapsed = time.monotonic() - t0
        if elapsed > timeout:
            raise RunnerError(f"gave up waiting for {what} after {timeout:.0f}s; see {procs.log_dir}/*.log")
        if time.monotonic() - last >= every:
            say(f"waiting for {what}... {elapsed:.0f}s")
            last = time.monotonic()
        time.sleep(1)


def tail_file(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------ commands


def airflow_db_migrate(env: dict[str, str]) -> None:
    """`airflow db migrate` with `env`; on failure the error holds the output's last lines."""
    proc = subprocess.run(
        al.airflow_cmd("db", "migrate"), env=env, capture_output=True, text=True, cwd=al.PROJECT_ROOT
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise RunnerError(f"`airflow db migrate` failed (exit {proc.returncode}):\n{tail}")


def mlflow_server_cmd(
    port: int, backend_store_uri: str, artifacts_dir: Path, *, serve_artifacts: bool, auth: bool = False
) -> list[str]:
    """argv of an `mlflow server` on loopback: one worker, proxied artifacts in `artifacts_dir`.

    `auth`: behind MLflow's basic-auth app (its settings come from the environment: see
    config/mlflow.env); the demo's single-user server on loopback runs without it.
    """
    return [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--host", al.HOST,
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", backend_store_uri,
        *(["--app-name", "basic-auth"] if auth else []),
        *(["--serve-artifacts"] if serve_artifacts else []),
        "--artifacts-destination", str(artifacts_dir),
        "--allowed-hosts", f"{al.HOST}:{port},localhost:{port}",
    ]  # fmt: skip


# ----------------------------------------------------------------------------------------- processes


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
        raise RunnerError(
            f"Airflow processes started by scripts/demo.py for {al.AIRFLOW_HOME} are still running: "
            f"{listing} (another `make up`/`make demo`, or a run that was killed hard). "
            f"Stop that one, or: kill -TERM -- {groups}"
        )
    path.unlink()


def _descendants(roots: list[int]) -> set[int]:
    """Every process below `roots` (from /proc), e.g. task processes that run in their own groups."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _signal_all(pids, sig: int, *, group: bool) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if group else os.kill)(pid, sig)


class Processes:
    """Subprocesses (the Airflow components by default), each in its own process group, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        extra: dict[str, list[str]] | None = None,
        nice: dict[str, int] | None = None,
    ) -> None:
        self.env = env
        self.nice = nice or {}  # name -> niceness increment of that process (lower CPU priority)
        # name -> settings only that process gets on top of `env` (e.g. the MLflow server's secrets)
        self.env_of: dict[str, dict[str, str]] = {}
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
            env={**self.env, **self.env_of.get(name, {})},
            cwd=al.PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: Ctrl-C reaches only us, we stop them in order
            preexec_fn=(lambda n=self.nice[name]: os.nice(n)) if name in self.nice else None,
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
                raise RunnerError(
                    f"{name} exited with code {proc.returncode}; last lines of {self.log(name)}:\n"
                    + tail_file(self.log(name))
                )

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout: float = 30.0) -> list[int]:
        """Send `sig` to one component's process group and to every process below it (task processes run
        in their own groups), wait until the component exited, and let check_alive ignore it until
        restart(name). For fault tests: SIGKILL is a crashed host/container. Returns the pids signalled."""
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RunnerError(f"{name} (pid {proc.pid}) is not running (exit code {proc.returncode})")
        self.killed.add(name)
        descendants = _descendants([proc.pid])
        _signal_all([proc.pid], sig, group=True)
        _signal_all(descendants, sig, group=False)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunnerError(
                f"{name} (pid {proc.pid}) still runs {timeout:.0f}s after signal {sig}"
            ) from None
        say(f"killed          {name} (pid {proc.pid}, signal {sig}, {len(descendants)} descendant(s))")
        return [proc.pid, *sorted(descendants)]

    def restart(self, name: str) -> subprocess.Popen:
        """Start a component again with its original command (after kill(name) or after it exited)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RunnerError(f"{name} (pid {old.pid}) is still running: kill it first")
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
            descendants = _descendants([p.pid for p in self.procs.values()])  # task processes: own groups
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
        # stragglers left in the components' groups, then everything that ran below them
        _signal_all([p.pid for p in self.procs.values()], signal.SIGKILL, group=True)
        _signal_all(descendants, signal.SIGKILL, group=False)
        with contextlib.suppress(FileNotFoundError):
            pid_file().unlink()
        self.procs.clear()
        say("stopped         all processes")


def exit_on_signal(signum: int, _frame: Any) -> None:
    """Signal handler: SIGTERM/SIGHUP end the program like Ctrl-C does, through the `finally` blocks."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def airflow_running(
    env: dict[str, str], extra: dict[str, list[str]] | None = None, nice: dict[str, int] | None = None
) -> Iterator[Processes]:
    """Start the Airflow components (after the `extra` services); stop them all on exit, Ctrl-C or SIGTERM."""
    procs = Processes(env, extra, nice)
    old = {s: signal.signal(s, exit_on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
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
