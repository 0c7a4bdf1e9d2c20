"""The audit anchor bucket, attacked as a task with the audit database's superuser would attack it.

Real components: a moto server subprocess (S3 with versioning and Object Lock: moto refuses to delete a
locked object version with AccessDenied, ``moto/s3/models.py`` ``FakeKey.is_locked`` / ``AccessDeniedByLock``)
and the real audit store (SQLite file and a throwaway PostgreSQL database). The attacker holds what every
task holds: full SQL rights on the store, the chain's HMAC key (the listener loads it in every task) and
the S3 credentials of the AWS connection. What moto does not model: it lets anyone shorten a COMPLIANCE
retention (real S3 refuses) and has no IAM (anyone may bypass GOVERNANCE); hence the tests lock in
COMPLIANCE mode and never rely on retention changes being refused.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid

import pytest

from mlops_bundle import audit
from tests import services
from tests.unit.test_audit import Store

KEY = b"the-task-has-this-key-too"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "audit.db"
        return Store(f"sqlite:///{path}", lambda: sqlite3.connect(path))
    import psycopg2

    uri = request.getfixturevalue("pg_database")
    return Store(uri, lambda: psycopg2.connect(uri))


@pytest.fixture
def sqlite_store(tmp_path):
    path = tmp_path / "audit.db"
    return Store(f"sqlite:///{path}", lambda: sqlite3.connect(path))


@pytest.fixture
def s3(moto_endpoint):
    return services.aws_client("s3", moto_endpoint)


@pytest.fixture
def bucket(s3) -> audit.S3Anchors:
    """A fresh bucket created with Object Lock (versioning on), anchors under churn/."""
    name = f"audit-anchors-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return audit.S3Anchors(s3, f"s3://{name}/churn/", retention_days=1, mode="COMPLIANCE")


def _append(store: Store, n: int, key: bytes | None = KEY, actor: str = "worker") -> None:
    log = audit.AuditLog(store.uri, key)
    for i in range(n):
        log.append("test.event", source="listener", actor=actor, subject=f"s{i}", payload={"i": i})
    log.close()


def _verify_and_anchor(store: Store, bucket: audit.S3Anchors) -> audit.VerifyResult:
    """What the audit_verify DAG does: verify against the bucket, then anchor the verified head."""
    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert res.ok, res
    audit.anchor(store.uri, (res.head_seq, res.head_hash), records=res.records, bucket=bucket)
    return res


def _versions(s3, bucket: audit.S3Anchors, seq: int) -> list[dict]:
    listing = s3.list_object_versions(Bucket=bucket.bucket, Prefix=bucket.key(seq))
    return listing.get("Versions", [])


def _error_code(exc: BaseException) -> str:
    return exc.response["Error"]["Code"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- control


def test_untampered_log_verifies_and_each_anchor_is_a_new_locked_object(store, bucket, s3):
    _append(store, 10)
    first = _verify_and_anchor(store, bucket)
    _append(store, 5)
    second = _verify_and_anchor(store, bucket)
    assert (first.head_seq, second.head_seq) == (10, 15)

    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert res.ok and res.records == 15 and res.reason == "ok", res
    assert res.warnings == (), "a locked bucket anchor leaves nothing to warn about"
    assert res.anchor["seq"] == 15 and res.anchor["hash"] == second.head_hash
    assert res.anchor["uri"] == f"s3://{bucket.bucket}/churn/000000000015.json"

    for seq in (10, 15):  # one object per anchor, written once, under COMPLIANCE retention
        [version] = _versions(s3, bucket, seq)
        head = s3.head_object(Bucket=bucket.bucket, Key=bucket.key(seq), VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > dt.datetime.now(dt.UTC)
    body = json.loads(s3.get_object(Bucket=bucket.bucket, Key=bucket.key(15))["Body"].read())
    assert body["seq"] == 15 and body["records"] == 15 and body["key_id"] == audit.key_id(KEY)

    _verify_and_anchor(store, bucket)  # the same head again: no second version (idempotent)
    assert len(_versions(s3, bucket, 15)) == 1


def test_without_a_bucket_verify_warns_that_the_anchor_is_rewritable(sqlite_store):
    _append(sqlite_store, 3)
    res = audit.verify(sqlite_store.uri, KEY)
    assert res.ok and any("audit.anchor_uri is empty" in w for w in res.warnings), res.warnings


# --------------------------------------------------------------------------------------- must-show


def test_cut_audit_trail_is_named_and_the_bucket_refuses_to_forget(store, bucket, s3):
    _append(store, 10)
    _verify_and_anchor(store, bucket)  # anchor seq 10
    _append(store, 10)
    anchored = _verify_and_anchor(store, bucket)  # anchor seq 20
    _append(store, 5)  # seq 21..25: after the newest anchor
    assert anchored.head_seq == 20

    # the attack a task can make with the DB superuser: cut the tail (the anchored head record with it)
    # and every anchor of it in the database
    store.sql("DELETE FROM audit_log WHERE seq >= 12")
    store.sql("DELETE FROM audit_anchor")
    assert audit.verify(store.uri, KEY).ok, "without the bucket the cut chain passes: the threat"

    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq == 12 and res.records == 11, res
    assert (
        f"audit log ends at seq 11 but the anchor s3://{bucket.bucket}/churn/000000000020.json says seq 20 "
        f"head {anchored.head_hash[:16]}...: 9 record(s) deleted from the tail, the anchored head record "
        f"seq 20 among them"
    ) in res.reason
    assert "anchor table empty but bucket holds 2 anchor(s)" in res.reason

    # ... then the bucket: delete the anchor version and overwrite it with one that fits the cut log
    [original] = _versions(s3, bucket, 20)
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as refused:
        s3.delete_object(
            Bucket=bucket.bucket,
            Key=bucket.key(20),
            VersionId=original["VersionId"],
            BypassGovernanceRetention=True,
        )
    assert _error_code(refused.value) == "AccessDenied"
    with pytest.raises(ClientError) as refused:  # a batch delete is refused per object the same way
        out = s3.delete_objects(
            Bucket=bucket.bucket,
            Delete={
                "Objects": [{"Key": bucket.key(10), "VersionId": _versions(s3, bucket, 10)[0]["VersionId"]}]
            },
        )
        if out.get("Errors"):
            raise ClientError({"Error": out["Errors"][0]}, "DeleteObjects")
    assert _error_code(refused.value) == "AccessDenied"
    rows = {r["seq"]: r for r in store.rows()}
    forged = {"seq": 11, "hash": rows[11]["hash"], "at": "2026-01-01T00:00:00", "records": 11, "key_id": ""}
    s3.put_object(Bucket=bucket.bucket, Key=bucket.key(20), Body=json.dumps(forged).encode())  # a new version
    s3.delete_object(Bucket=bucket.bucket, Key=bucket.key(20))  # a delete marker, not a deletion
    versions = _versions(s3, bucket, 20)
    assert original["VersionId"] in [v["VersionId"] for v in versions], "the locked version is still there"

    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq == 12, res
    assert "9 record(s) deleted from the tail" in res.reason
    assert "churn/000000000020.json was overwritten 1 time(s) and delete-marked 1 time(s)" in res.reason

    # ... and refill the cut with records that chain (the task holds the HMAC key): the locked anchor's
    # hash commits to the whole history, so the rewrite is named at the anchored seq
    _append(store, 9, actor="mallory")
    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq == 20, res
    assert f"head mismatch at seq 20: the anchor s3://{bucket.bucket}/churn/000000000020.json says hash" in (
        res.reason
    )


def test_deleted_head_record_and_single_anchor_rows_are_named(store, bucket):
    _append(store, 10)
    _verify_and_anchor(store, bucket)
    _append(store, 5)
    _verify_and_anchor(store, bucket)
    _append(store, 3)

    store.sql("DELETE FROM audit_anchor WHERE seq = 10")
    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq is None, res
    assert (
        "anchor table lacks 1 of the bucket's 2 anchor(s) (seq 10): those audit_anchor rows were deleted"
        in (res.reason)
    )

    store.sql("DELETE FROM audit_log WHERE seq = 15")  # the anchored head record only
    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq == 15
    assert "gap: expected seq 15, found seq 16" in res.reason
    assert "the anchored head record seq 15 is among them" in res.reason


def test_a_forged_newer_anchor_does_not_hide_a_rewritten_history(sqlite_store, bucket):
    """The attacker rewrites records 6..10 (anchored at 10), re-chains them with the HMAC key, fixes the
    anchor rows and PUTs a properly locked anchor 12 for the forged chain: the genuine anchor 10 still
    catches it (every anchor is compared with the log, not only the newest)."""
    _append(sqlite_store, 10)
    _verify_and_anchor(sqlite_store, bucket)
    sqlite_store.sql("DELETE FROM audit_log WHERE seq >= 6")
    sqlite_store.sql("DELETE FROM audit_anchor")
    _append(sqlite_store, 7, actor="forger")  # seq 6..12, chained with the real key
    forged = audit.verify(sqlite_store.uri, KEY)  # without the bucket this passes: the threat
    assert forged.ok and forged.head_seq == 12
    bucket.write(12, forged.head_hash, records=12, key_id=audit.key_id(KEY), store=sqlite_store.uri)
    sqlite_store.sql(f"INSERT INTO audit_anchor (seq, hash, at) VALUES (12, '{forged.head_hash}', 'x')")
    res = audit.verify(sqlite_store.uri, KEY, bucket=bucket)
    assert not res.ok and res.first_bad_seq == 10, res
    assert f"head mismatch at seq 10: the anchor {bucket.uri}000000000010.json says hash" in res.reason
    # and a forged anchor without the chain's key id is named as such
    bucket.write(13, "0" * 64, records=13, key_id="", store=sqlite_store.uri)
    assert "name key id (none)" in audit.verify(sqlite_store.uri, KEY, bucket=bucket).reason


def test_emptied_log_is_named_against_the_bucket(sqlite_store, bucket):
    _append(sqlite_store, 4)
    _verify_and_anchor(sqlite_store, bucket)
    sqlite_store.sql("DROP TABLE audit_log")
    res = audit.verify(sqlite_store.uri, KEY, bucket=bucket)
    assert not res.ok and "the audit log is empty or missing but the anchor" in res.reason
    assert "says seq 4" in res.reason


# ------------------------------------------------------------------------------------ anchor() itself


def test_anchor_takes_the_verified_head_never_a_newer_one(store, bucket):
    _append(store, 10)
    res = audit.verify(store.uri, KEY, bucket=bucket)
    assert res.ok and res.head_seq == 10
    # between the check and the anchor: more records arrive, one of them forged (bad hash)
    _append(store, 2)
    last = store.rows()[-1]
    store.sql(
        "INSERT INTO audit_log (seq, at, source, event, actor, subject, payload, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (13, last["at"], "cli", "test.forged", "mallory", "x", "{}", last["hash"], "0" * 64),
    )
    assert audit.anchor(store.uri, (res.head_seq, res.head_hash), records=res.records, bucket=bucket) == (
        10,
        res.head_hash,
    )
    state = bucket.read()
    assert state.seqs == (10,) and state.latest.hash == res.head_hash, "the unverified seq 13 is not anchored"
    assert [s for (s,) in store.sql("SELECT seq FROM audit_anchor")] == [10]
    after = audit.verify(store.uri, KEY, bucket=bucket)
    assert not after.ok and after.first_bad_seq == 13 and "hash mismatch at seq 13" in after.reason


def test_anchor_refuses_a_head_that_changed_after_verification(sqlite_store, bucket):
    _append(sqlite_store, 5)
    res = audit.verify(sqlite_store.uri, KEY, bucket=bucket)
    sqlite_store.sql("UPDATE audit_log SET hash = ? WHERE seq = 5", ("f" * 64,))
    with pytest.raises(audit.AuditError, match="verified head seq 5 .* is not in the log any more"):
        audit.anchor(sqlite_store.uri, (res.head_seq, res.head_hash), bucket=bucket)
    assert bucket.read().seqs == ()


def test_an_existing_anchor_is_never_rewritten(sqlite_store, bucket):
    _append(sqlite_store, 5)
    _verify_and_anchor(sqlite_store, bucket)
    with pytest.raises(audit.AnchorError, match="already says seq 5 has hash"):
        bucket.write(5, "e" * 64, records=5, key_id="x", store="s")


def test_bucket_without_object_lock_is_refused_clearly(sqlite_store, s3):
    name = f"audit-nolock-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    plain = audit.S3Anchors(s3, f"s3://{name}/churn/", retention_days=1)
    _append(sqlite_store, 2)
    with pytest.raises(audit.AnchorError, match=f"bucket {name} has no Object Lock"):
        audit.anchor(sqlite_store.uri, audit.head(sqlite_store.uri), bucket=plain)
    with pytest.raises(audit.AnchorError, match="could not read the audit anchors"):
        audit.S3Anchors(s3, "s3://no-such-bucket-here/x/").read()
    with pytest.raises(ValueError, match="is not an S3 URI"):
        audit.S3Anchors(s3, "file:///tmp/x")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_anchor_and_verify_use_the_bucket(sqlite_store, bucket, moto_endpoint, monkeypatch, capsys):
    creds = services.AWS_TEST_CREDENTIALS
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", creds["region_name"])
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv(audit.HMAC_ENV, KEY.decode())
    args = ["--uri", sqlite_store.uri, "--anchor-uri", bucket.uri]
    _append(sqlite_store, 6)

    assert audit.main(["anchor", *args]) == 0
    assert capsys.readouterr().out.startswith("6:")
    assert bucket.read().seqs == (6,)
    assert audit.main(["verify", *args]) == 0
    assert "WARNING" not in capsys.readouterr().out

    sqlite_store.sql("DELETE FROM audit_log WHERE seq > 3")
    sqlite_store.sql("DELETE FROM audit_anchor")
    assert audit.main(["verify", "--uri", sqlite_store.uri, "--anchor-uri", ""]) == 0
    assert "WARNING: no anchor bucket" in capsys.readouterr().out
    assert audit.main(["verify", *args]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: first broken link at seq 4: truncated: audit log ends at seq 3" in out
    assert "3 record(s) deleted from the tail" in out
    assert audit.main(["anchor", *args]) == 1, "a broken chain is never anchored"


def test_anchor_uri_config_names_the_rule():
    import os

    from mlops_bundle.config import ConfigError, load_config

    cfg = load_config(environ={**os.environ, "MLOPS_AUDIT__ANCHOR_URI": "s3://audit-anchors/churn/"})
    assert (cfg.audit.anchor_uri, cfg.audit.anchor_retention_mode) == (
        "s3://audit-anchors/churn/",
        "COMPLIANCE",
    )
    for bad in ("file:///var/anchors", "s3:///no-bucket"):
        with pytest.raises(ConfigError, match="audit.anchor_uri .* use s3://bucket/prefix/"):
            load_config(environ={**os.environ, "MLOPS_AUDIT__ANCHOR_URI": bad})
    with pytest.raises(ConfigError, match="anchor_retention_mode"):
        load_config(environ={**os.environ, "MLOPS_AUDIT__ANCHOR_RETENTION_MODE": "NONE"})
