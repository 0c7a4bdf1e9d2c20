"""Airflow-facing glue of the MLOps bundle: assets, hooks into storage, task bodies, operators.

Only Airflow glue lives here (connections, context, exceptions); the work is done by the pure
``mlops_bundle`` library. Heavy imports stay inside functions so DAG parsing stays fast.
"""
