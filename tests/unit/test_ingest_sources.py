"""The ingest `source` allowlist as an attacker who may trigger the ingest DAG would probe it: traversal,
encodings, prefix look-alikes, other buckets, symlinks out of an allowed folder, and the error's content."""

from __future__ import annotations

import json
import shutil

import pytest

from mlops_bundle import ingest
from mlops_bundle.config import DEFAULT_CONFIG_PATH, ConfigError, load_config

SECRET = "foreign-secret-name"  # a path part that must never reach an error message


def _cfg(*allowed: str):
    return load_config(
        DEFAULT_CONFIG_PATH, environ={"MLOPS_INGEST__ALLOWED_SOURCES": json.dumps(list(allowed))}
    )


@pytest.fixture
def folders(tmp_path):
    """(allowed folder, a sibling outside it); the allowed one holds a link out and a link back in."""
    tmp_path = tmp_path.resolve()  # expected URIs below are exact
    allowed, outside = tmp_path / "incoming", tmp_path / "elsewhere"
    (allowed / "partner-a").mkdir(parents=True)
    (outside / SECRET).mkdir(parents=True)
    (allowed / "out").symlink_to(outside / SECRET)
    (allowed / "in").symlink_to(allowed / "partner-a")
    return allowed, outside


def _refused(cfg, requested: str) -> str:
    with pytest.raises(ingest.SourceNotAllowed) as info:
        ingest.check_source(cfg, requested)
    message = str(info.value)
    assert "ingest.allowed_sources" in message and "MLOPS_INGEST__ALLOWED_SOURCES" in message
    assert SECRET not in message, message
    return message


def test_default_config_allows_no_override(folders):
    allowed, _ = folders
    assert load_config(DEFAULT_CONFIG_PATH, environ={}).ingest.allowed_sources == []
    message = _refused(load_config(DEFAULT_CONFIG_PATH, environ={}), f"file://{allowed}/partner-a")
    assert "is empty, so this deployment accepts no source override" in message
    assert isinstance(ingest.SourceNotAllowed("x"), ValueError)


def test_folders_under_an_allowed_prefix_pass_as_canonical_uris(folders):
    allowed, _ = folders
    cfg = _cfg(f"file://{allowed}/", "s3://drops/churn", "s3://whole-bucket/")
    assert ingest.allowed_prefixes(cfg) == [f"file://{allowed}", "s3://drops/churn", "s3://whole-bucket"]
    assert ingest.check_source(cfg, f"file://{allowed}") == f"file://{allowed}"
    assert ingest.check_source(cfg, f"file://{allowed}/partner-a/") == f"file://{allowed}/partner-a"
    assert ingest.check_source(cfg, f"FILE://{allowed}//partner-a") == f"file://{allowed}/partner-a"
    assert ingest.check_source(cfg, "s3://drops/churn/2026/") == "s3://drops/churn/2026"
    assert ingest.check_source(cfg, "s3://drops/churn") == "s3://drops/churn"
    assert ingest.check_source(cfg, "s3://whole-bucket/any/where") == "s3://whole-bucket/any/where"


@pytest.mark.parametrize(
    "requested",
    [
        "file://{allowed}/../elsewhere/" + SECRET,
        "file://{allowed}/partner-a/../../elsewhere/" + SECRET,
        "file://{allowed}/./partner-a",
        "s3://drops/churn/../" + SECRET,
        "s3://drops/churn/..",
    ],
)
def test_dot_segments_are_refused(folders, requested):
    allowed, _ = folders
    message = _refused(_cfg(f"file://{allowed}", "s3://drops/churn"), requested.format(allowed=allowed))
    assert "'.' or '..' path segment" in message


@pytest.mark.parametrize(
    "requested",
    [
        "file://{allowed}/%2e%2e/elsewhere/" + SECRET,
        "file://{allowed}/%2E%2E/elsewhere/" + SECRET,
        "file://{allowed}/..%2felsewhere%2f" + SECRET,
        "file://{allowed}/partner%2da",
        "s3://drops/churn/%2e%2e/" + SECRET,
    ],
)
def test_percent_encodings_are_refused(folders, requested):
    allowed, _ = folders
    message = _refused(_cfg(f"file://{allowed}", "s3://drops/churn"), requested.format(allowed=allowed))
    assert "percent-escape" in message


def test_prefix_matches_on_whole_segments_only(folders, tmp_path):
    allowed, _ = folders
    evil = tmp_path / "incoming-evil"
    evil.mkdir()
    cfg = _cfg(f"file://{allowed}", "s3://drops/churn")
    assert "not under any allowed prefix" in _refused(cfg, f"file://{evil}")
    assert "not under any allowed prefix" in _refused(cfg, "s3://drops/churn-evil/x")
    assert "not under any allowed prefix" in _refused(cfg, "s3://drops/chur")
    assert "not under any allowed prefix" in _refused(cfg, "s3://drops/")


@pytest.mark.parametrize(
    "requested", ["s3://another-bucket/churn", "s3://drops-evil/churn", "s3://DROPS/churn", "s3://drop/churn"]
)
def test_other_buckets_are_refused(requested):
    assert "not under any allowed prefix" in _refused(_cfg("s3://drops/churn/"), requested)


def test_a_symlink_cannot_lead_out_of_an_allowed_folder(folders):
    allowed, outside = folders
    cfg = _cfg(f"file://{allowed}")
    assert "not under any allowed prefix" in _refused(cfg, f"file://{allowed}/out")
    assert "not under any allowed prefix" in _refused(cfg, f"file://{allowed}/out/sub")
    # a link that stays inside is judged (and opened) by where it leads
    assert ingest.check_source(cfg, f"file://{allowed}/in") == f"file://{allowed}/partner-a"


def test_a_symlink_loop_or_broken_text_is_refused_without_quoting_it(folders):
    """Found in review: a link loop raised RuntimeError quoting the path (and the task retried), a lone
    surrogate UnicodeEncodeError; both are now plain refusals naming only the allowlist."""
    allowed, _ = folders
    (allowed / f"loop-{SECRET}").symlink_to(allowed / f"loop-{SECRET}")
    cfg = _cfg(f"file://{allowed}")
    assert "cannot be resolved" in _refused(cfg, f"file://{allowed}/loop-{SECRET}/x")
    assert "not valid UTF-8" in _refused(cfg, f"file://{allowed}/{SECRET}\udcff")


def test_an_allowed_prefix_given_through_a_symlink_is_compared_resolved(folders, tmp_path):
    allowed, _ = folders
    alias = tmp_path / "alias"
    alias.symlink_to(allowed)
    cfg = _cfg(f"file://{alias}/")
    assert ingest.allowed_prefixes(cfg) == [f"file://{allowed}"]
    assert ingest.check_source(cfg, f"file://{allowed}/partner-a") == f"file://{allowed}/partner-a"
    assert ingest.check_source(cfg, f"file://{alias}/partner-a") == f"file://{allowed}/partner-a"


@pytest.mark.parametrize(
    ("requested", "reason"),
    [
        ("file:///etc", "not under any allowed prefix"),
        ("file:///", "not under any allowed prefix"),
        ("file://localhost/etc", "names a host or a relative path"),
        ("file://evil.example/{allowed}", "names a host or a relative path"),
        ("file:{allowed}", "scheme is not file:// or s3://"),
        ("{allowed}", "scheme is not file:// or s3://"),
        ("http://169.254.169.254/latest/", "scheme is not file:// or s3://"),
        ("s3:///churn", "names no bucket"),
        ("file://{allowed}/partner-a?x=" + SECRET, "a query"),
        ("file://{allowed}/partner-a#" + SECRET, "a fragment"),
        ("file://{allowed}/partner-a\x00/" + SECRET, "a NUL byte"),
        ("file://{allowed}\\..\\" + SECRET, "a backslash"),
        ("file://{allowed}/partner-a\n" + SECRET, "control characters"),
        ("", "empty"),
    ],
)
def test_malformed_or_foreign_requests_are_refused(folders, requested, reason):
    allowed, _ = folders
    assert reason in _refused(_cfg(f"file://{allowed}"), requested.format(allowed=allowed))


def test_the_error_names_the_allowlist_but_never_the_requested_path(folders):
    allowed, outside = folders
    message = _refused(_cfg(f"file://{allowed}"), f"file://{outside}/{SECRET}")
    assert f"['file://{allowed}/']" in message
    assert str(outside) not in message and "elsewhere" not in message
    assert message.startswith("the `source` Param (file://...) is refused")


def test_relative_entries_resolve_against_the_config_folder_like_the_storage_root(tmp_path):
    shutil.copy(DEFAULT_CONFIG_PATH, tmp_path / "data.yaml")
    (tmp_path / "drops" / "a").mkdir(parents=True)
    cfg = load_config(tmp_path / "data.yaml", environ={"MLOPS_INGEST__ALLOWED_SOURCES": '["drops"]'})
    assert ingest.allowed_prefixes(cfg) == [f"file://{tmp_path}/drops"]
    assert ingest.check_source(cfg, f"file://{tmp_path}/drops/a") == f"file://{tmp_path}/drops/a"
    assert "not under any allowed prefix" in _refused(cfg, f"file://{tmp_path}")


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("ftp://host/x", "unsupported scheme"),
        ("file://host/x", "not an absolute local path"),
        ("file://relative/x", "not an absolute local path"),
        ("s3:///x", "names no bucket"),
        ("file:///", "names the whole filesystem"),
        ("/", "names the whole filesystem"),
        ("", "is empty"),
        ("s3://b/x?y", "'?'"),
    ],
)
def test_bad_allowlist_entries_fail_at_config_load_naming_the_field(entry, problem):
    with pytest.raises(ConfigError) as info:
        _cfg("s3://fine/prefix", entry)
    message = str(info.value)
    assert f"ingest.allowed_sources[1] {entry!r}" in message and problem in message
    assert "write file:///absolute/folder/, s3://bucket/prefix/" in message


def test_check_keys_refuses_a_tampered_hand_over():
    ingest.check_keys("landing/churn/2026-01-01", ["landing/churn/2026-01-01/a.csv"])
    ingest.check_keys("", ["a.csv", "sub/b.parquet"])
    for prefix, key in [
        ("landing/churn/2026-01-01", "staging/churn/ds=2026-01-01/part-0.parquet"),
        ("landing/churn/2026-01-01", "landing/churn/2026-01-01/../../../staging/x"),
        ("landing/churn/2026-01-01", "landing/churn/2026-01-011/a.csv"),
        ("", "../outside.csv"),
        ("", "/etc/passwd"),
    ]:
        with pytest.raises(ingest.SourceNotAllowed, match="hand-over .* was altered"):
            ingest.check_keys(prefix, [key])
