"""EncryptFileOperator / DecryptFileOperator run for real: templates rendered by the operator's own Jinja
machinery, connections resolved by the Task SDK from ``AIRFLOW_CONN_*`` variables, S3 and KMS through the
amazon provider's hooks against the session's moto server.

The operators are called with ``execute(context)`` (``dag.test()`` only runs DAGs of the configured dags
folder). Every test checks that the key material appears in none of: the XCom return value, the rendered
template fields, the captured logs; and that it was registered with Airflow's secrets masker.
"""

from __future__ import annotations

import json
import logging
import os
import re

import airflow  # noqa: F401  (importing Airflow puts plugins/ on sys.path, as in a worker)
import pytest

from tests import lake as lake_files
from tests.envelope import kms_key_that_wrapped
from tests.services import aws_client

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def keyset(monkeypatch) -> str:
    from mlops_bundle.crypto import generate_local_keyset

    keyset = generate_local_keyset()
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_KEYSET", json.dumps({"conn_type": "generic", "password": keyset}))
    return keyset


@pytest.fixture
def kms_key(s3_bucket, moto_endpoint) -> str:
    kms = aws_client("kms", moto_endpoint)
    return kms.create_key(Description="operator test KEK")["KeyMetadata"]["Arn"]


def _secrets(keyset: str) -> list[str]:
    values = [k["keyData"]["value"] for k in json.loads(keyset)["key"]]
    return [keyset, json.dumps(json.loads(keyset)), *values]


def _run(op, context, caplog, capsys):
    """Render templates and execute like a task would; return (xcom value, everything logged)."""
    with caplog.at_level(logging.DEBUG):
        op.render_template_fields(context)
        result = op.execute(context)
    out = capsys.readouterr()
    return result, caplog.text + out.out + out.err


def _assert_no_key_material(keyset: str, op, result, logs: str) -> None:
    from airflow.sdk._shared.secrets_masker import _secrets_masker

    xcom = json.dumps(result)  # the XCom value must be JSON-safe
    assert set(result) == {"source", "destination", "bytes", "key_id"}
    rendered = " ".join(str(getattr(op, f)) for f in op.template_fields)
    for secret in _secrets(keyset):
        assert secret not in xcom and secret not in rendered and secret not in logs
    patterns = _secrets_masker().patterns
    for secret in _secrets(keyset):
        assert re.escape(secret) in patterns, "key material was not registered with mask_secret"


def test_local_round_trip_with_connection_keyset(tmp_path, keyset, caplog, capsys):
    from mlops_airflow.operators import DecryptFileOperator, EncryptFileOperator
    from mlops_bundle.crypto import LocalKeyring, is_encrypted

    data = os.urandom(3 << 20)
    (tmp_path / "batch-2026-01-05.csv").write_bytes(data)
    ctx = {"ds": "2026-01-05"}
    enc = EncryptFileOperator(
        task_id="encrypt",
        source=str(tmp_path / "batch-{{ ds }}.csv"),
        destination=str(tmp_path / "enc" / "batch-{{ ds }}.csv.enc"),
    )
    result, logs = _run(enc, ctx, caplog, capsys)
    key_id = LocalKeyring(keyset).current_key_id
    assert result == {
        "source": str(tmp_path / "batch-2026-01-05.csv"),
        "destination": str(tmp_path / "enc" / "batch-2026-01-05.csv.enc"),
        "bytes": len(data),
        "key_id": key_id,
    }
    assert key_id in logs
    _assert_no_key_material(keyset, enc, result, logs)
    blob = (tmp_path / "enc" / "batch-2026-01-05.csv.enc").read_bytes()
    assert is_encrypted(blob) and data[:1000] not in blob

    dec = DecryptFileOperator(
        task_id="decrypt",
        source="file://" + str(tmp_path / "enc" / "batch-{{ ds }}.csv.enc"),
        destination=str(tmp_path / "out" / "batch.csv"),
    )
    result, logs = _run(dec, ctx, caplog, capsys)
    assert (tmp_path / "out" / "batch.csv").read_bytes() == data
    assert result["bytes"] == len(data) and result["key_id"] == key_id
    _assert_no_key_material(keyset, dec, result, logs)


def test_s3_round_trip_with_kms(tmp_path, s3_bucket, kms_key, moto_endpoint, keyset, caplog, capsys):
    from mlops_airflow.operators import DecryptFileOperator, EncryptFileOperator
    from mlops_bundle.crypto import (
        DecryptionError,
        KmsKeyring,
        LocalKeyring,
        decrypt_bytes,
        is_encrypted,
        read_key_id,
    )

    client, bucket = s3_bucket
    data = os.urandom((1 << 20) + 7)
    (tmp_path / "model.skops").write_bytes(data)
    common = {"key_source": "kms", "kms_key_id": kms_key, "aws_conn_id": "mlops_s3"}
    enc = EncryptFileOperator(
        task_id="encrypt",
        source=str(tmp_path / "model.skops"),
        destination=f"s3://{bucket}/models/{{{{ ds }}}}/model.skops",
        **common,
    )
    result, logs = _run(enc, {"ds": "2026-01-05"}, caplog, capsys)
    assert result["key_id"] == f"kms:{kms_key}" and result["bytes"] == len(data)
    stored = client.get_object(Bucket=bucket, Key="models/2026-01-05/model.skops")["Body"].read()
    assert is_encrypted(stored) and data[:1000] not in stored
    # the header names the KMS key, and KMS itself says that key wrapped the object's data key
    kms = aws_client("kms", moto_endpoint)
    assert read_key_id(stored) == f"kms:{kms_key}"
    assert kms_key_that_wrapped(stored, kms) == kms_key
    # so the object opens only with that KMS key: not with another one, not with the local keyset
    other = kms.create_key(Description="another KEK")["KeyMetadata"]["Arn"]
    with pytest.raises(DecryptionError, match=f"unknown key id 'kms:{re.escape(kms_key)}'"):
        decrypt_bytes(stored, KmsKeyring(kms, other, allowed_key_ids=[other]))
    with pytest.raises(DecryptionError, match="does not unwrap"):  # the header relabelled to the other key
        decrypt_bytes(stored.replace(kms_key.encode(), other.encode(), 1), KmsKeyring(kms, other))
    with pytest.raises(DecryptionError, match=f"unknown key id 'kms:{re.escape(kms_key)}'"):
        decrypt_bytes(stored, LocalKeyring(keyset))
    # S3 -> S3, then S3 -> local
    dec = DecryptFileOperator(
        task_id="decrypt",
        source=f"s3://{bucket}/models/2026-01-05/model.skops",
        destination=f"s3://{bucket}/plain/model.skops",
        **common,
    )
    result, logs = _run(dec, {}, caplog, capsys)
    assert client.get_object(Bucket=bucket, Key="plain/model.skops")["Body"].read() == data
    dec_local = DecryptFileOperator(
        task_id="decrypt_local",
        source=f"s3://{bucket}/models/2026-01-05/model.skops",
        destination=str(tmp_path / "back.skops"),
        **common,
    )
    result, logs = _run(dec_local, {}, caplog, capsys)
    assert (tmp_path / "back.skops").read_bytes() == data
    assert "testing" not in json.dumps(result)  # no AWS credentials in XCom either


def test_tampered_object_fails_and_writes_nothing(tmp_path, s3_bucket, keyset, caplog, capsys):
    from mlops_airflow.operators import DecryptFileOperator, EncryptFileOperator
    from mlops_bundle.crypto import DecryptionError

    client, bucket = s3_bucket
    (tmp_path / "part.parquet").write_bytes(os.urandom(2 << 20))
    _run(
        EncryptFileOperator(
            task_id="encrypt",
            source=str(tmp_path / "part.parquet"),
            destination=f"s3://{bucket}/staging/part.parquet",
            aws_conn_id="mlops_s3",
            associated_data="staging/part.parquet",
        ),
        {},
        caplog,
        capsys,
    )
    blob = bytearray(client.get_object(Bucket=bucket, Key="staging/part.parquet")["Body"].read())
    blob[len(blob) // 2] ^= 0x80
    client.put_object(Bucket=bucket, Key="staging/part.parquet", Body=bytes(blob))
    for destination in (str(tmp_path / "out" / "part.parquet"), f"s3://{bucket}/plain/part.parquet"):
        op = DecryptFileOperator(
            task_id="decrypt",
            source=f"s3://{bucket}/staging/part.parquet",
            destination=destination,
            aws_conn_id="mlops_s3",
            associated_data="staging/part.parquet",
        )
        with pytest.raises(DecryptionError, match="authentication failed"):
            _run(op, {}, caplog, capsys)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix="plain/")


def test_missing_keyset_connection_fails_clearly(tmp_path, monkeypatch):
    from mlops_airflow.operators import EncryptFileOperator

    monkeypatch.setenv("AIRFLOW_CONN_EMPTY_KEYSET", json.dumps({"conn_type": "generic"}))
    (tmp_path / "a").write_bytes(b"x")
    op = EncryptFileOperator(
        task_id="e",
        source=str(tmp_path / "a"),
        destination=str(tmp_path / "b"),
        keyset_conn_id="empty_keyset",
    )
    with pytest.raises(ValueError, match="'empty_keyset' holds no keyset"):
        op.execute({})
    assert not (tmp_path / "b").exists()


def test_storage_with_encryption_follows_config(tmp_path, keyset, monkeypatch):
    from mlops_airflow.crypto_hooks import storage_with_encryption
    from mlops_bundle.config import load_config
    from mlops_bundle.crypto import EncryptingStorage, is_encrypted
    from mlops_bundle.storage import LocalStorage

    store = LocalStorage(tmp_path)
    assert storage_with_encryption(load_config(environ={**os.environ}), store) is store
    monkeypatch.setenv("MLOPS_ENCRYPTION__ENABLED", "true")
    wrapped = storage_with_encryption(load_config(), store)
    assert isinstance(wrapped, EncryptingStorage)
    wrapped.write_bytes("staging/churn/x.parquet", b"rows")
    assert is_encrypted((tmp_path / "staging/churn/x.parquet").read_bytes())
    assert wrapped.read_bytes("staging/churn/x.parquet") == b"rows"


def test_task_storage_is_strict_and_allowlists_kms_keys_from_config(
    s3_bucket, moto_endpoint, monkeypatch, caplog
):
    """The store the ingest/train/monitor tasks get (``runtime.storage``) with encryption on, KMS on moto:
    a planted plaintext partition and an object wrapped under a foreign KMS key are refused; the config's
    ``kms_key_ids`` and ``allow_legacy_objects`` are what open them."""
    from mlops_airflow import runtime
    from mlops_bundle import ingest
    from mlops_bundle.config import load_config
    from mlops_bundle.crypto import DecryptionError, EncryptingStorage, KmsKeyring
    from mlops_bundle.sample import generate_batch
    from mlops_bundle.storage import S3Storage

    client, bucket = s3_bucket
    kms = aws_client("kms", moto_endpoint)
    ours = kms.create_key(Description="the lake's KEK")["KeyMetadata"]["Arn"]
    foreign = kms.create_key(Description="another key the role can use")["KeyMetadata"]["Arn"]
    for k, v in {"ENABLED": "true", "KEY_SOURCE": "kms", "KMS_KEY_ID": ours}.items():
        monkeypatch.setenv(f"MLOPS_ENCRYPTION__{k}", v)
    cfg = load_config()
    date = "2026-01-05"
    df, problems = ingest.coerce(generate_batch(date, 50), cfg)
    assert not problems
    manifest = lake_files.manifest_of(cfg, date, df)
    # planted: a plaintext partition written straight to the bucket
    ingest.write_staging(S3Storage(client, bucket, "lake"), cfg, date, df, manifest)
    with pytest.raises(DecryptionError) as err:
        ingest.read_staging(runtime.storage(cfg), cfg, date)
    assert f"s3://{bucket}/lake/staging/churn/ds={date}/_manifest.json: refused" in str(err.value)
    assert "encrypted prefix 'staging/'" in str(err.value)
    with caplog.at_level(logging.WARNING):
        monkeypatch.setenv("MLOPS_ENCRYPTION__ALLOW_LEGACY_OBJECTS", "true")
        assert len(ingest.read_staging(runtime.storage(load_config()), load_config(), date)) == 50
    assert "allow_legacy_objects is ON" in caplog.text and "MIGRATION: reading not encrypted" in caplog.text
    monkeypatch.delenv("MLOPS_ENCRYPTION__ALLOW_LEGACY_OBJECTS")
    # foreign KMS key: right lake, right key, valid envelope, but a key the config does not name
    lake = S3Storage(client, bucket, "lake")
    ingest.write_staging(
        EncryptingStorage(lake, KmsKeyring(kms, foreign), cfg.encrypted_prefixes), cfg, date, df, manifest
    )
    with pytest.raises(
        DecryptionError, match=f"unknown key id 'kms:{re.escape(foreign)}'.*encryption.kms_key_ids"
    ):
        ingest.read_staging(runtime.storage(cfg), cfg, date)
    monkeypatch.setenv("MLOPS_ENCRYPTION__KMS_KEY_IDS", f"[{foreign}]")
    assert len(ingest.read_staging(runtime.storage(load_config()), load_config(), date)) == 50
