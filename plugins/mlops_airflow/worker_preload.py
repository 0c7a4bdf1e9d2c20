"""Import the task bodies' heavy libraries once, in the process the task processes are forked from.

Why: on Linux an Airflow 3 task runs in a process forked (``os.fork``, no exec) from the worker, so it
inherits whatever the worker has already imported. Without this module every task pays its own imports
(pandas, scikit-learn, MLflow, skops, boto3 + the amazon provider, Tink, Evidently, Great Expectations):
~8-12 s of CPU on a 2-core machine for a task whose real work may take a second, and twice that when two
tasks start at once on two workers. With it, the worker pays them once at start-up (logged below).

How it is wired: importing this module preloads (once per process, see :func:`preload_once`).
- Celery (the process stack): ``[celery] celery_config_options`` = ``mlops_airflow.celery_config.CELERY_CONFIG``
  (config/stack.env, shared by docker-compose.yaml and scripts/stack.py) lists this module in Celery's
  ``imports``, which a worker imports in its main process before it starts its pool.
- LocalExecutor (``make demo``/``make up``): ``mlops_airflow.local_executor.PreloadingLocalExecutor``
  (scripts/airflow_local.py) imports it in the scheduler just before it forks its workers.

The trade-off: library code (include/mlops_bundle, plugins/mlops_airflow) is read when the worker starts,
so a worker must be restarted to run edited library code (DAG files are still parsed per task); with the
LocalExecutor the workers are the scheduler's children: restart the scheduler. Set
``MLOPS_WORKER_PRELOAD=false`` on a worker (LocalExecutor: on the scheduler) to import per task instead
(e.g. while developing the bundle).
Only imports happen here: no config is read, no client or connection is created, no thread is started,
so nothing stateful crosses the fork.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV = "MLOPS_WORKER_PRELOAD"

# third-party modules the task bodies import lazily (scikit-learn's estimator modules come from
# mlops_bundle.training.FAMILIES, so a new family is preloaded without touching this list)
LIBRARIES = (
    "pandas",
    "pyarrow.parquet",
    "boto3",
    "airflow.providers.amazon.aws.hooks.s3",
    "airflow.providers.amazon.aws.hooks.base_aws",
    "mlflow",
    "mlflow.sklearn",
    "mlflow.pyfunc",
    "skops.io",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.impute",
    "sklearn.preprocessing",
    "evidently",
    "evidently.presets",
    "evidently.metrics",
    "great_expectations",
)

# the bundle's own modules: the library, then its Airflow glue (task bodies, storage/encryption hooks)
BUNDLE = (
    "mlops_bundle.config",
    "mlops_bundle.storage",
    "mlops_bundle.crypto",
    "mlops_bundle.ingest",
    "mlops_bundle.validation",
    "mlops_bundle.training",
    "mlops_bundle.promotion",
    "mlops_bundle.monitoring",
    "mlops_bundle.audit",
    "mlops_airflow.runtime",
    "mlops_airflow.crypto_hooks",
    "mlops_airflow.ingest_tasks",
    "mlops_airflow.train_tasks",
    "mlops_airflow.monitor_tasks",
)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV, "true").strip().lower() not in ("0", "false", "no", "off")


def modules() -> list[str]:
    """Every module to preload, in import order (the bundle's first: training sets its warning filters)."""
    from mlops_bundle.training import FAMILIES

    estimators = sorted({f.estimator.rpartition(".")[0] for f in FAMILIES.values()})
    return [*BUNDLE, *estimators, *LIBRARIES]


def preload(names: list[str]) -> tuple[float, list[str]]:
    """Import `names`; (seconds taken, the modules that failed). A failure is logged, not raised: the task
    that needs the module then fails at its own import with the real error."""
    t0 = time.perf_counter()
    failed = []
    # GX logs ~1,000 INFO lines about its docs registry at import: not worth a worker log
    logging.getLogger("great_expectations._docs_decorators").setLevel(logging.WARNING)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - reported below, raised again by the task that needs it
            failed.append(name)
            log.warning("worker preload: could not import %s (%s: %s)", name, type(exc).__name__, exc)
    return time.perf_counter() - t0, failed


# (seconds, modules, failed) of this process's preload; None until preload_once() ran it
_done: tuple[float, int, list[str]] | None = None


def preload_once(environ: Mapping[str, str] = os.environ) -> tuple[float, int, list[str]] | None:
    """The preload both executors use: import modules() once per process and log one line.

    None with the switch off (nothing is imported); otherwise (seconds, modules, failed) of the first call
    in this process, which later calls return without importing again. A forked child inherits the result.
    """
    global _done
    if not enabled(environ):
        return None
    if _done is None:
        names = modules()
        seconds, failed = preload(names)
        _done = (seconds, len(names), failed)
        log.warning(  # warning: the level Celery workers log at by default, so the line is always there
            "worker preload: imported the bundle and its libraries in %.1fs (%d modules, %d failed) in "
            "pid %d; task processes forked from it skip those imports. Restart the worker (LocalExecutor: "
            "the scheduler) to pick up edited library code, or set %s=false.",
            seconds,
            len(names),
            len(failed),
            os.getpid(),
            ENV,
        )
    return _done


preload_once()
