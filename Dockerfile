# The bundle's Airflow image: the official Airflow 3.3.2 image plus the locked dependencies and the
# mlops_bundle library. Used by every Airflow service in docker-compose.yaml and by the MLflow server
# (so client and server run the same MLflow, with psycopg2 and boto3 already present).
#
#   docker compose build            # or: docker build -t mlops-bundle-airflow:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

ENV MLFLOW_DISABLE_TELEMETRY=true \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

USER airflow
WORKDIR /opt/airflow

# 1. Dependencies first (a code change does not re-install them). The lock pins apache-airflow==3.3.2
#    too, so pip keeps the image's Airflow; --require-hashes because the lock carries hashes.
COPY --chown=airflow:0 requirements.lock /opt/airflow/requirements.lock
RUN pip install --require-hashes -r /opt/airflow/requirements.lock

# 2. The library, installed editable from /opt/airflow/include: docker-compose.yaml mounts ./include over
#    it, so library edits are live; without the mount the copied sources are used. With the project root
#    at /opt/airflow the library finds config/datasets/ and great_expectations/ where compose mounts them.
COPY --chown=airflow:0 pyproject.toml README.m[d] /opt/airflow/
COPY --chown=airflow:0 include/ /opt/airflow/include/
RUN pip install --no-deps -e /opt/airflow

# 3. Baked-in copies of the DAGs, plugins, config and GX suite, so the image also runs without bind mounts
#    (the compose file mounts the working tree over them).
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
COPY --chown=airflow:0 config/ /opt/airflow/config/
COPY --chown=airflow:0 great_expectations/ /opt/airflow/great_expectations/
