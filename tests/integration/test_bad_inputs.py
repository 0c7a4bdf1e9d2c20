"""The bad-input corpus: every kind of broken delivery gets a clear error or quarantine, nothing is lost,
and a previously staged partition for the same date is left exactly as it was (no partial staging write).

Runs the real pipeline (real files, real GX suite) through the library entry point the DAG calls.
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from mlops_bundle import ingest
from mlops_bundle.catalog import dataset_config
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.conftest import REPO

DATE = "2026-05-01"


def _csv(df, **kw) -> bytes:
    return df.to_csv(index=False, **kw).encode()


def _good(rows=400):
    return generate_batch(DATE, rows=rows)


def _parquet(df) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


# kind -> (files to deliver {name: bytes}, substrings the error must contain)
CORPUS = {
    "missing_column": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="missing_column"))},
        ["missing columns ['region']", "expect_table_columns_to_match_set"],
    ),
    "extra_column": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="extra_column"))},
        ["unexpected columns ['promo_code']"],
    ),
    "wrong_type": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="wrong_type"))},
        ["column tenure_months (dtype int)", "cannot be parsed", "'twelve'"],
    ),
    "nulls_over_limit": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="nulls"))},
        ["expect_column_values_to_not_be_null", "total_charges"],
    ),
    "out_of_range": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="out_of_range"))},
        ["expect_column_values_to_be_between", "monthly_charges", "age"],
    ),
    "unknown_category": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="unknown_category"))},
        ["expect_column_values_to_be_in_set", "region", "atlantis"],
    ),
    "duplicate_ids": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="duplicate_ids"))},
        ["expect_column_values_to_be_unique", "customer_id"],
    ),
    "bad_target": (
        {"b.csv": _csv(generate_batch(DATE, 300, corrupt="bad_target"))},
        ["expect_column_values_to_be_in_set", "churned"],
    ),
    "empty_file": ({"b.csv": b""}, ["b.csv is empty (0 bytes)"]),
    "header_only": (
        {"b.csv": _csv(_good().head(0))},
        ["b.csv has a header but no data rows", "expect_table_row_count_to_be_between"],
    ),
    "truncated_gzip": (
        {"b.csv.gz": gzip.compress(_csv(_good(2000)))[:5000]},
        ["b.csv.gz is a truncated or damaged gzip stream"],
    ),
    "non_utf8": (
        {"b.csv": _csv(_good()).replace(b"north", "n\xf6rth".encode("latin-1"))},
        ["b.csv is not valid UTF-8", "region"],
    ),
    "wrong_delimiter": (
        {"b.csv": _csv(_good(), sep=";")},
        ["looks ';'-delimited", "csv_delimiter=','"],
    ),
    "parquet_other_schema": (
        {"b.parquet": _parquet(_good().rename(columns={"age": "age_years"}).drop(columns=["region"]))},
        ["missing columns ['age', 'region']", "unexpected columns ['age_years']"],
    ),
    "not_data_png": (
        {"b.csv": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8},
        ["not a CSV file", "PNG image"],
    ),
    "not_parquet": ({"b.parquet": b"customer_id,event_ts\n1,2\n"}, ["b.parquet is not a valid Parquet file"]),
    "ragged_rows": (
        {"b.csv": _csv(_good(50)) + b"1,2,3\n"},
        ["b.csv has rows with a different number of fields"],
    ),
    "one_bad_file_of_two": (
        {"a.csv": _csv(_good(200)), "b.csv": _csv(generate_batch(DATE, 200, seed=9, corrupt="out_of_range"))},
        ["expect_column_values_to_be_between", "monthly_charges"],
    ),
}


@pytest.fixture
def lake(tmp_path, gx_root):
    # churn from the default catalog (config/datasets/), as a deployment without MLOPS_CONFIG finds it
    cfg = dataset_config(
        "churn",
        environ={"MLOPS_STORAGE__ROOT_URI": tmp_path.as_uri(), "MLOPS_VALIDATION__GX_ROOT": str(gx_root)},
    )
    store = LocalStorage(tmp_path)
    # a good partition is already staged for the date: a bad re-delivery must leave it as it was
    (tmp_path / "landing/churn" / DATE).mkdir(parents=True)
    (tmp_path / "landing/churn" / DATE / "good.csv").write_bytes(_csv(_good(150)))
    ingest.ingest_batch(cfg, DATE, store)
    (tmp_path / "landing/churn" / DATE / "good.csv").unlink()
    return cfg, store, tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_corpus_is_the_18_kinds_the_readme_counts():
    # one entry per kind of bad delivery; zero files and a malformed date are tested on their own below
    assert len(CORPUS) == 18, sorted(CORPUS)
    readme = (REPO / "README.md").read_text()
    assert f"`tests/integration/test_bad_inputs.py` ({len(CORPUS)} kinds:" in readme


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_bad_delivery_is_quarantined_with_a_clear_error(lake, kind):
    cfg, store, root = lake
    files, expected = CORPUS[kind]
    landing = root / "landing/churn" / DATE
    for name, data in files.items():
        (landing / name).write_bytes(data)
    staging_before = _snapshot(root / "staging")
    landing_before = _snapshot(landing)

    with pytest.raises(ingest.BatchRejected) as info:
        ingest.ingest_batch(cfg, DATE, store, attempt=f"t-{kind}")
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{kind}: {fragment!r} missing from:\n{message}"
    assert "trigger the ingest DAG again" in message  # says what to do next

    assert _snapshot(root / "staging") == staging_before, "staging must be untouched"
    assert _snapshot(landing) == landing_before, "landing must be untouched"
    q = root / "quarantine/churn" / f"ds={DATE}" / f"t-{kind}"
    assert info.value.quarantine_uri == f"file://{q}"
    for name, data in files.items():
        assert (q / "raw" / name).read_bytes() == data, "the raw delivery is kept byte for byte"
    reason = json.loads((q / "reason.json").read_text())
    assert reason["problems"] and reason["kind"] in {"unreadable", "schema", "quality"}


def test_zero_files_for_the_date(lake):
    cfg, store, root = lake
    with pytest.raises(ingest.NoLandingFiles, match="no landing files under .*landing/churn/2026-05-02"):
        ingest.ingest_batch(cfg, "2026-05-02", store)
    assert not (root / "quarantine/churn/ds=2026-05-02").exists()


def test_not_a_date(lake):
    cfg, store, _ = lake
    with pytest.raises(ValueError, match="use YYYY-MM-DD"):
        ingest.ingest_batch(cfg, "05/01/2026", store)
