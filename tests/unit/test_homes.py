"""The small one-home modules: names (data-set names, dates, actors), uris, features, locks."""

from __future__ import annotations

import os
import threading
import time

import pytest

from mlops_bundle.features import THRESHOLD, positive_class_index, predict_positive
from mlops_bundle.locks import LockTimeout, file_lock
from mlops_bundle.names import DATASET_NAME_RE, actor, parse_date, valid_dataset_name
from mlops_bundle.uris import local_path, parse_s3_uri, pg_dsn, redact


@pytest.mark.parametrize("value", ["2026-01-05\n", "20260105", "2026-W01-1", "٢٠٢٦-01-05", 20260105, None])
def test_parse_date_refuses_anything_but_yyyy_mm_dd(value):
    with pytest.raises(ValueError, match=r"is not an ISO date: use YYYY-MM-DD"):
        parse_date(value)


def test_parse_date_checks_the_calendar_and_canonicalises():
    with pytest.raises(ValueError, match=r"'2026-02-30' is not a calendar date"):
        parse_date("2026-02-30")
    assert parse_date("2026-01-05") == "2026-01-05"


def test_dataset_names_are_safe_everywhere():
    assert valid_dataset_name("churn_v2") == "churn_v2"
    for bad in ("churn\n", "Churn", "1churn", "churn-x", "../x", "a" * 64, ""):
        assert not DATASET_NAME_RE.match(bad)
        with pytest.raises(ValueError, match="data set name"):
            valid_dataset_name(bad)


def test_actor_is_the_user_else_what_triggered_the_run():
    assert actor("manual", "admin") == "admin"
    assert actor("scheduled", None) == "scheduler"
    assert actor("asset_triggered", "") == "asset-trigger"
    assert actor("backfill", None) == "backfill"
    assert actor("manual", None) == "manual"


def test_s3_uris_split_literally_and_refuse_what_is_not_one():
    assert parse_s3_uri("s3://bucket/a/b#c?d%20e") == ("bucket", "a/b#c?d%20e")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("s3://", "s3:///key", "https://bucket/key", "bucket/key"):
        with pytest.raises(ValueError, match="S3 URI|no bucket"):
            parse_s3_uri(bad)
    for not_object in ("s3://bucket", "s3://bucket/dir/"):
        with pytest.raises(ValueError, match="is not an S3 object URI"):
            parse_s3_uri(not_object, require_key=True)


def test_file_uris_are_local_paths_and_other_hosts_are_refused():
    assert str(local_path("file:///tmp/a%20b")) == "/tmp/a b"
    assert str(local_path("file:/tmp/x")) == "/tmp/x"
    assert str(local_path("file://localhost/tmp/x")) == "/tmp/x"
    assert str(local_path("relative/dir")) == "relative/dir"
    with pytest.raises(ValueError, match="names host 'etc'"):
        local_path("file://etc/passwd")


def test_database_uris_are_redacted_and_converted():
    assert redact("postgresql+psycopg2://svc:s3cret@db:5432/x") == "postgresql+psycopg2://svc:***@db:5432/x"
    assert "s3cret" not in redact("postgresql://svc:s3cret@db/x")
    assert pg_dsn("postgresql+psycopg2://u@h/db") == "postgresql://u@h/db"
    assert pg_dsn("sqlite:///x.db") is None


def test_positive_class_and_threshold():
    assert positive_class_index([0, 1]) == 1
    assert positive_class_index([1, 2]) == 0  # the class spelled 1 is positive
    assert positive_class_index(["no", "yes"]) == 1
    with pytest.raises(ValueError, match="expected a binary classifier"):
        positive_class_index([0, 1, 2])
    assert list(predict_positive([THRESHOLD - 1e-9, THRESHOLD, 0.9])) == [0, 1, 1]


def test_file_lock_excludes_and_names_its_holder(tmp_path):
    path = tmp_path / "sub" / "x.lock"
    held, release = threading.Event(), threading.Event()

    def hold():
        with file_lock(path):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match=rf"file lock {path} is held by pid {os.getpid()} on "):
            with file_lock(path, timeout_s=0.3):
                pass
        assert time.monotonic() - start >= 0.3
    finally:
        release.set()
        t.join(10)
    with file_lock(path, timeout_s=1):
        assert f"pid {os.getpid()}" in path.read_text()
    assert path.read_text() == "", "the holder note is cleared on release"
