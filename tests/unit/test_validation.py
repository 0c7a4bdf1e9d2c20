"""The GX quality gate against the committed suite, with real Great Expectations (no mocks).

The committed great_expectations/ folder is copied to a temporary folder once per module, so the tests
never write into the repository's uncommitted/ and the GX context is loaded (and cached) only once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mlops_bundle.config import PROJECT_ROOT, load_config
from mlops_bundle.sample import CORRUPTIONS, generate_batch
from mlops_bundle.validation import (
    ExpectationFailure,
    ValidationOutcome,
    check_suite_columns,
    prune_results,
    validate_frame,
    validation_from_config,
)

ROWS = 500
DAY = "2026-01-05"
REPO_GX = PROJECT_ROOT / "great_expectations"


@pytest.fixture(scope="module")
def cfg():
    return load_config(PROJECT_ROOT / "config" / "datasets" / "churn.yaml", environ={})


@pytest.fixture(scope="module")
def gx_root(tmp_path_factory, cfg) -> Path:
    root = tmp_path_factory.mktemp("gx") / "great_expectations"
    shutil.copytree(REPO_GX, root, ignore=shutil.ignore_patterns("uncommitted"))
    return root


@pytest.fixture(scope="module")
def run(gx_root, cfg):
    v = cfg.validation

    def _run(df: pd.DataFrame, label: str = f"churn/{DAY}", **kw) -> ValidationOutcome:
        kw.setdefault("build_data_docs", False)
        return validate_frame(
            df,
            gx_root=gx_root,
            suite_name=v.suite_name,
            validation_definition=v.validation_definition,
            checkpoint_name=v.checkpoint_name,
            batch_label=label,
            **kw,
        )

    return _run


def _failure(outcome: ValidationOutcome, expectation: str, column: str | None) -> ExpectationFailure:
    for f in outcome.failures:
        if f.expectation == expectation and f.column == column:
            return f
    raise AssertionError(f"no failure {expectation} on {column}:\n{outcome.describe()}")


def test_committed_context_is_clean():
    assert not (REPO_GX / "__init__.py").exists()
    for name in (
        "great_expectations.yml",
        ".gitignore",
        "expectations/churn_batch.json",
        "validation_definitions/churn_batch_validation.json",
        "checkpoints/churn_batch_checkpoint.json",
    ):
        text = (REPO_GX / name).read_text(encoding="utf-8")
        assert str(PROJECT_ROOT) not in text, f"{name} contains a machine path"
    assert "uncommitted/" in (REPO_GX / ".gitignore").read_text(encoding="utf-8")


def test_clean_batch_passes(run):
    outcome = run(generate_batch(DAY, ROWS))
    assert outcome.success, outcome.describe()
    assert outcome.failures == []
    assert outcome.evaluated == outcome.successful > 20
    assert outcome.describe().startswith("GX suite 'churn_batch' passed all")
    json.dumps(outcome.result, allow_nan=False)  # storable as is
    assert outcome.result["statistics"]["evaluated_expectations"] == outcome.evaluated


def test_string_dtype_text_columns_pass(run):
    df = generate_batch(DAY, ROWS)
    for col in ("contract_type", "payment_method", "region"):
        df[col] = df[col].astype("string")
    outcome = run(df)
    assert outcome.success, outcome.describe()


EXPECTED = {
    # corruption: (expectation, column, a value that must appear in examples or None)
    "nulls": ("expect_column_values_to_not_be_null", "total_charges", None),
    "out_of_range": ("expect_column_values_to_be_between", "monthly_charges", None),
    "unknown_category": ("expect_column_values_to_be_in_set", "region", "atlantis"),
    "duplicate_ids": ("expect_column_values_to_be_unique", "customer_id", None),
    "missing_column": ("expect_table_columns_to_match_set", None, None),
    "extra_column": ("expect_table_columns_to_match_set", None, None),
    # GX checks an object column value by value: python ints are not numpy int64 either, so every value
    # is reported unexpected (the ingest coercion step catches this case first with a better message)
    "wrong_type": ("expect_column_values_to_be_of_type", "tenure_months", None),
    "bad_target": ("expect_column_values_to_be_in_set", "churned", 2),
}


def test_every_corruption_is_covered():
    assert set(EXPECTED) == set(CORRUPTIONS)


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupted_batch_fails_naming_rule_and_column(run, corruption):
    df = generate_batch(DAY, ROWS, corrupt=corruption)
    outcome = run(df, label=f"churn/{DAY}/{corruption}")
    assert not outcome.success
    expectation, column, example = EXPECTED[corruption]
    failure = _failure(outcome, expectation, column)
    if example is not None:
        assert example in failure.examples, failure.describe()
    text = outcome.describe()
    assert text.startswith(f"GX suite 'churn_batch' failed {len(outcome.failures)} of {outcome.evaluated}")
    assert failure.describe() in text
    json.dumps(outcome.result, allow_nan=False)


def test_out_of_range_details(run):
    outcome = run(generate_batch(DAY, ROWS, corrupt="out_of_range"))
    money = _failure(outcome, "expect_column_values_to_be_between", "monthly_charges")
    assert money.rule["min_value"] == 15 and money.rule["max_value"] == 250
    assert money.unexpected_count == ROWS // 20
    assert money.unexpected_percent == pytest.approx(5.0)
    assert 0 < len(money.examples) <= 5 and all(v < 0 for v in money.examples)
    assert "monthly_charges" in money.describe() and "unexpected values (5.0%)" in money.describe()
    age = _failure(outcome, "expect_column_values_to_be_between", "age")
    assert age.examples == [250.0]


def test_nulls_report_mostly(run):
    outcome = run(generate_batch(DAY, ROWS, corrupt="nulls"))
    failure = _failure(outcome, "expect_column_values_to_not_be_null", "total_charges")
    assert failure.rule["mostly"] == 0.95
    assert failure.unexpected_percent > 20


def test_duplicate_ids_example_is_the_id(run):
    df = generate_batch(DAY, ROWS, corrupt="duplicate_ids")
    failure = _failure(run(df), "expect_column_values_to_be_unique", "customer_id")
    assert failure.examples == [int(df["customer_id"].iloc[0])]


def test_column_set_failures_name_the_columns(run):
    missing_outcome = run(generate_batch(DAY, ROWS, corrupt="missing_column"))
    missing = _failure(missing_outcome, "expect_table_columns_to_match_set", None)
    assert missing.details["missing"] == ["region"]
    assert missing is missing_outcome.failures[0]  # the table-level failure comes first
    assert "missing columns ['region']" in missing.describe()
    extra = _failure(
        run(generate_batch(DAY, ROWS, corrupt="extra_column")), "expect_table_columns_to_match_set", None
    )
    assert extra.details["unexpected"] == ["promo_code"]
    assert "promo_code" in extra.describe()
    assert "promo_code" in extra.observed


def test_wrong_type_also_reports_unevaluable_range(run):
    outcome = run(generate_batch(DAY, ROWS, corrupt="wrong_type"))
    of_type = _failure(outcome, "expect_column_values_to_be_of_type", "tenure_months")
    assert of_type.rule == {"type_": "int64"} and of_type.unexpected_count == ROWS
    assert of_type.details["dtype"] == "object"
    assert "column dtype is object" in of_type.describe()
    assert outcome.failures[-1] is between_failure(outcome)  # unevaluable expectations are listed last
    between = _failure(outcome, "expect_column_values_to_be_between", "tenure_months")
    assert "exception" in between.details
    assert "could not be evaluated" in between.describe()


def test_checkpoint_run_builds_data_docs(run, gx_root):
    outcome = run(generate_batch(DAY, ROWS, corrupt="unknown_category"), build_data_docs=True)
    index = gx_root / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert index.is_file()
    assert outcome.data_docs_url and outcome.data_docs_url.startswith("file://")
    page = Path(outcome.data_docs_url.removeprefix("file://"))
    assert page.is_file() and page.suffix == ".html"
    assert "churn__2026-01-05" in outcome.data_docs_url  # the batch label is the run name
    assert outcome.data_docs_url in outcome.describe()
    assert not outcome.success


def between_failure(outcome: ValidationOutcome) -> ExpectationFailure:
    return _failure(outcome, "expect_column_values_to_be_between", "tenure_months")


def _stored(gx_root: Path) -> list[Path]:
    return sorted((gx_root / "uncommitted" / "validations").rglob("*.json"))


def test_prune_keeps_exactly_keep(run, gx_root):
    for i in range(3):
        run(generate_batch(DAY, 50), label=f"churn/prune-{i}", build_data_docs=True)
    before = _stored(gx_root)
    assert len(before) >= 4
    newest = before and max(before, key=lambda p: p.parent.name)
    deleted = prune_results(gx_root, keep=2)
    after = _stored(gx_root)
    assert deleted == len(before) - 2
    assert len(after) == 2 and newest in after
    pages = list((gx_root / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html"))
    assert len(pages) <= 2
    assert prune_results(gx_root, keep=2) == 0


def test_validate_frame_applies_retention(run, gx_root):
    for i in range(3):
        run(generate_batch(DAY, 50), label=f"churn/retention-{i}", retention=2)
    assert len(_stored(gx_root)) == 2


def test_validation_from_config(gx_root, cfg):
    cfg2 = cfg.model_copy(
        update={
            "validation": cfg.validation.model_copy(
                update={"gx_root": str(gx_root), "build_data_docs": False}
            )
        }
    )
    outcome = validation_from_config(generate_batch(DAY, ROWS, corrupt="bad_target"), cfg2, f"churn/{DAY}")
    assert not outcome.success
    assert _failure(outcome, "expect_column_values_to_be_in_set", "churned").examples == [2]


def test_config_suite_mismatch_names_columns(gx_root, cfg):
    columns = [c for c in cfg.dataset.column_names if c != "region"] + ["segment"]
    with pytest.raises(ValueError) as err:
        check_suite_columns(gx_root, "churn_batch", columns, config_source="config/datasets/churn.yaml")
    msg = str(err.value)
    assert "churn_batch.json" in msg
    assert "only in the suite: ['region']" in msg
    assert "only in the config: ['segment']" in msg
    assert "Update one of them" in msg


def test_validation_from_config_checks_columns(gx_root, cfg, tmp_path):
    text = (PROJECT_ROOT / "config" / "datasets" / "churn.yaml").read_text(encoding="utf-8")
    text = text.replace("- {name: region, dtype: category}", "- {name: segment, dtype: category}")
    text = text.replace("gx_root: ../../great_expectations", f"gx_root: {gx_root}")
    path = tmp_path / "renamed.yaml"
    path.write_text(text, encoding="utf-8")
    renamed = load_config(path, environ={})
    with pytest.raises(
        ValueError, match=r"only in the suite: \['region'\].*only in the config: \['segment'\]"
    ):
        validation_from_config(generate_batch(DAY, ROWS), renamed, f"churn/{DAY}")


@pytest.mark.parametrize(
    ("field", "docs", "what"),
    [("checkpoint_name", True, "checkpoint"), ("validation_definition", False, "validation definition")],
)
def test_a_missing_gx_file_is_named_with_the_command_that_creates_it(gx_root, cfg, field, docs, what):
    names = {
        "suite_name": cfg.validation.suite_name,
        "validation_definition": cfg.validation.validation_definition,
        "checkpoint_name": cfg.validation.checkpoint_name,
        field: "orders_batch_x",
    }
    with pytest.raises(ValueError) as err:
        validate_frame(
            generate_batch(DAY, rows=50),
            gx_root=gx_root,
            batch_label="orders/x",
            build_data_docs=docs,
            **names,
        )
    text = str(err.value)
    assert f"GX {what} 'orders_batch_x' not found at {gx_root}" in text
    assert "python -m mlops_bundle new-dataset" in text and f"validation.{field}" in text
