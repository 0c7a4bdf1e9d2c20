"""The ingest DAG against S3: a moto server subprocess reached through a real Airflow AWS connection."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from mlops_bundle.sample import generate_batch

pytestmark = pytest.mark.usefixtures("airflow_db")


def _keys(client, bucket, prefix):
    resp = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def _put_csv(client, bucket, key, df):
    client.put_object(Bucket=bucket, Key=key, Body=df.to_csv(index=False).encode())


def test_s3_good_batch_staged_in_s3(dagbag, s3_bucket):
    client, bucket = s3_bucket
    date = "2026-04-01"
    df = generate_batch(date, rows=600)
    _put_csv(client, bucket, f"lake/landing/churn/{date}/batch.csv", df)
    raw_before = client.get_object(Bucket=bucket, Key=f"lake/landing/churn/{date}/batch.csv")["Body"].read()

    dr = dagbag.get_dag("churn__ingest").test(run_conf={"date": date, "source": None})
    assert dr.state == "success"
    assert _keys(client, bucket, f"lake/staging/churn/ds={date}/") == [
        f"lake/staging/churn/ds={date}/_manifest.json",
        f"lake/staging/churn/ds={date}/part-0.parquet",
    ]
    body = client.get_object(Bucket=bucket, Key=f"lake/staging/churn/ds={date}/part-0.parquet")["Body"].read()
    staged = pd.read_parquet(io.BytesIO(body))
    assert len(staged) == 600 and list(staged.columns) == list(df.columns)
    ti = dr.get_task_instance("validate_and_stage")
    result = ti.xcom_pull(task_ids="validate_and_stage")
    assert result["staging_uri"] == f"s3://{bucket}/lake/staging/churn/ds={date}"
    after = client.get_object(Bucket=bucket, Key=f"lake/landing/churn/{date}/batch.csv")["Body"].read()
    assert after == raw_before


def test_s3_bad_batch_quarantined_in_s3(dagbag, s3_bucket):
    client, bucket = s3_bucket
    date = "2026-04-02"
    _put_csv(
        client,
        bucket,
        f"lake/landing/churn/{date}/batch.csv",
        generate_batch(date, 300, corrupt="duplicate_ids"),
    )
    dr = dagbag.get_dag("churn__ingest").test(run_conf={"date": date, "source": None})
    assert dr.state == "failed"
    assert _keys(client, bucket, f"lake/staging/churn/ds={date}/") == []
    keys = _keys(client, bucket, f"lake/quarantine/churn/ds={date}/")
    assert any(k.endswith("/raw/batch.csv") for k in keys)
    reason_key = next(k for k in keys if k.endswith("/reason.json"))
    reason = json.loads(client.get_object(Bucket=bucket, Key=reason_key)["Body"].read())
    assert any("customer_id" in p and "unique" in p for p in reason["problems"]), reason["problems"]
    assert _keys(client, bucket, f"lake/landing/churn/{date}/") == [f"lake/landing/churn/{date}/batch.csv"]


def test_s3_source_override(dagbag, s3_bucket, monkeypatch):
    client, bucket = s3_bucket
    date = "2026-04-03"
    monkeypatch.setenv("MLOPS_INGEST__ALLOWED_SOURCES", json.dumps([f"s3://{bucket}/drops/partner-a/"]))
    _put_csv(client, bucket, "drops/partner-a/export.csv", generate_batch(date, rows=250))
    dr = dagbag.get_dag("churn__ingest").test(
        run_conf={"date": date, "source": f"s3://{bucket}/drops/partner-a"}
    )
    assert dr.state == "success"
    assert f"lake/staging/churn/ds={date}/part-0.parquet" in _keys(client, bucket, "lake/staging/")


@pytest.mark.parametrize("where", ["look-alike prefix", "other bucket"])
def test_s3_source_outside_the_allowlist_is_never_listed(dagbag, s3_bucket, monkeypatch, task_errors, where):
    """The platform's AWS connection can read the look-alike prefix and the other bucket; the allowlist
    keeps a trigger from pointing ingest at them (no listing, no quarantine copy, no file name shown)."""
    client, bucket = s3_bucket
    date = "2026-04-04"
    monkeypatch.setenv("MLOPS_INGEST__ALLOWED_SOURCES", json.dumps([f"s3://{bucket}/drops/partner-a/"]))
    other = f"{bucket}-other"
    client.create_bucket(Bucket=other)
    _put_csv(client, bucket, "drops/partner-a-evil/payroll-export.csv", generate_batch(date, rows=50))
    _put_csv(client, other, "drops/partner-a/payroll-export.csv", generate_batch(date, rows=50))
    source = {"look-alike prefix": f"s3://{bucket}/drops/partner-a-evil", "other bucket": f"s3://{other}/"}
    dr = dagbag.get_dag("churn__ingest").test(run_conf={"date": date, "source": source[where]})
    assert dr.state == "failed"
    error = task_errors["discover_files"]
    assert error.startswith("AirflowFailException: the `source` Param (s3://...) is refused"), error
    assert f"s3://{bucket}/drops/partner-a/" in error and "ingest.allowed_sources" in error
    assert "payroll" not in error and "evil" not in error and other not in error
    assert "validate_and_stage" not in task_errors
    assert _keys(client, bucket, "lake/") == []
