"""The LocalExecutor preload (plugins/mlops_airflow/local_executor.py) measured on the real local Airflow.

For each mode the project-local Airflow (`scripts/demo.py up --no-seed --paused`, api-server, scheduler,
dag-processor, triggerer) is started on free ports in a temp AIRFLOW_HOME, one generated churn batch is
landed, the `churn__ingest` DAG is triggered for it, and the script prints

- ready: seconds until the runner reports the api-server and the DAGs ready,
- preload: the scheduler's own "worker preload: imported ... in N s" line (if any),
- first task: seconds from the launch (and from the trigger) to the first task instance's start, and
  each task's duration (the task's imports are inside its duration: that is what the preload removes);
  the run the scheduler creates when the DAG is unpaused ends first, so the measured run is alone,
- run: the DAG run's duration (start to end),
- PSS/RSS (MB, /proc/<pid>/smaps_rollup) of the scheduler and of its worker children at rest (after the
  run; PSS divides shared pages among the processes sharing them, so the sum is the real footprint),
- the 1-minute load average before and after (the machine may be shared: read the ratios with it).

Modes (default: all three): `fork` = PreloadingLocalExecutor (once in the scheduler before the fork),
`worker` = PerWorkerPreloadingLocalExecutor (each worker after the fork), `off` = MLOPS_WORKER_PRELOAD=false.

    .venv/bin/python benchmarks/bench_local_preload.py [--modes fork,worker,off] [--rows 2000]

Needs nothing but the venv (no MLflow server: ingest does not talk to MLflow). Every process it starts is
stopped (process group) before the next mode starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXECUTORS = {
    "fork": ("mlops_airflow.local_executor.PreloadingLocalExecutor", "true"),
    "worker": ("mlops_airflow.local_executor.PerWorkerPreloadingLocalExecutor", "true"),
    "off": ("mlops_airflow.local_executor.PreloadingLocalExecutor", "false"),
}
DATE = "2025-03-01"
DAG_ID = "churn__ingest"  # the run measured (MLOPS_CONFIG: churn's file only)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load1() -> float:
    return os.getloadavg()[0]


def wait(what: str, probe, timeout: float, proc: subprocess.Popen, log: Path, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"local Airflow exited ({proc.returncode}) while waiting for {what}; see {log}")
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}; see {log}")


def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(stat.parent.name))
    return out


def mem(pid: int) -> tuple[float, float, float]:
    """(PSS, RSS, private) in MB of one process (private: pages no other process shares)."""
    values = dict.fromkeys(("Pss", "Rss", "Private_Clean", "Private_Dirty"), 0.0)
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0]) / 1024
    return values["Pss"], values["Rss"], values["Private_Clean"] + values["Private_Dirty"]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


class Api:
    def __init__(self, url: str) -> None:
        self.url, self.token = url, ""

    def call(self, method: str, path: str, body=None):
        req = urllib.request.Request(
            self.url + path, data=None if body is None else json.dumps(body).encode(), method=method
        )
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return json.loads(text) if text else None


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def run_mode(mode: str, rows: int, tmp: Path) -> dict:
    from mlops_bundle.sample import generate_batch, write_landing

    executor, switch = EXECUTORS[mode]
    home, lake, gx = tmp / "airflow", tmp / "lake", tmp / "great_expectations"
    shutil.copytree(REPO / "great_expectations", gx)
    write_landing(generate_batch(DATE, rows=rows), lake / "landing" / "churn" / DATE)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "DEMO_"))} | {
        "DEMO_AIRFLOW_HOME": str(home),
        "DEMO_PORT": str(port),
        "DEMO_WORKER_LOG_PORT": str(free_port()),
        "DEMO_TRIGGER_LOG_PORT": str(free_port()),
        "DEMO_EXECUTOR": executor,
        "MLOPS_WORKER_PRELOAD": switch,
        # churn only (the catalog's other data sets would add DAGs and parse time to every mode)
        "MLOPS_CONFIG": str(REPO / "config" / "datasets" / "churn.yaml"),
        "MLOPS_STORAGE__ROOT_URI": f"file://{lake}",
        "MLOPS_VALIDATION__GX_ROOT": str(gx),
        # not sqlite: the runner starts no MLflow server (ingest does not use MLflow)
        "MLOPS_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLOPS_PROMOTION__LOCK_URI": "",
    }
    runner_log = tmp / "runner.log"
    out: dict = {"mode": mode, "executor": executor, "MLOPS_WORKER_PRELOAD": switch, "load1_start": load1()}
    t0, t_launch = time.monotonic(), time.time()
    with open(runner_log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py"), "up", "--no-seed", "--paused"],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait("ready", lambda: "press Ctrl-C to stop" in runner_log.read_text(), 400, proc, runner_log)
        out["ready_s"] = time.monotonic() - t0
        pids = json.loads((home / "demo.pids.json").read_text())
        sched = pids["scheduler"]

        def workers() -> list[int]:
            return [c for c in children(sched) if "LocalExecutor" in cmdline(c)]

        # the scheduler's workers exist once executor.start() returned (after the preload in `fork` mode)
        wait("the scheduler's workers", workers, 300, proc, runner_log)
        out["workers_s"] = time.monotonic() - t0
        api = Api(f"http://127.0.0.1:{port}")
        api.token = api.call("POST", "/auth/token", {"username": "admin", "password": "admin"})[
            "access_token"
        ]
        api.call("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        # unpausing makes the scheduler run the latest daily interval (no batch landed for it: it ends at
        # discover_files); let it end first so the measured run has the workers to itself
        t_unpause = time.monotonic()
        while time.monotonic() - t_unpause < 300:
            runs = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns")["dag_runs"]
            if runs and all(r["state"] in ("success", "failed") for r in runs):
                out["scheduled_run_s"] = ts(runs[0]["end_date"]) - ts(runs[0]["start_date"])
                break
            if not runs and time.monotonic() - t_unpause > 30:
                break
            time.sleep(2)
        run_id = f"bench_{mode}"
        t_trigger = time.time()
        api.call(
            "POST",
            f"/api/v2/dags/{DAG_ID}/dagRuns",
            {"dag_run_id": run_id, "logical_date": None, "conf": {"date": DATE}},
        )
        run = wait(
            "the ingest run",
            lambda: (r := api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"))["state"]
            in ("success", "failed")
            and r,
            900,
            proc,
            runner_log,
            interval=2,
        )
        out["run_state"] = run["state"]
        out["run_s"] = ts(run["end_date"]) - ts(run["start_date"])
        tis = api.call("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]
        tis.sort(key=lambda t: t["start_date"] or "")
        out["first_task_start_after_trigger_s"] = ts(tis[0]["start_date"]) - t_trigger
        out["first_task_start_since_launch_s"] = ts(tis[0]["start_date"]) - t_launch
        out["tasks_s"] = {t["task_id"]: round(t["duration"] or 0, 1) for t in tis}
        time.sleep(5)  # at rest
        sched_pss, sched_rss, _ = mem(sched)
        ws = [mem(w) for w in workers()]
        out["scheduler_pss_mb"], out["scheduler_rss_mb"] = sched_pss, sched_rss
        out["workers"] = len(ws)
        out["workers_pss_mb"] = sum(w[0] for w in ws)
        out["workers_rss_mb"] = sum(w[1] for w in ws)
        out["workers_private_mb"] = sum(w[2] for w in ws)
        out["total_pss_mb"] = sched_pss + out["workers_pss_mb"]
        text = (home / "logs" / "scheduler.log").read_text(errors="replace")
        found = re.findall(r"worker preload: imported .*? in ([\d.]+)s", text)
        out["preload_lines"] = len(found)
        out["preload_s"] = [float(x) for x in found]
        out["load1_end"] = load1()
        return out
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="fork,worker,off", help="comma-separated: fork, worker, off")
    parser.add_argument("--rows", type=int, default=2000, help="rows of the generated batch (2000)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders (logs)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "include"))
    results = []
    for mode in args.modes.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-local-preload-{mode}-"))
        try:
            res = run_mode(mode, args.rows, tmp)
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
        results.append(res)
        print(json.dumps(res, default=lambda x: round(x, 1)), flush=True)
    print()
    keys = (
        "ready_s",
        "workers_s",
        "first_task_start_after_trigger_s",
        "first_task_start_since_launch_s",
        "run_s",
        "scheduled_run_s",
        "scheduler_pss_mb",
        "workers_pss_mb",
        "total_pss_mb",
        "workers_rss_mb",
        "workers_private_mb",
        "load1_start",
        "load1_end",
    )
    print(f"{'':34}" + "".join(f"{r['mode']:>10}" for r in results))
    for key in keys:
        print(f"{key:34}" + "".join(f"{r.get(key, float('nan')):10.1f}" for r in results))
    tasks = sorted({t for r in results for t in r.get("tasks_s", {})})
    for task in tasks:
        print(
            f"{'task ' + task + ' (s)':34}" + "".join(f"{r['tasks_s'].get(task, 0):10.1f}" for r in results)
        )
    print(f"{'preload in the scheduler log (s)':34}" + "".join(f"{str(r['preload_s']):>10}" for r in results))
    base = next((r for r in results if r["mode"] == "off"), None)
    if base:
        for r in results:
            if r is not base:
                print(
                    f"{r['mode']}/off: run {r['run_s'] / base['run_s']:.2f}x, "
                    f"total PSS {r['total_pss_mb'] / base['total_pss_mb']:.2f}x"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
