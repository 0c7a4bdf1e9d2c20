"""Names shared by the DAGs, the plugins and the local runner (no Airflow import, so scripts can use it)."""

VALIDATED_DATA = "mlops.validated_data"
# the DAG that emits VALIDATED_DATA (its id is the function name in dags/ingest.py)
INGEST_DAG = "ingest"
CHAMPION_MODEL = "mlops.champion_model"
DRIFT_DETECTED = "mlops.drift_detected"

# The Airflow pool that bounds concurrently training candidates (slots: training.pool_slots in the config).
TRAINING_POOL = "mlops_training"
