"""API-triggered runs with the official Python client (apache-airflow-client 3.3.2): get a JWT, trigger
ingest with conf, follow runs, approve a pending promotion, roll the champion back.

    export AIRFLOW_URL=http://localhost:8080 AIRFLOW_USERNAME=admin AIRFLOW_PASSWORD=...
    python examples/api_client.py walkthrough 2026-01-07     # every step below, in order
    python examples/api_client.py --dataset diabetes walkthrough 2026-01-07   # another data set's DAGs

Each data set of the deployment has its own DAGs, named <dataset>__<kind> (churn__ingest, churn__train,
churn__rollback, ...). --dataset NAME (before or after the step; default $MLOPS_DATASET, else churn) picks
the data set; a DAG argument may be a kind (ingest, train, monitor, rollback, backfill, registry_watch:
that data set's DAG) or a full DAG id (churn__train, audit_verify).

Steps (each usable on its own; results go to stdout, progress to stderr):

    token                         print a JWT (export AIRFLOW_TOKEN=... to reuse it)
    unpause DAG...                unpause DAGs that are paused (runs of paused DAGs stay queued)
    trigger-ingest DATE           trigger `<dataset>__ingest` with conf {"date": DATE}; print the run id
    wait DAG RUN                  follow a run, printing run and task state changes; exit 1 unless success
    train-run INGEST_RUN          print the `<dataset>__train` run that the ingest run's
                                  mlops.<dataset>.validated_data event started
    approve RUN                   wait until train RUN's `approve` task awaits input, show the gate numbers,
                                  approve; exit 3 if the gate rejected the model (nothing to approve)
    trigger-train END_DATE [--force WHY]
                                  trigger `<dataset>__train` for a window ending END_DATE; --force overrides
                                  the gate's verdict with a recorded justification (a human still approves)
    rollback REASON [--to-version N]
                                  trigger `<dataset>__rollback` (champion -> `previous`, or version N); print
                                  the run id
    walkthrough DATE              unpause, trigger-ingest, wait, train-run, approve (if the gate rejects:
                                  trigger-train DATE --force WHY, approve as the second person), wait,
                                  rollback, wait

Four eyes: a forced promotion must be approved by a different user from the one who triggered it; Airflow
refuses the triggering user's approval (403). `approve` answers as AIRFLOW_USERNAME (run it as the second
person); the walkthrough approves its forced run as AIRFLOW_APPROVER_USERNAME / AIRFLOW_APPROVER_PASSWORD.

Environment: AIRFLOW_URL (default http://localhost:8080), AIRFLOW_USERNAME and AIRFLOW_PASSWORD (for the
token) or AIRFLOW_TOKEN; AIRFLOW_APPROVER_USERNAME and AIRFLOW_APPROVER_PASSWORD (the second person, for the
walkthrough's forced promotion); MLOPS_DATASET (the default of --dataset: churn); WAIT_TIMEOUT seconds per
wait (1800), POLL_SECONDS (3), REPEAT_ANSWER_DELAY (5).
Needs only `pip install apache-airflow-client==3.3.2` (the token request uses the standard library).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import airflow_client.client as af
import urllib3
from airflow_client.client.exceptions import ApiException, NotFoundException

AIRFLOW_URL = os.environ.get("AIRFLOW_URL", "http://localhost:8080").rstrip("/")
WAIT_TIMEOUT = float(os.environ.get("WAIT_TIMEOUT", "1800"))
POLL_SECONDS = float(os.environ.get("POLL_SECONDS", "3"))
# a repeated question is answered after this pause, so the scheduler has handled the paused attempt
REPEAT_ANSWER_DELAY = float(os.environ.get("REPEAT_ANSWER_DELAY", "5"))
REJECTED = 3  # exit code of `approve` when the gate rejected the model, so nothing awaits approval
DATASET = os.environ.get("MLOPS_DATASET") or "churn"  # the data set whose DAGs the steps use
# the kinds of a data set's DAGs: its DAG ids are <dataset>__<kind>
KINDS = ("ingest", "train", "monitor", "rollback", "backfill", "registry_watch")


class StepError(Exception):
    """A step cannot go on; the message says what is wrong and where to look."""


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


# -------------------------------------------------------------------------------------------- token


def get_token(url: str = AIRFLOW_URL, who: str = "AIRFLOW") -> str:
    """POST /auth/token (not part of the generated client): username + password -> a JWT.

    ``who``: the env prefix of the credentials (AIRFLOW_USERNAME/..., or AIRFLOW_APPROVER_USERNAME/...).
    """
    user, password = os.environ.get(f"{who}_USERNAME"), os.environ.get(f"{who}_PASSWORD")
    if not user or not password:
        also = " (or AIRFLOW_TOKEN)" if who == "AIRFLOW" else " (the second person who approves)"
        raise StepError(f"set {who}_USERNAME and {who}_PASSWORD{also} to call {url}")
    req = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)["access_token"]
    except urllib.error.HTTPError as exc:
        raise StepError(
            f"{url}/auth/token answered {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None
    except urllib.error.URLError as exc:
        raise StepError(f"cannot reach {url}/auth/token: {exc.reason} (is AIRFLOW_URL right?)") from None


def client(token: str | None = None) -> af.ApiClient:
    token = token or os.environ.get("AIRFLOW_TOKEN") or get_token()
    return af.ApiClient(af.Configuration(host=AIRFLOW_URL, access_token=token))


def approver_client() -> af.ApiClient:
    """A client logged in as the second person (AIRFLOW_APPROVER_USERNAME / AIRFLOW_APPROVER_PASSWORD)."""
    return client(get_token(who="AIRFLOW_APPROVER"))


# -------------------------------------------------------------------------------------------- steps


def dag(kind: str, dataset: str | None = None) -> str:
    """A data set's DAG id: ``dag("train", "churn")`` -> ``churn__train``; other names (a full DAG id such
    as ``churn__train`` or ``audit_verify``) are returned as they are."""
    return f"{dataset or DATASET}__{kind}" if kind in KINDS else kind


def unpause(api: af.ApiClient, *dag_ids: str, dataset: str | None = None) -> None:
    """Unpause DAGs (kinds of ``dataset``'s DAGs or DAG ids) that are paused."""
    dags = af.DAGApi(api)
    for dag_id in (dag(d, dataset) for d in dag_ids):
        if dags.get_dag(dag_id).is_paused:
            dags.patch_dag(dag_id, af.DAGPatchBody(is_paused=False))
            say(f"unpaused {dag_id}")


def trigger(api: af.ApiClient, dag_id: str, conf: dict) -> str:
    """POST a run with conf (logical_date is required by the API and may be null); return its run id."""
    body = af.TriggerDAGRunPostBody(logical_date=None, conf=conf)
    run = af.DagRunApi(api).trigger_dag_run(dag_id, body)
    say(f"triggered {dag_id} with conf {json.dumps(conf)}: run {run.dag_run_id}")
    return run.dag_run_id


def trigger_ingest(api: af.ApiClient, date: str, dataset: str | None = None) -> str:
    return trigger(api, dag("ingest", dataset), {"date": date})


def trigger_train(
    api: af.ApiClient, end_date: str, force: str | None = None, dataset: str | None = None
) -> str:
    conf: dict = {"end_date": end_date}
    if force:
        conf.update(force=True, justification=force)
    return trigger(api, dag("train", dataset), conf)


def rollback(
    api: af.ApiClient, reason: str, to_version: str | None = None, dataset: str | None = None
) -> str:
    conf = {"reason": reason}
    if to_version:
        conf["to_version"] = str(to_version)
    return trigger(api, dag("rollback", dataset), conf)


def _value(state) -> str | None:
    return None if state is None else getattr(state, "value", str(state))


def wait(api: af.ApiClient, dag_id: str, run_id: str, dataset: str | None = None) -> None:
    """Follow a run to its end, printing run and task state changes; raise unless it succeeded.

    ``dag_id``: a DAG id, or the kind of one of ``dataset``'s DAGs."""
    runs, tis = af.DagRunApi(api), af.TaskInstanceApi(api)
    dag_id = dag(dag_id, dataset)
    deadline = time.monotonic() + WAIT_TIMEOUT
    last, seen = None, {}
    while True:
        state = _value(runs.get_dag_run(dag_id, run_id).state)
        if state != last:
            say(f"{dag_id} {run_id}: {last or '(new)'} -> {state}")
            last = state
        for ti in tis.get_task_instances(dag_id, run_id, limit=100).task_instances:
            name = ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")
            if seen.get(name, "") != (_value(ti.state) or "(no state)"):
                seen[name] = _value(ti.state) or "(no state)"
                say(f"  {dag_id}.{name} {seen[name]}")
        if state == "success":
            return
        if state == "failed":
            raise StepError(
                f"{dag_id} run {run_id} failed; see its task logs in the Airflow UI ({AIRFLOW_URL})"
            )
        if time.monotonic() > deadline:
            raise StepError(f"{dag_id} run {run_id} still {state} after {WAIT_TIMEOUT:.0f}s")
        time.sleep(POLL_SECONDS)


def train_run(api: af.ApiClient, ingest_run: str, dataset: str | None = None) -> str:
    """The train run started by the ingest run's asset event (the event lists the runs it created)."""
    assets = af.AssetApi(api)
    ingest, train = dag("ingest", dataset), dag("train", dataset)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while True:
        try:
            events = assets.get_asset_events(source_dag_id=ingest, source_run_id=ingest_run).asset_events
        except ApiException as exc:
            # Airflow 3.3 answers 500 while a created run is queued without a start_date: "not yet"
            if not (exc.status or 0) >= 500:
                raise
            events = []
        started = [r.run_id for e in events for r in e.created_dagruns if r.dag_id == train]
        if started:
            say(f"{ingest} {ingest_run} started {train} run {started[0]}")
            return started[0]
        if time.monotonic() > deadline:
            raise StepError(
                f"no {train} run started by {ingest} {ingest_run} after {WAIT_TIMEOUT:.0f}s ({train} paused?)"
            )
        time.sleep(POLL_SECONDS)


def _xcom(api: af.ApiClient, dag_id: str, run_id: str, task_id: str, key: str):
    entry = af.XComApi(api).get_xcom_entry(dag_id, task_id, run_id, key)
    value = entry.actual_instance.value
    return json.loads(value) if isinstance(value, str) else value


def gate_numbers(api: af.ApiClient, run_id: str, dataset: str | None = None) -> None:
    """The registered version with its holdout metrics, and the gate's verdict from evaluate_gate's log."""
    train = dag("train", dataset)
    best = _xcom(api, train, run_id, "register_best", "return_value")
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(best["metrics"].items()) if k != "fit_seconds")
    say(f"  candidate {best['candidate']} -> version {best['version']}: {metrics}")
    tis = af.TaskInstanceApi(api)
    ti = tis.get_task_instance(train, run_id, "evaluate_gate")
    raw = tis.get_log_without_preload_content(
        train, run_id, "evaluate_gate", ti.try_number, accept="application/json"
    )
    for line in json.loads(raw.data)["content"]:
        text = line.get("event", "") if isinstance(line, dict) else str(line)
        if "gate evaluation" in text or "gate decision" in text:
            say(f"  {text}")


def _past(tis: af.TaskInstanceApi, train: str, run_id: str, task_id: str) -> bool:
    """The train run's ``task_id`` has been scheduled at least (or the run ended without it)."""
    try:
        return _value(tis.get_task_instance(train, run_id, task_id).state) is not None
    except NotFoundException:
        return False


def approve(api: af.ApiClient, run_id: str, dataset: str | None = None) -> bool:
    """Wait for the approval request of a train run and approve it; False if the gate rejected the model.

    Returns once the approval task got past the question. Airflow 3.3 can fail the resumed attempt when
    the answer arrives within about a second of the question (before the scheduler has handled the
    pausing attempt's exit); the task's retry then asks again, and this answers once more, after
    REPEAT_ANSWER_DELAY seconds (answering the repeat at once can meet the same race again).
    """
    tis, runs = af.TaskInstanceApi(api), af.DagRunApi(api)
    train = dag("train", dataset)
    deadline = time.monotonic() + WAIT_TIMEOUT
    answered = None  # the try number whose question was answered last
    while True:
        try:
            ti = tis.get_task_instance(train, run_id, "approve")
            state = _value(ti.state)
        except NotFoundException:
            ti, state = None, None  # not created yet
        if state == "success" and answered is not None and _past(tis, train, run_id, "promote"):
            # Airflow 3.3 can report the answered attempt "success" for a moment and then put it up for
            # retry (and ask again): done only once the next step has started
            return True
        if state == "awaiting_input" and ti.try_number != answered:
            if answered is None:
                say(f"{train} {run_id} awaits approval:")
                try:
                    gate_numbers(api, run_id, dataset)
                except (ApiException, KeyError, ValueError) as exc:
                    say(f"  (gate numbers not available: {exc})")
            else:
                say(f"{train} {run_id}: Airflow asked again on try {ti.try_number} (try {answered} failed "
                    f"after the answer); approving again in {REPEAT_ANSWER_DELAY:g} s")  # fmt: skip
                time.sleep(REPEAT_ANSWER_DELAY)
            payload = af.UpdateHITLDetailPayload(chosen_options=["Approve"], params_input={})
            try:
                done = tis.update_hitl_detail(train, run_id, "approve", -1, payload)
            except ApiException as exc:
                if exc.status != 403:
                    raise
                raise StepError(
                    f"Airflow refused this user's approval of {train} run {run_id} (403: {exc.body}). Four "
                    "eyes: the user who triggered a forced promotion cannot approve it; approve as a "
                    "second person (AIRFLOW_USERNAME/AIRFLOW_PASSWORD of another user)"
                ) from None
            by = done.responded_by.name
            say(f"approved promotion in {train} run {run_id}: {done.chosen_options} by {by}")
            answered = ti.try_number
        if state in ("skipped", "removed") and answered is None:
            say(f"{train} {run_id} did not ask for approval (approve: {state}): the gate rejected the model")
            gate_numbers(api, run_id, dataset)
            return False
        if _value(runs.get_dag_run(train, run_id).state) == "failed":
            when = "after" if answered is not None else "before"
            raise StepError(f"{train} run {run_id} failed {when} its approval step")
        if time.monotonic() > deadline:
            raise StepError(
                f"{train} {run_id}: approve still {state or 'not created'} after {WAIT_TIMEOUT:.0f}s"
            )
        time.sleep(POLL_SECONDS)


def decision(api: af.ApiClient, dag_id: str, run_id: str, task_id: str, key: str) -> str:
    d = _xcom(api, dag_id, run_id, task_id, key)
    return (
        f"{d['model_name']}: {d['verdict']} -> champion version {d['challenger']['version']} "
        f"(before: {d.get('previous_champion')}); {d['reason']}"
    )


def walkthrough(api: af.ApiClient, date: str, dataset: str | None = None) -> None:
    ds = dataset or DATASET
    unpause(api, "ingest", "train", "rollback", dataset=ds)
    ingest = trigger_ingest(api, date, dataset=ds)
    print(f"ingest run: {ingest}", flush=True)
    wait(api, "ingest", ingest, dataset=ds)
    train = train_run(api, ingest, dataset=ds)
    print(f"train run: {train}", flush=True)
    if not approve(api, train, dataset=ds):
        wait(api, "train", train, dataset=ds)
        why = f"API walkthrough: promote the {ds} model trained up to {date} for a rollback drill"
        train = trigger_train(api, date, force=why, dataset=ds)
        print(f"train run (forced): {train}", flush=True)
        with approver_client() as second:  # four eyes: not the user who triggered the forced run
            if not approve(second, train, dataset=ds):
                raise StepError(f"forced {dag('train', ds)} run {train} did not ask for approval")
    print(f"approved: {train}", flush=True)
    wait(api, "train", train, dataset=ds)
    print(f"promotion: {decision(api, dag('train', ds), train, 'promote', 'decision')}", flush=True)
    back = rollback(api, f"API walkthrough: roll back the promotion of {date}", dataset=ds)
    print(f"rollback run: {back}", flush=True)
    wait(api, "rollback", back, dataset=ds)
    print(f"rollback: {decision(api, dag('rollback', ds), back, 'roll_back', 'return_value')}", flush=True)


# ---------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    dataset_help = "the data set whose DAGs (<dataset>__<kind>) the step uses (default: %(default)s)"
    parser.add_argument("--dataset", default=DATASET, help=dataset_help)
    # --dataset also after the step (SUPPRESS: a step's default does not override the one given before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", default=argparse.SUPPRESS, help=dataset_help)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def step(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common])

    step("token")
    step("unpause").add_argument("dag_ids", nargs="+", metavar="DAG", help="a kind (train) or a DAG id")
    step("trigger-ingest").add_argument("date")
    p = step("wait")
    p.add_argument("dag_id", metavar="DAG", help="a kind (train) or a DAG id (churn__train)")
    p.add_argument("run_id")
    step("train-run").add_argument("ingest_run")
    step("approve").add_argument("run_id")
    p = step("trigger-train")
    p.add_argument("end_date")
    p.add_argument("--force", metavar="WHY", help="override the gate; WHY is the recorded justification")
    p = step("rollback")
    p.add_argument("reason")
    p.add_argument("--to-version")
    step("walkthrough").add_argument("date")
    args = parser.parse_args(argv)
    ds = args.dataset

    try:
        if args.cmd == "token":
            print(get_token())
            return 0
        with client() as api:
            if args.cmd == "unpause":
                unpause(api, *args.dag_ids, dataset=ds)
            elif args.cmd == "trigger-ingest":
                print(trigger_ingest(api, args.date, dataset=ds))
            elif args.cmd == "wait":
                wait(api, args.dag_id, args.run_id, dataset=ds)
            elif args.cmd == "train-run":
                print(train_run(api, args.ingest_run, dataset=ds))
            elif args.cmd == "approve":
                return 0 if approve(api, args.run_id, dataset=ds) else REJECTED
            elif args.cmd == "trigger-train":
                print(trigger_train(api, args.end_date, args.force, dataset=ds))
            elif args.cmd == "rollback":
                print(rollback(api, args.reason, args.to_version, dataset=ds))
            else:
                walkthrough(api, args.date, dataset=ds)
    except StepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ApiException as exc:
        print(f"error: Airflow API answered {exc.status} {exc.reason}: {exc.body}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as exc:
        print(f"error: cannot reach the Airflow API at {AIRFLOW_URL}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
