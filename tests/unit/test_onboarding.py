"""Onboarding by command (``python -m mlops_bundle new-dataset``), with real GX and the ingest's own
validation path (``ingest.schema.coerce`` + ``validation.validation_from_config``), no mocks.

Three samples are written in the test (numeric-only binary from sklearn's breast cancer data; mixed types
with categories and nulls, multiclass; regression from sklearn's diabetes data, as data set `progression`: the committed GX
context has the demo's own `diabetes`) and onboarded, one
subprocess each, into a copy of the committed GX context, whose churn files must stay byte-identical.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_bundle.config import PROJECT_ROOT, load_config
from mlops_bundle.ingest.schema import coerce
from mlops_bundle.onboarding import OnboardingError, infer_dtype, infer_task, widen
from mlops_bundle.validation import ValidationOutcome, validate_frame, validation_from_config

REPO_GX = PROJECT_ROOT / "great_expectations"
NO_DOCS = {"MLOPS_VALIDATION__BUILD_DATA_DOCS": "false"}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "uncommitted" not in p.parts
    }


def _cli(*args: str, cwd: Path, wait: bool = True) -> Any:
    cmd = [
        sys.executable,
        "-m",
        "mlops_bundle",
        "new-dataset",
        *args,
        "--config-dir",
        "cfg",
        "--gx-root",
        "gx",
    ]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180)


def _samples(folder: Path) -> dict[str, Path]:
    from sklearn.datasets import load_breast_cancer, load_diabetes

    rng = np.random.default_rng(7)
    # 1. numeric only, binary int target
    cancer = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 3, -1]]
    cancer.columns = ["mean_radius", "mean_texture", "mean_perimeter", "mean_area", "malignant"]
    cancer.insert(0, "row_id", range(1, len(cancer) + 1))
    cancer.insert(
        1,
        "event_ts",
        pd.date_range("2026-01-05", periods=len(cancer), freq="min").strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    # 2. mixed: text id, categories (one with nulls), a nullable integer column, free text, multiclass text target
    n = 400
    orders = pd.DataFrame(
        {
            "order_id": [f"o{i:05d}" for i in range(n)],
            "event_ts": pd.date_range("2026-01-05", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "amount": rng.gamma(2, 30, n).round(2),
            "items": rng.integers(1, 9, n),
            "channel": rng.choice(["web", "store", "phone"], n),
            "coupon": rng.choice(np.array(["none", "SAVE10", None], dtype=object), n, p=[0.6, 0.3, 0.1]),
            "rating": np.where(rng.random(n) < 0.08, np.nan, rng.integers(1, 6, n)),
            "note": [f"free text {i}" for i in range(n)],
            "segment": rng.choice(["gold", "silver", "bronze"], n),
        }
    )
    # 3. regression: float target, no id and no timestamp column (sklearn's data as it comes)
    diabetes = load_diabetes(as_frame=True, scaled=False).frame
    paths = {
        "cancer": folder / "cancer.csv",
        "orders": folder / "orders.csv",
        "progression": folder / "progression.csv",
    }
    for name, df in (("cancer", cancer), ("orders", orders), ("progression", diabetes)):
        df.to_csv(paths[name], index=False)
    return paths


ARGS = {
    "cancer": ["--target", "malignant", "--id-column", "row_id", "--timestamp-column", "event_ts"],
    "orders": ["--target", "segment", "--id-column", "order_id", "--timestamp-column", "event_ts"],
    "progression": ["--target", "target"],
}


@pytest.fixture(scope="module")
def onboarded(tmp_path_factory):
    """Three data sets onboarded next to churn in a copy of the committed GX context."""
    work = tmp_path_factory.mktemp("onboard")
    shutil.copytree(REPO_GX, work / "gx", ignore=shutil.ignore_patterns("uncommitted"))
    churn_before = _hashes(work / "gx")
    yml_before = (work / "gx" / "great_expectations.yml").read_text(encoding="utf-8")
    samples = _samples(work)
    # all three at once: each holds the context's lock while it adds its asset to great_expectations.yml
    procs = {name: _cli(name, str(samples[name]), *ARGS[name], cwd=work, wait=False) for name in samples}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        runs[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return {
        "work": work,
        "samples": samples,
        "runs": runs,
        "churn_before": churn_before,
        "yml_before": yml_before,
    }


def _validate(cfg_path: Path, df: pd.DataFrame, environ: dict | None = None) -> ValidationOutcome:
    """What the ingest step does with a read batch: coerce to the config's dtypes, then the GX gate."""
    cfg = load_config(cfg_path, environ=environ if environ is not None else NO_DOCS)
    typed, _problems = coerce(df, cfg)
    return validation_from_config(typed, cfg, f"{cfg.dataset.name}/2026-01-05")


def _failed(outcome: ValidationOutcome, expectation: str, column: str | None) -> None:
    assert not outcome.success
    assert any(f.expectation == expectation and f.column == column for f in outcome.failures), (
        outcome.describe()
    )


def test_commands_succeed_and_print_what_to_review(onboarded):
    for name, run in onboarded["runs"].items():
        assert run.returncode == 0, f"{name}: {run.stderr}"
        assert f"wrote cfg/{name}.yaml" in run.stdout
        assert f"expectations/{name}_batch.json" in run.stdout
        assert "Review before the first ingest" in run.stdout
    out = onboarded["runs"]
    assert "task: binary (inferred" in out["cancer"].stdout
    assert "task: multiclass (inferred" in out["orders"].stdout
    assert "task: regression (inferred" in out["progression"].stdout
    assert "value set channel: ['phone', 'store', 'web']" in out["orders"].stdout
    assert "nullable coupon" in out["orders"].stdout and "free text note" in out["orders"].stdout
    assert "range mean_radius:" in out["cancer"].stdout


def test_written_configs_load_with_the_right_task_and_types(onboarded):
    work = onboarded["work"]
    cancer = load_config(work / "cfg" / "cancer.yaml", environ={})
    orders = load_config(work / "cfg" / "orders.yaml", environ={})
    diabetes = load_config(work / "cfg" / "progression.yaml", environ={})
    assert (cancer.dataset.task, orders.dataset.task, diabetes.dataset.task) == (
        "binary",
        "multiclass",
        "regression",
    )
    assert cancer.training.metric == "roc_auc" and diabetes.training.metric == "rmse"
    assert cancer.model_name == "cancer-classifier" and diabetes.model_name == "progression-regressor"
    assert diabetes.dataset.id_column is None and diabetes.dataset.timestamp_column is None
    assert "no --timestamp-column" in onboarded["runs"]["progression"].stdout
    assert cancer.gx_root == (work / "gx").resolve()
    assert cancer.validation.suite_name == "cancer_batch"
    assert cancer.validation.checkpoint_name == "cancer_batch_checkpoint"
    types = {c.name: (c.dtype, c.nullable) for c in orders.dataset.columns}
    assert types == {
        "order_id": ("string", False),
        "event_ts": ("datetime", False),
        "amount": ("float", False),
        "items": ("int", False),
        "channel": ("category", False),
        "coupon": ("category", True),
        "rating": ("float", True),
        "note": ("string", False),
        "segment": ("category", False),
    }
    assert {c.family for c in cancer.training.candidates} == {
        "logistic_regression",
        "hist_gradient_boosting",
        "random_forest",
    }
    # every candidate builds for its task (built-in families; estimator paths for regression)
    from mlops_bundle.training.models import resolve_candidates

    assert [c.estimator for c in resolve_candidates(diabetes)] == [
        "sklearn.linear_model.Ridge",
        "sklearn.ensemble.RandomForestRegressor",
    ]
    assert len(resolve_candidates(orders)) == len(resolve_candidates(cancer)) == 3
    # relative paths are written relative to the config file's folder
    text = (work / "cfg" / "cancer.yaml").read_text(encoding="utf-8")
    assert "gx_root: ../gx" in text
    assert "churn" not in text.lower()


@pytest.mark.parametrize("name", ["cancer", "orders", "progression"])
def test_generated_suite_accepts_its_sample(onboarded, name):
    work = onboarded["work"]
    df = pd.read_csv(onboarded["samples"][name])
    # the checkpoint path with Data Docs, as the ingest runs it by default
    outcome = _validate(work / "cfg" / f"{name}.yaml", df, environ={})
    assert outcome.success, outcome.describe()
    assert outcome.evaluated >= 2 * (len(df.columns) - 1)


@pytest.mark.parametrize(
    ("name", "column"), [("cancer", "mean_texture"), ("orders", "channel"), ("progression", "bmi")]
)
def test_missing_column_is_rejected(onboarded, name, column):
    df = pd.read_csv(onboarded["samples"][name]).drop(columns=[column])
    outcome = _validate(onboarded["work"] / "cfg" / f"{name}.yaml", df)
    _failed(outcome, "expect_table_columns_to_match_set", None)
    table = next(f for f in outcome.failures if f.expectation == "expect_table_columns_to_match_set")
    assert table.details["missing"] == [column]


@pytest.mark.parametrize(
    ("name", "column", "factor"),
    [
        ("cancer", "mean_area", 10),
        ("orders", "amount", -1),
        ("orders", "items", 100),
        ("progression", "target", 5),
    ],
)
def test_out_of_range_values_are_rejected(onboarded, name, column, factor):
    df = pd.read_csv(onboarded["samples"][name])
    df.loc[df.index[:3], column] = df[column].abs().max() * factor
    outcome = _validate(onboarded["work"] / "cfg" / f"{name}.yaml", df)
    _failed(outcome, "expect_column_values_to_be_between", column)
    assert "expect_column_values_to_be_between(column=" + column in outcome.describe()


@pytest.mark.parametrize(
    ("column", "value"), [("channel", "carrier_pigeon"), ("coupon", "FREE99"), ("segment", "platinum")]
)
def test_unknown_category_is_rejected(onboarded, column, value):
    df = pd.read_csv(onboarded["samples"]["orders"])
    df.loc[df.index[5], column] = value
    outcome = _validate(onboarded["work"] / "cfg" / "orders.yaml", df)
    _failed(outcome, "expect_column_values_to_be_in_set", column)
    failure = next(f for f in outcome.failures if f.column == column)
    assert value in failure.examples


def test_more_nulls_and_duplicate_ids_are_rejected(onboarded):
    work = onboarded["work"]
    df = pd.read_csv(onboarded["samples"]["orders"])
    df.loc[df.index[:200], "rating"] = np.nan  # half the rows: beyond the inferred limit
    df.loc[df.index[1], "order_id"] = df.loc[df.index[0], "order_id"]
    outcome = _validate(work / "cfg" / "orders.yaml", df)
    _failed(outcome, "expect_column_values_to_not_be_null", "rating")
    _failed(outcome, "expect_column_values_to_be_unique", "order_id")
    cancer = pd.read_csv(onboarded["samples"]["cancer"])
    cancer.loc[cancer.index[0], "mean_radius"] = np.nan  # no nulls in the sample: none allowed
    _failed(
        _validate(work / "cfg" / "cancer.yaml", cancer), "expect_column_values_to_not_be_null", "mean_radius"
    )


def test_other_data_sets_files_are_untouched(onboarded):
    gx = onboarded["work"] / "gx"
    after = _hashes(gx)
    changed = sorted(k for k, v in onboarded["churn_before"].items() if after.get(k) != v)
    assert changed == ["great_expectations.yml"]  # gained three assets, see below
    diff = list(
        difflib.ndiff(
            onboarded["yml_before"].splitlines(), (gx / "great_expectations.yml").read_text().splitlines()
        )
    )
    assert not [line for line in diff if line.startswith("- ")], (
        "lines of great_expectations.yml were removed"
    )
    assets = yaml.safe_load((gx / "great_expectations.yml").read_text())["fluent_datasources"]["pandas"][
        "assets"
    ]
    assert sorted(assets) == [
        "cancer_batches",
        "churn_batches",
        "diabetes_batches",
        "orders_batches",
        "progression_batches",
    ]
    assert sorted(set(after) - set(onboarded["churn_before"])) == sorted(
        f"{folder}/{name}{suffix}.json"
        for name in ("cancer", "orders", "progression")
        for folder, suffix in (
            ("expectations", "_batch"),
            ("validation_definitions", "_batch_validation"),
            ("checkpoints", "_batch_checkpoint"),
        )
    )
    # churn still validates through the shared great_expectations.yml
    from mlops_bundle.sample import generate_batch

    churn = load_config(PROJECT_ROOT / "config" / "datasets" / "churn.yaml", environ={})
    v = churn.validation
    outcome = validate_frame(
        generate_batch("2026-01-05", 300),
        gx_root=gx,
        suite_name=v.suite_name,
        validation_definition=v.validation_definition,
        checkpoint_name=v.checkpoint_name,
        batch_label="churn/2026-01-05",
        build_data_docs=False,
    )
    assert outcome.success, outcome.describe()


def test_existing_data_set_is_refused_without_force_and_rewritten_identically_with_it(onboarded):
    work = onboarded["work"]
    before = _hashes(work / "gx"), (work / "cfg" / "cancer.yaml").read_bytes()
    run = _cli("cancer", str(onboarded["samples"]["cancer"]), *ARGS["cancer"], cwd=work)
    assert run.returncode == 2
    assert "already exists" in run.stderr and "--force" in run.stderr and "cancer.yaml" in run.stderr
    assert (_hashes(work / "gx"), (work / "cfg" / "cancer.yaml").read_bytes()) == before
    run = _cli("cancer", str(onboarded["samples"]["cancer"]), *ARGS["cancer"], "--force", cwd=work)
    assert run.returncode == 0, run.stderr
    assert (_hashes(work / "gx"), (work / "cfg" / "cancer.yaml").read_bytes()) == before  # deterministic


def test_clear_errors_write_nothing(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,label\n1,2,0\n3,4,1\n", encoding="utf-8")
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file")
    cases = [
        (["s", "s.csv", "--target", "nope"], "--target 'nope' is not a column of s.csv"),
        (["s", "missing.csv", "--target", "label"], "sample file missing.csv not found"),
        (["s", "bad.parquet", "--target", "label"], "sample file bad.parquet cannot be read"),
        (["S-1", "s.csv", "--target", "label"], "data set name 'S-1'"),
        (["s", "s.csv", "--target", "label", "--timestamp-column", "a"], "does not read as an ISO date"),
    ]
    for args, message in cases:
        run = _cli(*args, cwd=tmp_path)
        assert run.returncode == 2, run.stdout
        assert message in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "cfg").exists() or not list((tmp_path / "cfg").iterdir())
    assert not (tmp_path / "gx").exists()


def test_unknown_command_lists_the_commands(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "mlops_bundle", "nope"], cwd=tmp_path, capture_output=True, text=True
    )
    assert run.returncode == 2 and "new-dataset" in run.stderr


def test_inference_rules():
    assert widen(6.981, 28.11, integer=False) == (4.0, 31.0)
    assert widen(1, 8, integer=True) == (0.0, 9.0)  # never negative in the sample: stays >= 0
    assert widen(-5, 5, integer=True) == (-6.0, 6.0)
    assert widen(3, 3, integer=True) == (2.0, 4.0)  # constant column: a margin of 10% of |value|, at least 1
    assert infer_dtype(pd.Series(["2026-01-05T10:00:00Z", None])) == "datetime"
    assert infer_dtype(pd.Series(["2026"] * 4)) == "category"
    assert infer_dtype(pd.Series([f"t{i}" for i in range(100)])) == "string"
    assert infer_task(pd.Series([0, 1, 1], name="y"), "int")[0] == "binary"
    assert infer_task(pd.Series(["a", "b", "c"], name="y"), "category")[0] == "multiclass"
    assert infer_task(pd.Series([0.5, 1.5, 2.0], name="y"), "float")[0] == "regression"
    assert infer_task(pd.Series(range(100), name="y"), "int")[0] == "regression"
    with pytest.raises(OnboardingError, match="1 distinct value"):
        infer_task(pd.Series([1, 1], name="y"), "int")


def test_gx_init_check_is_clean_and_reproduces_churn(tmp_path):
    script = PROJECT_ROOT / "scripts" / "gx_init.py"
    run = subprocess.run(
        [sys.executable, str(script), "--check"], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    committed = _hashes(REPO_GX)

    def generate(target: Path) -> dict[str, str]:
        run = subprocess.run(
            [sys.executable, str(script), "--target", str(target)],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        return _hashes(target)

    # from nothing: churn's files are the committed ones (the committed context also holds the files of
    # the data sets onboarded with new-dataset, e.g. the demo's diabetes, and their assets in the yml)
    fresh = generate(tmp_path / "gx")
    assert set(fresh) <= set(committed)
    churn_files = sorted(k for k in fresh if k != "great_expectations.yml")
    assert churn_files and {k: fresh[k] for k in churn_files} == {k: committed[k] for k in churn_files}
    # over a copy of the committed context: byte-identical, no other data set's file rewritten
    copy = tmp_path / "copy"
    shutil.copytree(REPO_GX, copy, ignore=shutil.ignore_patterns("uncommitted"))
    assert generate(copy) == committed


def _small_sample(rows: int = 300, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    data = {"label": rng.integers(0, 2, rows), "x": rng.random(rows)}
    data.update({k: v(rng, rows) if callable(v) else v for k, v in columns.items()})
    return pd.DataFrame(data)


def test_a_line_break_in_the_sample_file_name_cannot_inject_yaml(tmp_path):
    """F7: the file name goes into the config's first comment as a Python literal, so \\n, \\r, U+2028 and
    friends are escaped instead of ending the comment (a Linux file name may hold a newline)."""
    from mlops_bundle.onboarding import new_dataset

    for i, evil in enumerate(
        ["s\u2028source: injected\u2028#.csv", "s\nsource: injected\n#.csv", "s\r\x85x: 1\u2029.csv"]
    ):
        sample = tmp_path / evil
        _small_sample().to_csv(sample, index=False)
        report = new_dataset(
            f"fn{i}", sample, target="label", config_dir=tmp_path / "cfg", gx_root=tmp_path / "gx"
        )
        text = report.config_path.read_text(encoding="utf-8")
        first, second = text.split("\n", 2)[:2]
        assert first.startswith("# Data set") and repr(evil) in first, first
        assert second.startswith("# Review"), second
        for brk in ("\r", "\x85", "\u2028", "\u2029"):
            assert brk not in text
        data = yaml.safe_load(text)
        assert "source" not in data and "x" not in data
        assert load_config(report.config_path, environ={}).dataset.name == f"fn{i}"


def test_infinite_or_huge_numbers_skip_the_range_rule_with_a_review_line(tmp_path):
    """F7: inf or +-1e308 in a feature cannot be widened into a finite range: no range rule for that
    column (said in the review), not an OverflowError; a regression target like that is refused clearly."""
    from mlops_bundle.onboarding import new_dataset

    def inf(rng, n):
        return np.where(np.arange(n) == 3, np.inf, rng.random(n))

    def huge(rng, n):
        return np.where(np.arange(n) % 2 == 1, 1e308, -1e308)

    _small_sample(y=inf, z=huge).to_csv(tmp_path / "s.csv", index=False)
    report = new_dataset(
        "infy", tmp_path / "s.csv", target="label", config_dir=tmp_path / "c", gx_root=tmp_path / "g"
    )
    for col in ("y", "z"):
        line = next(r for r in report.review if r.startswith(f"no range rule for {col}:"))
        assert "infinite or too large to widen" in line, line
    assert any(r.startswith("range x: [") for r in report.review)
    suite = (tmp_path / "g" / "expectations" / "infy_batch.json").read_text()
    assert "Infinity" not in suite and "NaN" not in suite
    exps = json.loads(suite)["expectations"]
    ranged = [e["kwargs"].get("column") for e in exps if e["type"] == "expect_column_values_to_be_between"]
    assert "x" in ranged and "y" not in ranged and "z" not in ranged
    with pytest.raises(
        OnboardingError, match=r"target 'z' in 's.csv' holds infinite values or values too large"
    ):
        new_dataset(
            "infz",
            tmp_path / "s.csv",
            target="z",
            task="regression",
            config_dir=tmp_path / "c",
            gx_root=tmp_path / "g",
        )


def test_multiclass_labels_sharing_a_probability_column_are_refused(tmp_path):
    from mlops_bundle.features import proba_column
    from mlops_bundle.onboarding import new_dataset

    forged = proba_column("a b")[len("proba__") :]
    labels = ["a b", forged, "c"]
    _small_sample(label=lambda rng, n: np.array(labels)[np.arange(n) % 3]).to_csv(
        tmp_path / "s.csv", index=False
    )
    with pytest.raises(OnboardingError, match=r"the classes \['a b', '" + forged + r"'\] would share"):
        new_dataset(
            "clash", tmp_path / "s.csv", target="label", config_dir=tmp_path / "c", gx_root=tmp_path / "g"
        )
    assert not (tmp_path / "c" / "clash.yaml").exists()
