"""The Celery configuration of the bundle's workers: Airflow's defaults plus one preload module.

Named by ``[celery] celery_config_options`` in config/stack.env. Airflow builds the Celery app from this
dict in every process that needs one (scheduler, workers), so it must stay cheap to import: the heavy
imports live in :mod:`mlops_airflow.worker_preload`, which only a worker imports (Celery's ``imports``
setting, imported by the worker's main process before it forks its pool).
"""

from __future__ import annotations

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG = {
    **DEFAULT_CELERY_CONFIG,
    "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), "mlops_airflow.worker_preload"),
}
