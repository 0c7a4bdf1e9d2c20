"""`make demo` timed per phase, with the LocalExecutor preload on and off (issue: first run in ~150 s).

For each mode the demo (`scripts/demo.py demo`: both data sets of config/datasets/, churn and diabetes) runs
in its own temp folder (Airflow home, lake, MLflow store, audit store, GX copy, free ports), so every run
starts from the same empty state, after the metadata DB was migrated once for that home (`airflow db
migrate` is run first and not counted, as after a newcomer's first `make demo`). Printed per mode: the
demo's own `demo timings` line (start = processes up + DAGs parsed + pools + unpaused; phase1..3 = each
phase's runs and the runs they trigger, until no Asset event is left queued; summary; total), the summed duration of
every task instance the demo followed (task_s) and how many there were, and the 1-minute load average
before and after (the machine may be shared).

Then every task instance's time is itemized from the run's own records (benchmarks/task_costs.py: dispatch,
process start-up, DAG parse, pre-execute, the task body, post-execute, and the scheduler's hops between a
run's tasks), each marked as Airflow's or ours.

The share spent importing is measured as the difference the preload makes: the task bodies' time with the
preload off minus with it on is the time task processes spent importing the libraries they would otherwise
inherit (GX, Evidently, MLflow, scikit-learn, pandas), as a share of the task time with it off.

    .venv/bin/python benchmarks/bench_demo.py [--modes fork,off] [--keep]

Goal: `scripts/demo.py demo` from its start to its exit (wall_s; the DB migration done before and not
counted) <= 150 s with the preload on. Each mode takes a few minutes; nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import task_costs

REPO = Path(__file__).resolve().parents[1]
GOAL_S = 150.0
MODES = {"fork": "true", "off": "false"}  # MLOPS_WORKER_PRELOAD (the default executor preloads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mode_env(tmp: Path, preload: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLOPS_", "DEMO_"))}
    return keep | {
        "DEMO_AIRFLOW_HOME": str(tmp / "airflow"),
        "DEMO_PORT": str(free_port()),
        "DEMO_MLFLOW_PORT": str(free_port()),
        "DEMO_WORKER_LOG_PORT": str(free_port()),
        "DEMO_TRIGGER_LOG_PORT": str(free_port()),
        "MLOPS_WORKER_PRELOAD": preload,
        "MLOPS_STORAGE__ROOT_URI": (tmp / "lake").as_uri(),
        "MLOPS_VALIDATION__GX_ROOT": str(tmp / "great_expectations"),
        "MLOPS_MLFLOW__TRACKING_URI": str(tmp / "mlflow"),
        "MLOPS_AUDIT__STORE_URI": f"sqlite:///{tmp / 'audit.db'}",
        "MLOPS_AUDIT__GAP_DIR": str(tmp / "audit-gaps"),
    }


def migrate(env: dict[str, str]) -> float:
    """Migrate the mode's metadata DB the way the demo does (and mark it done), untimed by the demo."""
    code = (
        "import sys, time; sys.path.insert(0, 'scripts'); import airflow_local as al, demo; "
        "t = time.monotonic(); demo.migrate_db(al.airflow_env()); print(time.monotonic() - t)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=900
    )
    if out.returncode != 0:
        raise SystemExit(f"airflow db migrate failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def run_demo(env: dict[str, str], log: Path) -> dict:
    t0 = time.monotonic()
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "scripts/demo.py", "demo"],
            env=env,
            cwd=REPO,
            stdout=fh,
            stderr=subprocess.STDOUT,
        ).returncode
    wall = time.monotonic() - t0
    text = log.read_text(errors="replace")
    line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("demo timings: ")), None)
    timings = json.loads(line.removeprefix("demo timings: ")) if line else {}
    return {"rc": rc, "ok": "RESULT: OK" in text, "wall_s": round(wall, 1), **timings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="fork,off", help="fork (preload on, the default) and/or off")
    ap.add_argument("--keep", action="store_true", help="keep the temp folders (logs) and print them")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: dict[str, dict] = {}
    print(f"make demo benchmark: {os.cpu_count()} CPUs; goal: total <= {GOAL_S:.0f} s with the preload on")
    for mode in modes:
        tmp = Path(tempfile.mkdtemp(prefix=f"bench-demo-{mode}-"))
        try:
            shutil.copytree(REPO / "great_expectations", tmp / "great_expectations")
            env = mode_env(tmp, MODES[mode])
            migrate_s = migrate(env)
            load_before = os.getloadavg()[0]
            result = run_demo(env, tmp / "demo.log")
            result |= {"migrate_s (not counted)": round(migrate_s, 1), "load1_before": round(load_before, 2)}
            result["load1_after"] = round(os.getloadavg()[0], 2)
            results[mode] = result
            print(f"\n[{mode}] preload {'on' if MODES[mode] == 'true' else 'off'}")
            for key, value in result.items():
                print(f"  {key:<24} {value}")
            print("  where the task time went (benchmarks/task_costs.py):")
            if (tmp / "airflow" / "airflow.db").is_file():
                costs = task_costs.itemize(tmp / "airflow")
                result["costs"] = task_costs.report(costs, out=lambda t: print("  " + t))
            if not result["ok"]:
                print(f"  demo did not end OK: see {tmp / 'demo.log'}")
        finally:
            if args.keep or not results.get(mode, {}).get("ok"):
                print(f"  kept {tmp}")
            else:
                shutil.rmtree(tmp, ignore_errors=True)
    fork, off = results.get("fork"), results.get("off")
    print("\nratios (measured in this run):")
    if fork:
        print(
            f"  demo wall / goal, preload on : {fork['wall_s'] / GOAL_S:.2f} ({fork['wall_s']} s / {GOAL_S:.0f} s) "
            f"{'PASS' if fork['wall_s'] <= GOAL_S and fork['ok'] else 'FAIL'}"
        )
    if fork and off:
        print(f"  demo wall, preload off / on  : {off['wall_s'] / fork['wall_s']:.2f}")
        body_off = off.get("costs", {}).get("execute", {}).get("total")
        body_on = fork.get("costs", {}).get("execute", {}).get("total")
        if body_off and body_on is not None:
            share = max(body_off - body_on, 0.0) / body_off
            print(
                f"  task-body time spent importing with the preload off: {share:.0%} "
                f"({body_off} s of task bodies off vs {body_on} s on; all task time {off.get('task_s')} s vs "
                f"{fork.get('task_s')} s)"
            )
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
