"""Where a task instance's time goes on a real deployment, itemized from Airflow's own records.

Reads a finished deployment's metadata DB (SQLite: the demo's; the task_instance table) and its task logs
(``<logs>/dag_id=*/run_id=*/task_id=*/[map_index=*/]attempt=*.log``, JSON lines) and cuts every task
instance that ran into consecutive segments, each marked with whose cost it is:

| segment | from -> to | whose |
|---|---|---|
| dispatch | queued -> start (TI `start_date`: the supervisor's "run" call) | Airflow: scheduler -> executor -> worker -> supervisor |
| startup | start -> the task process's first line ("Pre Execute") | Airflow: task process fork, Task SDK start-up |
| parse | -> "Worker startup parse complete" | Airflow's DAG bundle + DagBag; ours: the DAG file (`dag_file_parse_ms`, reported apart) |
| pre | -> end of the "Pre Execute" group | Airflow: input XComs, templates; ours: the audit listener's "running" record |
| execute | -> "Done. Returned value" (or the log's last line before "Post Execute") | ours: the task body |
| post | -> TI `end_date` | Airflow: XCom push, state update; ours: the audit listener's "success" record |

and, per DAG run, the time between its tasks (run span minus the time any of its tasks was running): the
scheduler noticing a finished task and queueing the next (Airflow), but also any wait for a free executor
slot while other runs use them, retry delays and deferrals (the demo has none of the last two). EmptyOperators and skipped-before-start
tasks have no log and are left out. Used by benchmarks/bench_demo.py; runnable on a kept folder:

    .venv/bin/python benchmarks/task_costs.py AIRFLOW_HOME
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import statistics
import sys
from pathlib import Path

SEGMENTS = ("dispatch", "startup", "parse", "pre", "execute", "post")
WHOSE = {
    "dispatch": "Airflow",
    "startup": "Airflow",
    "parse": "Airflow (+ our DAG file)",
    "pre": "Airflow (+ our audit listener)",
    "execute": "ours (task body)",
    "post": "Airflow (+ our audit listener)",
}


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    value = value.replace("Z", "+00:00").replace(" ", "T")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def _log_path(logs: Path, ti: dict) -> Path:
    parts = [f"dag_id={ti['dag_id']}", f"run_id={ti['run_id']}", f"task_id={ti['task_id']}"]
    if ti["map_index"] >= 0:
        parts.append(f"map_index={ti['map_index']}")
    return logs.joinpath(*parts, f"attempt={ti['try_number']}.log")


def _marks(path: Path) -> dict[str, float]:
    """Timestamps of the log lines that bound the segments (first occurrence of each)."""
    marks: dict[str, float] = {}
    last_before_post: float | None = None
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        event, t = str(rec.get("event", "")), _ts(rec.get("timestamp"))
        if t is None:
            continue
        if event.startswith("::group::Pre Execute"):
            marks.setdefault("pre_execute", t)
        elif event.startswith("Worker startup parse complete"):
            marks.setdefault("parsed", t)
            marks.setdefault("dag_file_parse_ms", float(rec.get("dag_file_parse_ms") or 0.0))
        elif event == "::endgroup::" and "parsed" in marks:
            marks.setdefault("pre_end", t)
        elif event.startswith("Done. Returned value") or event.startswith("::group::Post Execute"):
            marks.setdefault("done", t)
        if "done" not in marks:
            last_before_post = t
    if "done" not in marks and last_before_post is not None:  # failed or skipped by the body: its last line
        marks["done"] = last_before_post
    return marks


def task_instances(db: Path) -> list[dict]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute(
            "select dag_id, run_id, task_id, map_index, try_number, state, operator, queued_dttm, "
            "start_date, end_date from task_instance where start_date is not null"
        ).fetchall()
    finally:
        con.close()
    return [dict(r) for r in rows]


def itemize(home: Path) -> dict:
    """Per task instance segments and per run gaps for the deployment at AIRFLOW_HOME `home`."""
    logs = home / "logs"
    items: list[dict] = []
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for ti in task_instances(home / "airflow.db"):
        queued, start, end = _ts(ti["queued_dttm"]), _ts(ti["start_date"]), _ts(ti["end_date"])
        if start is None or end is None:
            continue
        runs.setdefault((ti["dag_id"], ti["run_id"]), []).append((start, end))
        path = _log_path(logs, ti)
        if queued is None or not path.is_file():  # EmptyOperator / skipped without running: no process
            continue
        m = _marks(path)
        if not {"pre_execute", "parsed", "pre_end", "done"} <= m.keys():
            continue
        bounds = [queued, start, m["pre_execute"], m["parsed"], m["pre_end"], m["done"], end]
        seg = {name: max(b - a, 0.0) for name, a, b in zip(SEGMENTS, bounds, bounds[1:], strict=False)}
        items.append(
            {
                "task": f"{ti['dag_id'].split('__')[-1]}.{ti['task_id']}",
                "state": ti["state"],
                "dag_file_parse": m["dag_file_parse_ms"] / 1000,
                **seg,
            }
        )
    between = []
    for intervals in runs.values():
        intervals.sort()
        span = intervals[-1][1] - intervals[0][0] if intervals else 0.0
        busy, cur_s, cur_e = 0.0, None, None
        for s, e in intervals:
            if cur_e is None or s > cur_e:
                busy += (cur_e - cur_s) if cur_e is not None else 0.0
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        busy += (cur_e - cur_s) if cur_e is not None else 0.0
        between.append(max(span - busy, 0.0))
    return {"items": items, "between_tasks": between}


def report(result: dict, out=print) -> dict:
    """Print the itemized table; return {segment: (median, total)} plus totals."""
    items = result["items"]
    if not items:
        out("  (no task instance with a log to itemize)")
        return {}
    summary: dict[str, tuple[float, float]] = {}
    out(f"  per task instance ({len(items)} that ran a process), median / total seconds:")
    for seg in (*SEGMENTS, "dag_file_parse"):
        values = [i[seg] for i in items]
        summary[seg] = (statistics.median(values), sum(values))
        label = "  of which our DAG file" if seg == "dag_file_parse" else seg
        whose = "ours" if seg == "dag_file_parse" else WHOSE[seg]
        out(f"    {label:<24} {summary[seg][0]:6.2f} / {summary[seg][1]:7.1f}   {whose}")
    total = sum(summary[s][1] for s in SEGMENTS)
    ours = summary["execute"][1]
    gaps = result["between_tasks"]
    out(
        f"    {'all segments':<24} {'':6} / {total:7.1f}   task bodies {ours:.1f} s = {ours / total:.0%}; "
        f"the rest per task: {(total - ours) / len(items):.2f} s"
    )
    out(
        f"  between tasks of a run (scheduler hops, waits for a free slot), all runs: {sum(gaps):.1f} s "
        f"over {len(gaps)} run(s)"
    )
    by_task: dict[str, list[dict]] = {}
    for i in items:
        by_task.setdefault(i["task"], []).append(i)
    out(f"  per task (median seconds): {'task':<30} {'n':>3} {'execute':>8} {'the rest':>9}")
    for name in sorted(by_task):
        rows = by_task[name]
        ex = statistics.median(r["execute"] for r in rows)
        rest = statistics.median(sum(r[s] for s in SEGMENTS if s != "execute") for r in rows)
        out(f"  {'':<27}{name:<30} {len(rows):>3} {ex:8.2f} {rest:9.2f}")
    return {
        **{k: {"median": round(v[0], 3), "total": round(v[1], 1)} for k, v in summary.items()},
        "between_tasks_total": round(sum(gaps), 1),
        "task_instances": len(items),
    }


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    report(itemize(Path(sys.argv[1])))
