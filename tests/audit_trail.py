"""The audit-trail check shared by the tiers that run real Airflow processes (tests/integration, tests/stack):
DAG-run hooks fire in the scheduler only (never under ``dag.test()``), so only those tiers can see them."""

from __future__ import annotations

from collections.abc import Iterable

from tests.polling import wait_for


def dag_run_events(uri: str, subjects: set[str]) -> dict[str, list[tuple[str, dict]]]:
    """subject (``dag_id/run_id``) -> [(event, payload)] of its ``dag_run.*`` listener records, in order."""
    from mlops_bundle import audit

    out: dict[str, list[tuple[str, dict]]] = {s: [] for s in subjects}
    for rec in audit.iter_records(uri):
        if rec["subject"] in out and rec["event"].startswith("dag_run.") and rec["source"] == "listener":
            out[rec["subject"]].append((rec["event"], rec["payload"]))
    return out


def assert_dag_runs_audited(uri: str, runs: Iterable[tuple[str, str, str]], timeout: float = 60) -> None:
    """Each (dag_id, run_id, final state) has exactly a ``dag_run.running`` record, then its terminal record
    ``dag_run.<final state>``, both with subject ``dag_id/run_id`` and that run in the payload.

    Polls: the scheduler writes the terminal record just after the REST API already shows the final state.
    """
    expected = {f"{dag_id}/{run_id}": (dag_id, run_id, state) for dag_id, run_id, state in runs}
    assert expected, "no DAG runs to check"

    def complete(events) -> bool:
        return all(
            [e for e, _ in events[s]] == ["dag_run.running", f"dag_run.{state}"]
            for s, (_, _, state) in expected.items()
        )

    events = wait_for(
        lambda: dag_run_events(uri, set(expected)),
        complete,
        timeout=timeout,
        interval=1.0,
        describe=lambda ev: "DAG-run audit records in "
        + uri
        + " are not [dag_run.running, dag_run.<final state>] for every run: "
        + repr({s: [e for e, _ in ev[s]] for s in expected}),
    )
    for subject, (dag_id, run_id, _) in expected.items():
        for event, payload in events[subject]:
            assert (payload["dag_id"], payload["run_id"]) == (dag_id, run_id), (subject, event, payload)
