"""Strict encryption at rest, attacked as an attacker would: a planted plaintext object, a header naming a
foreign KMS key, an encrypted object copied to another key or another lake, a legacy (format 1) object,
and data rows leaking into MLflow artifacts.

KMS and S3 are the session's moto server (real HTTP APIs); MLflow is a real local store (SQLite + artifact
folder); the ingest/train library functions run unchanged on top of the encrypting store.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pandas as pd
import pytest
import tink
from tink import streaming_aead

from mlops_bundle import ingest, monitoring, tracking, training
from mlops_bundle.config import DEFAULT_CONFIG_PATH, load_config
from mlops_bundle.crypto import (
    MAGIC,
    DecryptionError,
    EncryptingStorage,
    KmsKeyring,
    LocalKeyring,
    decrypt_bytes,
    format_version,
    generate_local_keyset,
)
from mlops_bundle.monitoring import MonitoringError
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests import lake
from tests.services import aws_client

DATE = "2026-02-03"
PART = f"staging/churn/ds={DATE}/part-0.parquet"


@pytest.fixture(scope="module")
def keyring() -> LocalKeyring:
    return LocalKeyring(generate_local_keyset())


@pytest.fixture
def inner(lake_storage):
    return lake_storage


def _cfg(root: Path, **env: str):
    return load_config(
        DEFAULT_CONFIG_PATH,
        environ={
            "MLOPS_STORAGE__ROOT_URI": (root / "lake").as_uri(),
            "MLOPS_MLFLOW__TRACKING_URI": str(root / "mlflow"),
            **env,
        },
    )


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _stage(store, cfg, date: str, rows: int = 600) -> None:
    """A partition written the way the ingest DAG writes it (minus the GX run)."""
    lake.stage(store, cfg, date, rows)


# ------------------------------------------------------------------------------------ planted plaintext
def test_planted_plaintext_is_refused_naming_object_prefix_and_remedy(tmp_path, inner, keyring):
    enc = EncryptingStorage(inner, keyring, ["staging", "reports"])
    planted = _parquet(generate_batch(DATE, 20))
    inner.write_bytes(PART, planted)  # written around the wrapper: no encryption
    with pytest.raises(DecryptionError) as err:
        enc.read_bytes(PART)
    msg = str(err.value)
    assert inner.uri(PART) in msg and f"object {PART!r} is not encrypted" in msg
    assert "encrypted prefix 'staging/'" in msg and "re-run the task that produces it" in msg
    assert "encryption.allow_legacy_objects" in msg
    with pytest.raises(DecryptionError, match="is not encrypted"):
        enc.get_file(PART, tmp_path / "out" / "part.parquet")
    assert not (tmp_path / "out" / "part.parquet").exists()
    # an empty object and a non-parquet blob are refused the same way
    inner.write_bytes("reports/churn/x.html", b"")
    with pytest.raises(DecryptionError, match="is not encrypted"):
        enc.read_bytes("reports/churn/x.html")
    # the migration escape hatch reads it (and only it)
    assert EncryptingStorage(inner, keyring, ["staging"], allow_legacy=True).read_bytes(PART) == planted


def test_planted_plaintext_partition_is_refused_by_the_ingest_and_train_readers(tmp_path, keyring):
    """The library functions the ingest and train tasks call, on the store they get with encryption on."""
    cfg = _cfg(tmp_path, MLOPS_ENCRYPTION__ENABLED="true")
    inner = LocalStorage(tmp_path / "lake")
    enc = EncryptingStorage(inner, keyring, cfg.encrypted_prefixes)
    _stage(enc, cfg, "2026-02-02")
    assert len(ingest.read_staging(enc, cfg, "2026-02-02")) == 600  # encrypted partitions read fine
    _stage(inner, cfg, DATE)  # an attacker (or an old writer) puts a plaintext partition in staging
    with pytest.raises(DecryptionError, match=f"staging/churn/ds={DATE}/_manifest.json.*is not encrypted"):
        ingest.read_staging(enc, cfg, DATE)
    with pytest.raises(DecryptionError, match="is not encrypted.*prefix 'staging/'"):
        training.assemble_window(enc, cfg, DATE, window_days=2)


# ----------------------------------------------------------------------------- object swap between keys
def test_object_copied_to_another_key_or_lake_is_refused(tmp_path, inner, keyring):
    enc = EncryptingStorage(inner, keyring, ["staging"])
    enc.write_bytes(PART, b"PAR1 rows of 2026-02-03")
    blob = inner.read_bytes(PART)
    assert format_version(blob[:9]) == 2 and inner.root_uri.encode() in blob[:400]  # context in the header
    # another key of the same lake: e.g. yesterday's partition replayed as today's
    other = "staging/churn/ds=2026-02-04/part-0.parquet"
    inner.write_bytes(other, blob)
    with pytest.raises(DecryptionError) as err:
        enc.read_bytes(other)
    assert f"this object was encrypted for key {PART!r} of lake {inner.root_uri!r}" in str(err.value)
    assert f"read as key {other!r}" in str(err.value)
    with pytest.raises(DecryptionError, match="encrypted for key"):
        enc.get_file(other, tmp_path / "got.parquet")
    assert not (tmp_path / "got.parquet").exists()
    # the same key in another lake that shares the keyring (e.g. dev vs prod)
    dev = EncryptingStorage(LocalStorage(tmp_path / "dev-lake"), keyring, ["staging"])
    dev.inner.write_bytes(PART, blob)
    with pytest.raises(DecryptionError, match=f"encrypted for key {PART!r} of lake {inner.root_uri!r}"):
        dev.read_bytes(PART)
    # an explicit lake id binds too, independently of the URI
    EncryptingStorage(inner, keyring, ["staging"], lake_id="prod").write_bytes("staging/x", b"rows")
    with pytest.raises(DecryptionError, match="encrypted for key 'staging/x' of lake 'prod'"):
        EncryptingStorage(inner, keyring, ["staging"], lake_id="dev").read_bytes("staging/x")


def test_forged_context_fails_authentication(tmp_path, keyring):
    """The context stored in the header is authenticated: editing it to match the new key fails."""
    enc = EncryptingStorage(LocalStorage(tmp_path / "lake"), keyring, ["staging"])
    enc.write_bytes("staging/a/part-0.parquet", b"rows of a")
    blob = enc.inner.read_bytes("staging/a/part-0.parquet")
    forged = blob.replace(b'"staging/a/', b'"staging/b/', 1)
    assert forged != blob and len(forged) == len(blob)
    enc.inner.write_bytes("staging/b/part-0.parquet", forged)
    with pytest.raises(DecryptionError, match="does not unwrap"):
        enc.read_bytes("staging/b/part-0.parquet")


# ---------------------------------------------------------------------------------- legacy format 1
def _format1(data: bytes, keyring: LocalKeyring, aad: bytes) -> bytes:
    """An object in the previous release's format 1 (no stored context; the caller's aad appended)."""
    key_id, kek = keyring.encryption_aead()
    handle = tink.new_keyset_handle(streaming_aead.streaming_aead_key_templates.AES256_GCM_HKDF_1MB)
    kid = key_id.encode()
    prefix = struct.pack(">8sBH", MAGIC, 1, len(kid)) + kid
    wrapped = tink.proto_keyset_format.serialize_encrypted(handle, kek, prefix + aad)
    header = prefix + struct.pack(">I", len(wrapped)) + wrapped
    out = _KeepOpen()
    with handle.primitive(streaming_aead.StreamingAead).new_encrypting_stream(out, header + aad) as stream:
        stream.write(data)
    return header + out.getvalue()


class _KeepOpen(io.BytesIO):
    """Tink closes the stream it writes to; keep the bytes readable afterwards."""

    def close(self) -> None:
        pass


def test_format1_objects_are_refused_in_the_lake_but_readable_for_migration(tmp_path, keyring):
    inner = LocalStorage(tmp_path / "lake")
    old = _format1(b"rows written by the previous release", keyring, PART.encode())
    assert decrypt_bytes(old, keyring, aad=PART.encode()) == b"rows written by the previous release"
    inner.write_bytes(PART, old)
    with pytest.raises(DecryptionError, match="legacy encryption format 1 .*re-run the task"):
        EncryptingStorage(inner, keyring, ["staging"]).read_bytes(PART)
    migrating = EncryptingStorage(inner, keyring, ["staging"], allow_legacy=True)
    assert migrating.read_bytes(PART) == b"rows written by the previous release"
    assert migrating.get_file(PART, tmp_path / "o").read_bytes() == b"rows written by the previous release"
    # the migration step: rewrite format-1 and plaintext objects in format 2, then switch the setting off
    inner.write_bytes("staging/churn/old.csv", b"plaintext from before encryption")
    enc = EncryptingStorage(inner, keyring, ["staging"])
    with pytest.raises(DecryptionError, match="needs encryption.allow_legacy_objects: true"):
        enc.upgrade_legacy("staging")
    assert sorted(migrating.upgrade_legacy("staging")) == sorted(["staging/churn/old.csv", PART])
    assert migrating.upgrade_legacy("staging") == []  # idempotent
    assert enc.read_bytes(PART) == b"rows written by the previous release"
    assert enc.read_bytes("staging/churn/old.csv") == b"plaintext from before encryption"
    assert format_version(inner.read_bytes(PART)[:9]) == 2


# --------------------------------------------------------------------------------- KMS key allowlist
@pytest.mark.moto
def test_foreign_kms_key_in_a_header_is_refused_before_kms_is_asked(tmp_path, moto_endpoint):
    kms = aws_client("kms", moto_endpoint)
    ours = kms.create_key(Description="the lake's KEK")["KeyMetadata"]["Arn"]
    foreign = kms.create_key(Description="a key the task role may also use")["KeyMetadata"]["Arn"]
    decrypts: list[str] = []
    kms.meta.events.register(
        "provide-client-params.kms.Decrypt", lambda params, **kw: decrypts.append(params.get("KeyId"))
    )
    inner = LocalStorage(tmp_path / "lake")
    # an attacker who can write the lake and use `foreign` writes an object under it (right key, right lake)
    EncryptingStorage(inner, KmsKeyring(kms, foreign), ["staging"]).write_bytes(PART, b"attacker rows")
    decrypts.clear()  # Tink checks a freshly wrapped data key by decrypting it once on the write path
    lake = EncryptingStorage(inner, KmsKeyring(kms, ours), ["staging"])
    with pytest.raises(DecryptionError) as err:
        lake.read_bytes(PART)
    msg = str(err.value)
    assert f"unknown key id 'kms:{foreign}'" in msg and "encryption.kms_key_ids" in msg
    assert "nothing was sent to KMS" in msg
    assert decrypts == [], "KMS was asked to decrypt a data key wrapped under a key that is not allowed"
    # KMS would have decrypted it happily: allowlisting the key opens it (one Decrypt, with KeyId pinned)
    allowing = EncryptingStorage(inner, KmsKeyring(kms, ours, allowed_key_ids=[foreign]), ["staging"])
    assert allowing.read_bytes(PART) == b"attacker rows"
    assert decrypts == [foreign]


@pytest.mark.moto
def test_kms_alias_is_resolved_once_and_keyid_is_pinned_on_decrypt(tmp_path, moto_endpoint):
    """kms_key_id may be an alias (resolved to its ARN for the header and the allowlist); KMS Decrypt is
    always called with the header's ARN as KeyId, so KMS itself refuses a data key wrapped by another key."""
    kms = aws_client("kms", moto_endpoint)
    arn = kms.create_key(Description="aliased KEK")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName="alias/strict-enc-test", TargetKeyId=arn)
    seen: list[str] = []
    kms.meta.events.register(
        "provide-client-params.kms.Decrypt", lambda params, **kw: seen.append(params.get("KeyId"))
    )
    lake = EncryptingStorage(
        LocalStorage(tmp_path / "lake"), KmsKeyring(kms, "alias/strict-enc-test"), ["staging"]
    )
    lake.write_bytes(PART, b"rows")
    seen.clear()  # Tink checks a freshly wrapped data key by decrypting it once on the write path
    assert lake.read_bytes(PART) == b"rows" and seen == [arn]


def test_config_allowlist_takes_arns_only():
    from mlops_bundle.config import ConfigError

    with pytest.raises(ConfigError, match=r"kms_key_ids\[0\]='alias/old' is not a KMS key ARN"):
        load_config(DEFAULT_CONFIG_PATH, environ={"MLOPS_ENCRYPTION__KMS_KEY_IDS": "[alias/old]"})
    arn = "arn:aws:kms:us-east-1:123456789012:key/0b5f1c1e-0000-4000-8000-000000000000"
    cfg = load_config(DEFAULT_CONFIG_PATH, environ={"MLOPS_ENCRYPTION__KMS_KEY_IDS": f"[{arn}]"})
    assert cfg.encryption.kms_key_ids == [arn] and cfg.encryption.allow_legacy_objects is False


# -------------------------------------------------------------------------------- MLflow data artifacts
def _artifact_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _row_leaks(files: dict[str, bytes], rows: pd.DataFrame) -> list[str]:
    """Files holding one of these rows' ids (int64 as stored by parquet, or as text) or charges (text)."""
    needles = []
    for cid, total in zip(rows["customer_id"].head(20), rows["total_charges"].head(20), strict=True):
        needles += [struct.pack("<q", int(cid)), str(int(cid)).encode(), json.dumps(float(total)).encode()]
    return sorted({name for name, data in files.items() for n in needles if n in data})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One logistic regression on two staged days (the cheapest candidate), for both configurations."""
    root = tmp_path_factory.mktemp("strict-mlflow")
    cfg = _cfg(root)
    store = LocalStorage(root / "lake")
    for day in ("2026-02-01", "2026-02-02"):
        _stage(store, cfg, day, rows=1500)
    window = training.assemble_window(store, cfg, "2026-02-02", window_days=2)
    spec = training.resolve_candidates(cfg, ["logreg"])[0]
    model, metrics = training.train_candidate(spec, window, cfg)
    return root, spec, model, metrics, window


@pytest.mark.parametrize("encrypted", [False, True], ids=["encryption-off", "encryption-on"])
def test_model_run_logs_no_plaintext_rows_to_mlflow(tmp_path, trained, keyring, encrypted):
    _root, spec, model, metrics, window = trained
    cfg = _cfg(tmp_path, MLOPS_ENCRYPTION__ENABLED=str(encrypted).lower())
    lake = EncryptingStorage(LocalStorage(tmp_path / "lake"), keyring, cfg.encrypted_prefixes)
    store = lake if encrypted else lake.inner
    run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
    client = tracking.client(cfg)
    path = monitoring.log_reference(cfg, client, run_id, model, window.train, store=store)
    files = _artifact_files(tmp_path / "mlflow")  # the artifact folder and the SQLite tracking store
    reference = next(data for name, data in files.items() if name.endswith(path))
    examples = [n for n in files if "input_example" in n]
    leaks = _row_leaks(files, window.train)
    if not encrypted:  # the detector finds the rows where MLflow keeps them in plaintext
        assert reference.startswith(b"PAR1") and examples and leaks
        assert len(monitoring.load_reference(client, run_id, cfg=cfg)) > 0
        return
    assert reference.startswith(MAGIC) and b"PAR1" not in reference
    assert examples == [], "the model's input example (training rows) was logged in plaintext"
    assert leaks == [], f"training rows in plaintext in {leaks}"
    # the monitor reads it back through the lake's keyring
    back = monitoring.load_reference(client, run_id, cfg=cfg, store=lake)
    assert len(back) == min(len(window.train), cfg.monitoring.sample_cap) and "customer_id" in back
    with pytest.raises(MonitoringError, match="pass the lake's encrypting store"):
        monitoring.load_reference(client, run_id, cfg=cfg)
    # the reference of one run put behind another run (to hide drift) is refused
    other = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
    (tmp_path / "swap").mkdir()
    (tmp_path / "swap" / "reference.parquet").write_bytes(reference)
    client.log_artifact(other, str(tmp_path / "swap" / "reference.parquet"), "reference")
    with pytest.raises(DecryptionError, match=f"encrypted for key 'mlflow-artifacts/{run_id}/reference"):
        monitoring.load_reference(client, other, cfg=cfg, store=lake)
    # a plaintext reference (planted, or logged before encryption was on) is refused
    plain = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "reference.parquet").write_bytes(_parquet(window.train.head(50)))
    client.log_artifact(plain, str(tmp_path / "plain" / "reference.parquet"), "reference")
    with pytest.raises(DecryptionError, match="not encrypted for lake .*Retrain the model"):
        monitoring.load_reference(client, plain, cfg=cfg, store=lake)


def test_data_artifacts_omit_logs_no_reference(tmp_path, trained, keyring):
    _root, spec, model, metrics, window = trained
    cfg = _cfg(tmp_path, MLOPS_ENCRYPTION__ENABLED="true", MLOPS_ENCRYPTION__DATA_ARTIFACTS="omit")
    lake = EncryptingStorage(LocalStorage(tmp_path / "lake"), keyring, cfg.encrypted_prefixes)
    run_id = training.log_candidate(cfg, spec, model, metrics, window, {"dag_id": "train"})
    client = tracking.client(cfg)
    assert monitoring.log_reference(cfg, client, run_id, model, window.train, store=lake) == ""
    assert not monitoring.has_reference(client, run_id)
    assert _row_leaks(_artifact_files(tmp_path / "mlflow"), window.train) == []
    with pytest.raises(MonitoringError, match="data_artifacts is 'omit'"):
        monitoring.load_reference(client, run_id, cfg=cfg, store=lake)
