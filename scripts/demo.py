"""Run the bundle through real Airflow processes on this machine (the README's `make demo` / `make up`).

  python scripts/demo.py demo   set up, start Airflow, run the two sample data sets side by side through
                                the REST API (churn: binary classification, a good and a corrupt batch,
                                then a drifted one; diabetes: regression, three days backfilled, then a
                                fourth), follow every run they cause, print a summary, stop Airflow
  python scripts/demo.py up     set up, start Airflow, unpause the DAGs, keep running until Ctrl-C

Setup is idempotent: the metadata DB is migrated only when Airflow changed, the sample landing batches
are written only if missing. Airflow (api-server, scheduler, dag-processor, triggerer) runs from
.airflow/ with LocalExecutor on SQLite; each process logs to .airflow/logs/<name>.log and is stopped on
exit, Ctrl-C or SIGTERM.

The processes come from scripts/airflow_procs.py, the REST calls (login, pool, unpause, following runs)
from scripts/airflow_rest.py; this file holds the demo's own setup, phases and summary.

Stdlib only (plus the bundle's own sample-data helpers), so it runs before anything else is set up.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airflow_local as al  # noqa: E402
from airflow_procs import (  # noqa: E402
    RunnerError,
    airflow_db_migrate,
    airflow_running,
    check_leftovers,
    check_port_free,
    http_ok,
    mlflow_server_cmd,
    now_utc,
    say,
    wait_for,
)
from airflow_rest import (  # noqa: E402
    Api,
    bundle_config,
    bundle_configs,
    ensure_pools,
    follow,
    http_detail,
    import_bundle,
    list_all,
    parse_ts,
    q,
    run_key,
    task_instances,
    task_log_tail,
    unpause_all,
    wait_for_dags,
    xcom_return,
)

MLFLOW_PORT = int(os.environ.get("DEMO_MLFLOW_PORT") or 5000)
# the demo's data sets (config/datasets/): the generated churn sample and sklearn's load_diabetes
CHURN = "churn"
DIABETES = "diabetes"
DIABETES_LOADER = "load_diabetes"
DIABETES_PARTS = 6  # 442 rows -> six daily batches of ~74 (four demo days + the two scheduled days)
GOOD_DATE = "2026-01-05"
CORRUPT_DATE = "2026-01-06"
CORRUPTION = "unknown_category"
SAMPLE_ROWS = 5000
GATE_TASK = "validate_and_stage"
DRIFT_DATE = "2026-01-07"
DIABETES_DAYS = ("2026-01-04", "2026-01-05", "2026-01-06", "2026-01-07")
# The demo turns the cron schedules off for its Airflow (`up` keeps them): unpausing a daily DAG on a new
# metadata DB makes the scheduler run it at once for its latest interval (yesterday's batch), which would
# add runs of its own, a train run on a window ending yesterday instead of on the demo's days, and their
# CPU to a 2-core first run. Every run of the demo is one it triggers or one those trigger.
# Its DAG files do not change while it runs, so the DAG processor re-parses them every minute instead of
# every 10 s (`up` keeps 10 s so that edits show at once): ~0.3 s of CPU per file and parse.
# The triggerer only runs deferred tasks (an approval waiting for its answer), none in the demo; at a lower
# CPU priority its start-up imports (~5 s of CPU) yield to the scheduler's preload, which is what the first
# task waits for on 2 cores.
DEMO_NICE = {"triggerer": 10}
DEMO_ONLY_ENV = {
    "MLOPS_INGEST__SCHEDULE": "null",
    "MLOPS_MONITORING__SCHEDULE": "null",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
}


def dag_id(dataset: str, kind: str) -> str:
    import_bundle()
    from mlops_airflow.names import dag_id as make

    return make(dataset, kind)


def kind_of(dag_id_: str) -> str:
    return dag_id_.rpartition("__")[2]


def dataset_of(dag_id_: str) -> str:
    """The data set of a DAG (a deployment DAG such as audit_verify: churn's config speaks for it)."""
    import_bundle()
    from mlops_airflow.names import dataset_of as find

    return find(dag_id_) or CHURN


# What the demo does, in order: (title, ((data set, DAG kind, conf), ...)); each phase waits until its
# runs and the runs they trigger have finished.
PHASES = (
    (
        "day 1: churn gets a good and a corrupt batch (the good one trains the first champion); diabetes is "
        "onboarded: three days backfilled, then one train run on them",
        (
            (CHURN, "ingest", {"date": GOOD_DATE}),
            (CHURN, "ingest", {"date": CORRUPT_DATE}),
            (DIABETES, "backfill", {"start_date": DIABETES_DAYS[0], "end_date": DIABETES_DAYS[2]}),
        ),
    ),
    (
        "day 3: churn gets drifted customers, diabetes a fourth day (both validated, so both retrain; the "
        "gates judge, lower rmse wins for diabetes)",
        ((CHURN, "ingest", {"date": DRIFT_DATE}), (DIABETES, "ingest", {"date": DIABETES_DAYS[3]})),
    ),
    (
        "monitoring day 3 against each champion's reference: drift reports, guarded retrain triggers",
        ((CHURN, "monitor", {"date": DRIFT_DATE}), (DIABETES, "monitor", {"date": DIABETES_DAYS[3]})),
    ),
)


# --------------------------------------------------------------------------------------------- setup


def migrate_db(env: dict[str, str]) -> None:
    """`airflow db migrate`, skipped when this Airflow version already migrated this DB."""
    db = al.AIRFLOW_HOME / "airflow.db"
    marker = al.AIRFLOW_HOME / ".db_migrated"
    version = metadata.version("apache-airflow")
    if db.is_file() and marker.is_file() and marker.read_text().strip() == version:
        say(f"metadata DB     {db} (up to date, Airflow {version})")
        return
    t0 = time.monotonic()
    airflow_db_migrate(env)
    marker.write_text(version + "\n")
    say(f"metadata DB     {db} (migrated in {time.monotonic() - t0:.1f}s)")


def lake_root(dataset: str = CHURN) -> tuple[Any, Path | None]:
    """A data set's config and the local path of its storage root (None for s3:// roots)."""
    cfg = bundle_config(dataset)
    uri = cfg.root_uri
    if not uri.startswith("file://"):
        return cfg, None
    return cfg, Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def demo_datasets() -> list[str]:
    """The demo's data sets, as configured; the demo needs both (MLOPS_CONFIG may name another catalog)."""
    names = {cfg.dataset.name for cfg in bundle_configs()}
    missing = [n for n in (CHURN, DIABETES) if n not in names]
    if missing:
        raise RunnerError(
            f"the demo runs the data sets {CHURN} and {DIABETES}; the catalog has {sorted(names)}, not {missing} "
            "(unset MLOPS_CONFIG, or use `make up` for your own data sets)"
        )
    return [CHURN, DIABETES]


def demo_dags_ready(api: Api, procs: Any, dags: list[dict], need: set[str]) -> list[dict]:
    """Before the demo unpauses anything: pause every other DAG (a `make up` on the same home left them
    unpaused, and their schedules would run inside the demo's phases) and wait until the DAGs it runs were
    parsed with the schedules off (no next scheduled run), so a DAG serialized by an earlier `make up` with
    its cron schedule cannot start a catch-up run when the demo unpauses it."""
    others = [d["dag_id"] for d in dags if d["dag_id"] not in need and not d["is_paused"]]
    for other in others:
        api.call("PATCH", f"/api/v2/dags/{q(other)}", {"is_paused": True})
    if others:
        say(f"paused          {', '.join(sorted(others))} (not part of the demo)")

    def parsed_off() -> list[dict] | None:
        current = list_all(api, "/api/v2/dags", "dags")
        ours = [d for d in current if d["dag_id"] in need]
        return current if ours and all(d.get("next_dagrun_run_after") is None for d in ours) else None

    return wait_for("the demo's DAGs parsed with their schedules off", parsed_off, 180, procs)


def seed_landing(datasets: list[str], scheduled: bool) -> None:
    """Write the demo's sample batches into landing/ unless they are already there; with `scheduled`
    also the last two days' (for `up`: see below)."""
    from mlops_bundle.sample import generate_batch, sklearn_batch, write_landing

    # Unpausing a daily ingest DAG makes the scheduler run it once for its latest interval, which ingests
    # the day before: seed that batch too (either of the last two days, depending on the hour).
    today = now_utc().date()
    scheduled = [str(today - dt.timedelta(days=n)) for n in (1, 2)] if scheduled else []
    batches = {
        CHURN: [
            (GOOD_DATE, None),
            (CORRUPT_DATE, CORRUPTION),
            (DRIFT_DATE, "drift"),
            *((d, None) for d in scheduled),
        ],
        DIABETES: [(day, part) for part, day in enumerate((*DIABETES_DAYS, *scheduled))],
    }
    for dataset in datasets:
        cfg, root = lake_root(dataset)
        if root is None:
            say(
                f"sample data     skipped: storage root is {cfg.root_uri}; upload batches to its landing/ yourself"
            )
            continue
        for day, kind in batches.get(dataset, []):
            folder = root / cfg.storage.landing_prefix / cfg.dataset.name / day
            if dataset == DIABETES:
                label = f"{DIABETES_LOADER} part {kind + 1}/{DIABETES_PARTS}"
            else:
                label = {None: "good", "drift": "good, drifted customers"}.get(kind, f"corrupt: {kind}")
            if folder.is_dir() and any(folder.iterdir()):
                say(f"sample data     {folder} (already there, {label})")
                continue
            if dataset == DIABETES:
                df = sklearn_batch(DIABETES_LOADER, kind, DIABETES_PARTS, day)
            elif kind == "drift":
                df = generate_batch(day, rows=SAMPLE_ROWS, drift=1.0)
            else:
                df = generate_batch(day, rows=SAMPLE_ROWS, corrupt=kind)
            path = write_landing(df, folder, fmt="csv")
            say(f"sample data     {path} ({len(df)} rows, {label})")


# ------------------------------------------------------------------------------------------ summary


def fmt_duration(run: dict) -> str:
    if run.get("duration") is not None:
        return f"{run['duration']:.1f}s"
    start, end = parse_ts(run.get("start_date")), parse_ts(run.get("end_date"))
    return f"{(end - start).total_seconds():.1f}s" if start and end else "-"


def result_task(api: Api, run: dict, tis: list[dict]) -> tuple[str | None, Any]:
    """The run's headline result: validate_and_stage for ingest, else the last task that returned one."""
    dag_id, run_id = run_key(run)
    if kind_of(dag_id) == "ingest":
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
    triggered = str(run["dag_run_id"]).startswith("backfill__")  # the train run a backfill started
    if (
        run_key(run) not in mine
        and not triggered
        and run["run_type"] not in ("asset_triggered", "asset_materialization")
    ):
        return None
    if run["dag_id"] == dag_id(CHURN, "ingest") and (run.get("conf") or {}).get("date") == CORRUPT_DATE:
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
    cfg, _ = lake_root(dataset_of(dag_id))
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
        f"  load it       : mlops_bundle.training.load_model(cfg, 'models:/{cfg.model_name}@champion')"
        f"  (MLFLOW_TRACKING_URI={mlflow_url}; checks the provenance signature, skops only)"
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
        from mlops_bundle.task_types import task_type

        cfg, _ = lake_root(dataset_of(dag_id))
        headline = task_type(cfg.dataset.task).metrics[:2]  # binary: roc_auc, f1; regression: rmse, mae
        shown = ", ".join(f"{k} {quality[k]:.3f}" for k in headline if isinstance(quality.get(k), float))
        say(f"  quality       : {shown} on the day's labels")
    say(f"  report        : {result.get('report_html')}")
    link = xcom_return(api, dag_id, run_id, "drift_report", key="report_url")
    if link:
        say(f"  in Airflow    : {link if str(link).startswith('http') else al.ui_url() + str(link)}")
    if states.get("decide_retrain") == "success":
        ds = dataset_of(dag_id)
        say(f"  retrain       : triggered (asset mlops.{ds}.drift_detected -> {ds}__train)")
    elif states.get("decide_retrain") == "skipped":
        say(
            f"  retrain       : not triggered - {xcom_return(api, dag_id, run_id, 'decide_retrain', key='skip_reason')}"
        )


def champion_line(dataset: str) -> None:
    """A data set's champion after the demo, read from the MLflow REST API."""
    cfg, _ = lake_root(dataset)
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
        f"champion: {cfg.model_name} version {version}  ->  mlops_bundle.training.load_model(cfg, "
        f"'models:/{cfg.model_name}@champion')  (MLFLOW_TRACKING_URI={url}; MLflow UI {url})"
    )


def summarize(
    api: Api, runs: dict[tuple[str, str], dict], mine: set[tuple[str, str]], timings: dict[str, float]
) -> bool:
    """Print every run's outcome; add to ``timings`` the task instances' summed duration (task_s)."""
    say("")
    say("=" * 100)
    say("SUMMARY")
    say("=" * 100)
    all_ok = True
    ordered = sorted(runs.values(), key=lambda r: (r.get("queued_at") or r["run_after"], r["dag_id"]))
    for run in ordered:
        dag_id, run_id = run_key(run)
        tis = task_instances(api, dag_id, run_id)
        timings["task_s"] = timings.get("task_s", 0.0) + sum(t.get("duration") or 0.0 for t in tis)
        timings["tasks"] = timings.get("tasks", 0) + sum(1 for t in tis if t.get("duration"))
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
        kind = kind_of(dag_id)
        cfg, root = lake_root(dataset_of(dag_id))
        gate_state = {t["task_id"]: t["state"] for t in tis}.get(GATE_TASK)
        if kind == "ingest" and gate_state == "skipped":
            # the batch is identical to what an earlier run staged (e.g. a second `make demo`)
            reason = xcom_return(api, dag_id, run_id, GATE_TASK, key="skip_reason")
            say(f"  unchanged     : {reason}")
            say("  training      : not triggered (nothing new; README: From validated batch to training)")
        elif kind == "ingest" and isinstance(value, dict):
            say(f"  rows ingested : {value.get('rows')}")
            gx = value.get("gx_success")
            say(f"  GX verdict    : {'passed' if gx else 'FAILED' if gx is not None else '-'}")
            say(f"  fingerprint   : {value.get('fingerprint')}")
            say(f"  staging       : {value.get('staging_uri')}")
            say(f"  Data Docs     : {value.get('data_docs_url')}")
        elif kind == "train":
            summarize_train(api, dag_id, run_id)
        elif kind == "monitor":
            summarize_monitor(api, dag_id, run_id, tis)
        elif value is not None:
            say(f"  result of {task_id}:")
            print_value(value)
        failed = [t for t in tis if t["state"] == "failed"]
        for ti in failed:
            say(f"  failed task {ti['task_id']} (try {ti['try_number']}), log tail:")
            for line in task_log_tail(api, dag_id, run_id, ti):
                say(f"    | {line}")
        if kind == "ingest" and run["state"] == "failed" and date and root is not None:
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


def mlflow_service(env: dict[str, str]) -> tuple[dict[str, list[str]], str | None]:
    """With a local (SQLite) tracking store in the config, serve it with `mlflow server` for the demo.

    Every Airflow task then talks to one server (no SQLite writers racing each other) and the MLflow UI
    is there to look at. The server's store is the configured folder, so runs survive between demos.
    """
    cfg, _ = lake_root(CHURN)  # the demo's data sets share the local tracking store
    uri = cfg.tracking_uri
    os.environ["DEMO_MLFLOW_URL"] = uri
    if not uri.startswith("sqlite:///"):
        say(f"MLflow          {uri} (as configured)")
        return {}, None
    check_port_free(MLFLOW_PORT, "DEMO_MLFLOW_PORT")
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    artifacts = db.parent / "artifacts"
    url = f"http://{al.HOST}:{MLFLOW_PORT}"
    argv = mlflow_server_cmd(MLFLOW_PORT, uri, artifacts, serve_artifacts=False)
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else it forks ~2 GB of job workers
    env["MLOPS_MLFLOW__TRACKING_URI"] = url
    os.environ["DEMO_MLFLOW_URL"] = url
    say(f"MLflow          {url} serving {db} (artifacts {artifacts})")
    return {"mlflow": argv}, url


def trigger(api: Api, dag_id: str, conf: dict[str, Any]) -> tuple[str, str]:
    label = "__".join(str(v) for v in conf.values())
    run_id = f"demo__{label}__{now_utc().strftime('%Y%m%dT%H%M%S')}"
    body = {"dag_run_id": run_id, "logical_date": None, "conf": conf}
    shown = ", ".join(f"{k}={v}" for k, v in conf.items())
    try:
        api.call("POST", f"/api/v2/dags/{q(dag_id)}/dagRuns", body)
    except urllib.error.HTTPError as exc:
        raise RunnerError(f"triggering {dag_id} ({shown}) failed: {http_detail(exc)}") from None
    say(f"triggered       {dag_id} {run_id} (conf {shown})")
    return dag_id, run_id


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
        help="demo: once every run finished, wait at most this long for an Asset event still queued for a "
        "train DAG to become a run (15)",
    )
    parser.add_argument("--no-seed", action="store_true", help="up: do not write the sample landing batches")
    parser.add_argument("--paused", action="store_true", help="up: leave the DAGs paused")
    args = parser.parse_args(argv)

    started = time.monotonic()
    # Ctrl-C must reach us even if the parent shell started us with SIGINT ignored (background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        check_leftovers()
        for port, setting in (
            (al.PORT, "DEMO_PORT"),
            (al.WORKER_LOG_PORT, "DEMO_WORKER_LOG_PORT"),
            (al.TRIGGER_LOG_PORT, "DEMO_TRIGGER_LOG_PORT"),
        ):
            check_port_free(port, setting)
        al.write_auth_files()
        env = al.airflow_env()
        if args.mode == "demo":
            env |= DEMO_ONLY_ENV
        say(f"AIRFLOW_HOME    {al.AIRFLOW_HOME}")
        say(f"DAGs folder     {env['AIRFLOW__CORE__DAGS_FOLDER']}")
        timings: dict[str, float] = {}
        t_step = time.monotonic()
        migrate_db(env)
        timings["migrate_s"] = time.monotonic() - t_step
        extra, mlflow_url = mlflow_service(env)
        t_step = time.monotonic()
        with airflow_running(env, extra, DEMO_NICE if args.mode == "demo" else None) as procs:
            datasets = demo_datasets() if args.mode == "demo" else [c.dataset.name for c in bundle_configs()]
            if not args.no_seed:
                seed_landing(datasets, scheduled=args.mode == "up")
            api = Api(al.api_url(), "admin", al.USERS["admin"])
            t_api = time.monotonic()
            wait_for("api-server", api.ready, 180, procs)
            say(f"api-server      ready after {time.monotonic() - t_api:.1f}s ({al.api_url()})")
            if mlflow_url:
                wait_for("mlflow server", lambda: http_ok(mlflow_url + "/health"), 120, procs)
                say(f"mlflow server   ready ({mlflow_url})")
            api.login()
            need = (
                {dag_id(d, k) for _, steps in PHASES for d, k, _ in steps} if args.mode == "demo" else set()
            )
            need |= {dag_id(d, "train") for d in datasets} if args.mode == "demo" else set()
            dags = wait_for_dags(api, procs, need)
            if args.mode == "demo":
                dags = demo_dags_ready(api, procs, dags, need)
            since = now_utc() - dt.timedelta(seconds=1)
            ensure_pools(api)
            if not args.paused:  # the demo unpauses the DAGs it runs; `up` every DAG
                unpause_all(api, [d for d in dags if args.mode == "up" or d["dag_id"] in need])
            timings["start_s"] = time.monotonic() - t_step  # processes up, DAGs parsed, pools, unpaused
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
            for phase, (title, triggers) in enumerate(PHASES, 1):
                t_step = time.monotonic()
                say("")
                say(f"--- {title}")
                phase_since = since if not runs else now_utc() - dt.timedelta(seconds=1)
                started_now = {trigger(api, dag_id(ds, kind), conf) for ds, kind, conf in triggers}
                if (CHURN, "ingest", {"date": CORRUPT_DATE}) in triggers:
                    say(
                        f"(the {CORRUPT_DATE} batch is corrupt on purpose: its run is EXPECTED to fail at the gate)"
                    )
                mine |= started_now
                consumers = [dag_id(d, "train") for d in datasets]  # the DAGs Assets schedule
                runs.update(
                    follow(api, procs, phase_since, started_now, args.timeout, args.settle, consumers)
                )
                # includes the runs the phase's runs trigger (Asset events, the backfill's train run)
                timings[f"phase{phase}_s"] = time.monotonic() - t_step
            ok = summarize(api, runs, mine, timings)
            for dataset in datasets:
                champion_line(dataset)
            timings["total_s"] = time.monotonic() - started
            say(f"demo took {timings['total_s']:.0f}s")
            # one machine-readable line for benchmarks/bench_demo.py
            say("demo timings: " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
        return 0 if ok else 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    except RunnerError as exc:
        say(f"\nERROR: {exc}")
        return 1
    except urllib.error.HTTPError as exc:
        say(
            f"\nERROR: Airflow API call {exc.url} failed: {http_detail(exc)}; logs: {al.AIRFLOW_HOME / 'logs'}"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
