"""A LocalExecutor whose task processes start with the bundle's libraries already imported.

Airflow's LocalExecutor forks ``parallelism`` workers from the scheduler in ``start()``; each task then runs
in a process the Task SDK supervisor forks from a worker. Whatever the worker has imported, the task
inherits. This executor preloads :func:`mlops_airflow.worker_preload.modules` (the one list, shared with
the Celery workers) **once, in the scheduler, just before it forks the workers**: the workers share those
pages with the scheduler copy-on-write (Airflow freezes the GC around the fork so they stay shared), a
worker re-forked after a crash inherits them too, and the imports cost one core once instead of
``parallelism`` cores at once. Measured against preloading in each worker after the fork, see
benchmarks/bench_local_preload.py and benchmarks/README.md.

Selected by ``AIRFLOW__CORE__EXECUTOR=mlops_airflow.local_executor.PreloadingLocalExecutor``
(scripts/airflow_local.py; plugins/ is on the scheduler's sys.path). The same switch as the Celery workers:
``MLOPS_WORKER_PRELOAD=false`` on the scheduler runs the plain LocalExecutor behaviour (every task imports
what it needs). The same restart rule: library code (include/mlops_bundle, plugins/mlops_airflow) is read
when the scheduler starts, so restart the scheduler to run edited library code (DAG files are still
parsed per task).

With the ``spawn`` start method (macOS' default) nothing is forked from the scheduler, so each worker
preloads itself when it starts (:class:`PerWorkerPreloadingLocalExecutor` does that on Linux too; it is
kept for the benchmark's comparison).
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING

from airflow.executors import local_executor as _airflow_local
from airflow.executors.local_executor import LocalExecutor


def _preload() -> None:
    # imported here, not at the top: importing the module preloads (when the switch is on), which must
    # happen in the process whose children run the tasks, not wherever this module is imported
    from mlops_airflow import worker_preload

    worker_preload.preload_once()


def _preload_then_run_worker(**kwargs) -> None:
    """A worker's target: preload, then Airflow's own worker loop (module level: picklable for spawn)."""
    _preload()
    _airflow_local._run_worker(**kwargs)


class PreloadingLocalExecutor(LocalExecutor):
    """LocalExecutor + the bundle's preload (see the module docstring)."""

    # True: once in the scheduler before forking the workers; False: in each worker after it started
    preload_before_fork: bool = True

    def start(self) -> None:
        if self.preload_before_fork and self.is_mp_using_fork:
            _preload()
        super().start()

    def _spawn_worker(self) -> None:
        if self.preload_before_fork and self.is_mp_using_fork:
            super()._spawn_worker()  # the preload is already in this process; the fork inherits it
            return
        # Airflow's LocalExecutor._spawn_worker with the preloading target
        p = multiprocessing.Process(
            target=_preload_then_run_worker,
            kwargs={
                "logger_name": self.log.name,
                "input": self.activity_queue,
                "output": self.result_queue,
                "unread_messages": self._unread_messages,
                "team_conf": self.conf,
            },
        )
        p.start()
        if TYPE_CHECKING:
            assert p.pid
        self.workers[p.pid] = p


class PerWorkerPreloadingLocalExecutor(PreloadingLocalExecutor):
    """Each worker preloads after it was forked (the alternative the benchmark measures)."""

    preload_before_fork = False
