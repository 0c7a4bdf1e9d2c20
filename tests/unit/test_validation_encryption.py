"""With encryption on, GX keeps no values from the data: no Data Docs, no unexpected examples in the
stored results (they are plaintext files outside the lake). Real GX on a copy of the committed context."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlops_bundle.config import DEFAULT_CONFIG_PATH, PROJECT_ROOT, load_config
from mlops_bundle.sample import generate_batch
from mlops_bundle.validation import validation_from_config

DAY = "2026-01-05"


def _stored_examples(gx_root: Path) -> list:
    """Every unexpected example value in the validation results GX stored."""
    found = []
    for path in (gx_root / "uncommitted").rglob("*.json"):
        text = path.read_text()
        if "partial_unexpected_list" not in text:
            continue
        for r in json.loads(text).get("results", []):
            found += (r.get("result") or {}).get("partial_unexpected_list") or []
    return found


@pytest.mark.parametrize("encrypted", [False, True], ids=["encryption-off", "encryption-on"])
def test_gx_keeps_no_example_values_when_encryption_is_on(tmp_path, encrypted):
    gx_root = tmp_path / "great_expectations"
    shutil.copytree(
        PROJECT_ROOT / "great_expectations", gx_root, ignore=shutil.ignore_patterns("uncommitted")
    )
    cfg = load_config(
        DEFAULT_CONFIG_PATH,
        environ={
            "MLOPS_VALIDATION__GX_ROOT": str(gx_root),
            "MLOPS_VALIDATION__BUILD_DATA_DOCS": "true",
            "MLOPS_ENCRYPTION__ENABLED": str(encrypted).lower(),
        },
    )
    df = generate_batch(DAY, 500, corrupt="out_of_range")
    outcome = validation_from_config(df, cfg, f"churn/{DAY}")
    assert not outcome.success
    money = next(f for f in outcome.failures if f.column == "monthly_charges")
    assert money.unexpected_count == 25  # counts and the rule still explain the failure
    docs = list((gx_root / "uncommitted").rglob("data_docs"))
    if not encrypted:  # the control: GX keeps the bad values in its results and Data Docs
        assert money.examples and all(v < 0 for v in money.examples)
        assert outcome.data_docs_url and docs and _stored_examples(gx_root)
        return
    assert money.examples == [] and "unexpected values" in money.describe()
    assert outcome.data_docs_url is None and not docs
    assert _stored_examples(gx_root) == []
    assert list((gx_root / "uncommitted").rglob("*.json")), "the result is still stored (without values)"
