"""A minimal Airflow REST client and what the runners do through it: log in (POST /auth/token), wait for
the DAGs to be parsed, create the training pool, unpause DAGs, follow runs until they and every run they
trigger have finished, read XComs and task logs. Shared by scripts/demo.py and scripts/stack.py.

Stdlib only (urllib; proxies bypassed since the api-server is on loopback).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airflow_local as al  # noqa: E402
from airflow_procs import Processes, RunnerError, say, wait_for  # noqa: E402

TERMINAL = {"success", "failed"}
POLL_S = 1.0  # how often follow() reads the runs (a few light REST calls per run)
TI_DONE = {"success", "failed", "skipped", "upstream_failed", "removed"}


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def parse_ts(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


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
        """The public API answers, and so does the execution API the task processes call. Its first request
        builds that app (3-5 s on 2 cores, measured) and blocks the whole single-worker api-server meanwhile:
        paid here, not by the first tasks' start calls."""
        try:
            self._call("GET", "/api/v2/monitor/health", auth=False, timeout=3)
            self._call("GET", "/execution/health", auth=False, timeout=60)
            return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False


def http_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
        return f"HTTP {exc.code}: {body.get('detail', body)}"
    except (ValueError, AttributeError):
        return f"HTTP {exc.code}"


# ------------------------------------------------------------------------------------ DAGs and pools


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


def list_all(api: Api, path: str, key: str, page: int = 100) -> list[dict]:
    """Every item of a paged Airflow list endpoint (a deployment of many data sets has > 100 DAGs)."""
    out: list[dict] = []
    while True:
        items = api.get(path, limit=page, offset=len(out))[key]
        out += items
        if len(items) < page:
            return out


def wait_for_dags(api: Api, procs: Processes, need: set[str], timeout: float = 180) -> list[dict]:
    """Wait until every DAG file was parsed (a DAG or an import error for it) and `need` DAGs exist."""
    folder = Path(procs.env["AIRFLOW__CORE__DAGS_FOLDER"])
    files = candidate_dag_files(folder)
    state: dict[str, Any] = {}

    def check():
        dags = list_all(api, "/api/v2/dags", "dags")
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
            # a file can hold no DAG (config_errors.py while every config is valid) and leave no trace:
            # accept once the DAG list stops changing (soon when the DAGs asked for are all there)
            return not state["missing"] or (names and stable_for > (3 if need else 15))
        if not state["missing"] or stable_for > 30:
            # every file parsed (or nothing changes any more) but a needed DAG is absent: say so
            state.setdefault("parsed_at", time.monotonic())
            if time.monotonic() - state["parsed_at"] > 20:
                raise RunnerError(
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


def import_bundle() -> None:
    """Make the checkout's library and plugins importable (before `pip install -e .` too)."""
    try:
        import mlops_bundle  # noqa: F401
    except ImportError:  # not pip-installed yet: use the checkout
        sys.path.insert(0, str(al.PROJECT_ROOT / "include"))
    if str(al.PLUGINS_FOLDER) not in sys.path:
        sys.path.insert(0, str(al.PLUGINS_FOLDER))


def bundle_configs() -> list[Any]:
    """The valid data sets of the catalog (MLOPS_CONFIG and MLOPS_* overrides of this environment)."""
    import_bundle()
    from mlops_bundle.catalog import scan

    entries = scan()
    for e in entries:
        if e.error:
            say(f"config error    {e.error} (its data set gets only the DAG {e.name}__config_error)")
    return [e.config for e in entries if e.config is not None]


def bundle_config(dataset: str) -> Any:
    """The config of one data set of the catalog."""
    import_bundle()
    from mlops_bundle.catalog import dataset_config

    return dataset_config(dataset)


def ensure_pools(api: Api) -> None:
    """Each data set's pool that bounds its concurrently training candidates (training.pool_slots)."""
    import_bundle()
    from mlops_airflow.names import training_pool

    for cfg in bundle_configs():
        pool = training_pool(cfg.dataset.name)
        # the whole pool every time: Airflow 3.3 validates a PATCH body as a complete pool (include_deferred
        # is required there, so a second `make up` would get 422 without it)
        body = {
            "name": pool,
            "slots": cfg.training.pool_slots,
            "description": f"mlops: training of {cfg.dataset.name}",
            "include_deferred": False,
        }
        try:
            api.call("POST", "/api/v2/pools", body)
        except urllib.error.HTTPError as exc:
            if exc.code != 409:
                raise
            api.call("PATCH", f"/api/v2/pools/{q(pool)}", body)
        say(f"pool            {pool} ({cfg.training.pool_slots} slots)")


# --------------------------------------------------------------------------------------------- runs


def run_key(run: dict) -> tuple[str, str]:
    return run["dag_id"], run["dag_run_id"]


def task_instances(api: Api, dag_id: str, run_id: str) -> list[dict]:
    return api.get(f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances", limit=100)["task_instances"]


def _progress_line(run: dict, tis: list[dict]) -> str:
    state = run["state"]
    done = sum(1 for t in tis if t["state"] in TI_DONE)
    line = f"{state}: {done}/{len(tis)} tasks done" if tis else state
    running = [t["task_id"] for t in tis if t["state"] in ("running", "queued", "scheduled", "deferred")]
    if state not in TERMINAL and running:
        line += f" (now: {', '.join(running)})"
    return line


def pending_asset_triggers(api: Api, dag_ids: Iterable[str]) -> list[str]:
    """The DAGs among `dag_ids` with Asset events queued for a run the scheduler has not created yet."""
    return [d for d in dag_ids if api.get(f"/api/v2/dags/{q(d)}/assets/queuedEvents")["queued_events"]]


def follow(
    api: Api,
    procs: Processes,
    since: dt.datetime,
    mine: set[tuple[str, str]],
    timeout: float,
    settle: float,
    asset_dags: Iterable[str] = (),
) -> dict[tuple[str, str], dict]:
    """Poll the runs we started and every run created since `since` (e.g. Asset-triggered ones) until
    all are finished and nothing new can appear: no Asset event queued for any of `asset_dags` (the DAGs
    that Assets schedule) on two polls in a row (a run created between our two reads shows up on the
    second). Queued events that stay (e.g. a train DAG at its max_active_runs) are waited for at most `settle`
    seconds."""
    runs: dict[tuple[str, str], dict] = {}
    shown: dict[tuple[str, str], str] = {}
    t0 = time.monotonic()
    quiet_since: float | None = None
    quiet_polls = 0
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
            line = _progress_line(run, task_instances(api, *key))
            if shown.get(key) != line:
                tag = "" if key in mine else f" <- {run['run_type']}"
                say(f"[{key[0]} {key[1]}] {line}{tag}")
                shown[key] = line
            active |= run["state"] not in TERMINAL
        if active:
            quiet_since, quiet_polls = None, 0
        else:
            if quiet_since is None:
                quiet_since = time.monotonic()
                say(f"all {len(runs)} run(s) finished; checking for runs they trigger...")
            waiting = pending_asset_triggers(api, asset_dags)
            quiet_polls = 0 if waiting else quiet_polls + 1
            if quiet_polls >= 2 or time.monotonic() - quiet_since >= settle:
                if waiting:
                    say(
                        f"still queued after {settle:.0f}s, not followed: Asset events for {', '.join(waiting)}"
                    )
                return runs
        if time.monotonic() - t0 > timeout:
            still = [
                f"{d} {r} ({run['state']})" for (d, r), run in runs.items() if run["state"] not in TERMINAL
            ]
            raise RunnerError(
                f"timed out after {timeout:.0f}s; still not finished: {', '.join(still) or 'none'}. "
                f"Airflow logs: {procs.log_dir} (task logs under dag_id=*/); UI: {al.ui_url()}"
            )
        time.sleep(POLL_S)


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
