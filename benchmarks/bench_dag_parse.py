"""How long each file in dags/ takes to parse, beyond what Airflow itself costs, with many data sets.

The DAG processor parses every file again and again (every ``min_file_process_interval``), in a process
where Airflow's task SDK is already loaded. What a DAG file adds on top of that is what this measures:

* **parse**: in a fresh interpreter, ``import airflow.sdk`` (and resolve every name it exports, as the
  DAG processor has) untimed, then time the import of the DAG file alone (compile + exec, the way the
  DagBag loads it). Repeated ``--repeat`` times, each in a new process; the median is reported.
* **imports**: in the same processes, the top-level modules the file newly loaded (e.g. ``pandas``
  would be a finding) and the import share of the parse time (first exec minus a second exec of the same
  file in the same process, when every import is already cached).

* **per DAG**: each file builds one DAG per data set of the catalog (the DAG factory), so the catalog is
  a temporary folder of ``--datasets`` config files (default 20: copies of config/datasets/churn.yaml
  under other names) and the parse time is divided by the number of DAGs the file generated.

``plugins/`` is put on ``sys.path`` (PYTHONPATH=plugins) as Airflow does; AIRFLOW_HOME is a temporary
folder so nothing is written into the repo or ``~/airflow``.

Goal: under 50 ms per generated DAG. Prints PASS/FAIL per file and a ``per DAG/goal`` ratio line; exits 0
unless ``--strict`` is given and a file misses the goal.

    .venv/bin/python benchmarks/bench_dag_parse.py [--datasets 20] [--repeat 5] [--strict] [--no-preload] [FILE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"
PLUGINS = REPO / "plugins"
GOAL_MS = 50.0

# Runs in the child interpreter: argv = [dag_file, preload(0|1)]; prints one JSON line.
_CHILD = r"""
import importlib.util, json, sys, time

path, preload = sys.argv[1], sys.argv[2] == "1"
t = time.perf_counter()
import airflow.sdk
if preload:
    for name in getattr(airflow.sdk, "__all__", []):
        try:
            getattr(airflow.sdk, name)
        except Exception:
            pass
sdk_s = time.perf_counter() - t


from airflow.sdk.definitions._internal.contextmanager import DagContext


def load(mod_name):
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    DagContext.current_autoregister_module_name = mod_name  # as the DagBag does: count the DAGs made
    DagContext.autoregistered_dags.clear()
    t0 = time.perf_counter()
    spec.loader.exec_module(module)
    return time.perf_counter() - t0


before = set(sys.modules)
first_s = load("unusual_prefix_bench_dag_1")
after = set(sys.modules)
dags = len(DagContext.autoregistered_dags)
second_s = load("unusual_prefix_bench_dag_2")
added = sorted(after - before - {"unusual_prefix_bench_dag_1"})
new = sorted({m.split(".")[0] for m in added})
print(json.dumps({"sdk_s": sdk_s, "first_s": first_s, "second_s": second_s, "dags": dags,
                  "new_top_level": new, "added": added}))
"""


def dag_files(names: list[str]) -> list[Path]:
    if names:
        return [Path(n).resolve() for n in names]
    return sorted(p for p in DAGS.glob("*.py") if not p.name.startswith("_"))


def write_catalog(folder: Path, count: int) -> None:
    """``count`` data sets: config/datasets/churn.yaml under the names ds01, ds02, ..."""
    text = (REPO / "config" / "datasets" / "churn.yaml").read_text(encoding="utf-8")
    if "  name: churn\n" not in text:
        raise RuntimeError("config/datasets/churn.yaml no longer declares '  name: churn'")
    for i in range(1, count + 1):
        name = f"ds{i:02d}"
        # own GX names too: the catalog refuses two data sets sharing a suite
        own = text.replace("  name: churn\n", f"  name: {name}\n").replace("churn_batch", f"{name}_batch")
        (folder / f"{name}.yaml").write_text(own, encoding="utf-8")


def child_env(airflow_home: str, catalog: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PLUGINS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(
        {
            "AIRFLOW_HOME": airflow_home,
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PLUGINS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home}/airflow.db",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLOPS_CONFIG": str(catalog),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def measure(path: Path, env: dict[str, str], preload: bool) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), "1" if preload else "0"],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"parsing {path} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", help="DAG files (default: every dags/*.py not starting with '_')")
    ap.add_argument("--repeat", type=int, default=5, help="fresh processes per file (median is reported)")
    ap.add_argument("--datasets", type=int, default=20, help="data-set configs in the catalog (20)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any file misses the goal")
    ap.add_argument(
        "--no-preload",
        action="store_true",
        help="do not resolve airflow.sdk's lazy names first (charges them to the first DAG file)",
    )
    args = ap.parse_args(argv)
    files = dag_files(args.files)
    if not files:
        print(f"no DAG files in {DAGS}")
        return 0

    print(
        f"DAG parse benchmark: goal < {GOAL_MS:.0f} ms per generated DAG, {args.datasets} data-set configs "
        f"(median of {args.repeat} fresh processes)"
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; baseline per process: import airflow.sdk"
        + ("" if args.no_preload else " + every name it exports")
        + " (untimed); PYTHONPATH=plugins"
    )
    misses = 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dag-parse-") as home:
        catalog = Path(home, "datasets")
        catalog.mkdir()
        write_catalog(catalog, args.datasets)
        env = child_env(home, catalog)
        for path in files:
            runs = [measure(path, env, not args.no_preload) for _ in range(args.repeat)]
            parse_ms = statistics.median(r["first_s"] for r in runs) * 1000
            warm_ms = statistics.median(r["second_s"] for r in runs) * 1000
            sdk_ms = statistics.median(r["sdk_s"] for r in runs) * 1000
            new = runs[0]["new_top_level"]
            dags = runs[0]["dags"]
            per_dag_ms = parse_ms / max(dags, 1)
            ok = per_dag_ms < GOAL_MS or dags == 0  # no DAG (config_errors.py, all configs valid): no goal
            misses += not ok
            rows.append((path.name, per_dag_ms, dags, ok))
            print(f"\n{path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
            print(
                f"  parse (cold, median)  {parse_ms:8.1f} ms   "
                f"[min {min(r['first_s'] for r in runs) * 1000:.1f}, max {max(r['first_s'] for r in runs) * 1000:.1f}]"
            )
            print(f"  re-exec (imports cached) {warm_ms:5.1f} ms")
            print(
                f"  import cost beyond airflow.sdk {max(parse_ms - warm_ms, 0.0):6.1f} ms, "
                f"{len(runs[0]['added'])} new modules"
            )
            print(f"  new top-level modules: {', '.join(new) if new else '(none)'}")
            if 0 < len(runs[0]["added"]) <= 25:
                print(f"  new modules: {', '.join(runs[0]['added'])}")
            print(f"  (airflow.sdk baseline itself: {sdk_ms:.0f} ms, not counted)")
            print(f"  DAGs generated: {dags}; per DAG {per_dag_ms:.1f} ms")
            print(f"  {'PASS' if ok else 'FAIL'}: {per_dag_ms:.1f} ms per DAG vs goal {GOAL_MS:.0f} ms")

    print("\nratio per DAG/goal (< 1.00 meets the goal):")
    for name, per_dag_ms, dags, ok in rows:
        print(
            f"  {name}: {per_dag_ms / GOAL_MS:.2f} ({per_dag_ms:.1f} ms / {GOAL_MS:.0f} ms, {dags} DAGs) "
            f"{'PASS' if ok else 'FAIL'}"
        )
    print(f"\n{len(rows) - misses}/{len(rows)} files under the {GOAL_MS:.0f} ms per DAG goal")
    return 1 if (args.strict and misses) else 0


if __name__ == "__main__":
    sys.exit(main())
