"""
### Ingest: landing batch -> Great Expectations gate -> staging (or quarantine)

One per data set (`<dataset>__ingest`). Runs on the config's `ingest.schedule` (default daily at 00:30 UTC) and on demand from the UI or the REST API. For the run's batch date it

1. **discovers** the landing files `landing/<dataset>/<date>/*.csv|*.csv.gz|*.parquet` under the storage
   root (a local folder or `s3://bucket/prefix` through the Airflow AWS connection in the config), or
   under the `source` override;
2. **reads** and **coerces** them to the configured schema, **fingerprints** the canonical data (sha256),
   and runs the **Great Expectations** checkpoint (Data Docs are updated);
3. on success writes the partition `staging/<dataset>/ds=<date>/` atomically (a rerun replaces it, never
   duplicates it) and emits the data set's **`mlops.<dataset>.validated_data`** Asset event (extra: dataset, date, rows, fingerprint, `staging_uri`, gx_success);
   a batch identical to what another run staged changes nothing: the task ends **skipped**, no event, no
   train run (reason in the log and the audit record `ingest.unchanged`);
4. on failure copies the raw batch and the GX result to `quarantine/<dataset>/ds=<date>/<attempt>/` and
   fails without retrying, naming the failed expectations, columns and counts.

Landing files are never modified or deleted.

**Params**: `date` (YYYY-MM-DD; default: the day before the run's logical date, i.e. the day that just
ended), `source` (optional `file://` or `s3://` folder holding the batch, instead of the landing folder).
A `source` must lie under a prefix of the config's `ingest.allowed_sources` (empty by default: no override
allowed); anything else fails `discover_files` at once, before any listing, with an error naming only the
allowlist. `..` segments, percent-escapes, `?`/`#`, backslashes and symlinks leading out are refused.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from mlops_airflow import assets, names
from mlops_airflow.dag_defaults import dag_args, date_param
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    validated_data = assets.validated_data(ds.name)

    @dag(
        dag_id=ds.dag_id(names.INGEST),
        schedule=ds.ingest_schedule,  # ingest.schedule of the config
        max_active_runs=4,
        params={
            "date": date_param("Batch date YYYY-MM-DD; empty = the day before the run's logical date"),
            "source": Param(
                None,
                type=["null", "string"],
                pattern=r"^(file|s3)://.+",
                description=(
                    "Optional folder URI holding the batch instead of landing/<dataset>/<date>/; must be under "
                    "a prefix of the config's ingest.allowed_sources (empty by default: no override allowed)"
                ),
            ),
        },
        doc_md=ds.doc(__doc__),
        **dag_args("ingest", "great-expectations", dataset=ds.name),
    )
    def ingest():
        @task
        def discover_files(params=None, logical_date=None, dag_run=None) -> dict:
            from mlops_airflow.ingest_tasks import discover

            return discover(params, logical_date, dag_run.run_after)

        @task(outlets=[validated_data])
        def validate_and_stage(batch: dict, outlet_events=None, run_id=None, ti=None) -> dict:
            from mlops_airflow.ingest_tasks import validate_and_stage as run

            result = run(batch, run_id, ti.try_number, ti)  # skipped (no event) when unchanged
            outlet_events[validated_data].extra = {
                k: result[k] for k in ("dataset", "date", "rows", "fingerprint", "staging_uri", "gx_success")
            }
            return result

        validate_and_stage(discover_files())

    ingest()


for _ds in datasets():
    build(_ds)
