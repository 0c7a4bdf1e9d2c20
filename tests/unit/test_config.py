"""The config file is validated, errors name the file and field, env vars override."""

from __future__ import annotations

import pytest

from mlops_bundle.config import DEFAULT_CONFIG_DIR, DEFAULT_CONFIG_PATH, ConfigError, load_config
from tests.conftest import REPO

DEFAULT = REPO / "config" / "datasets" / "churn.yaml"


def test_default_config_declares_the_sample_data_set():
    cfg = load_config(DEFAULT, environ={})
    assert cfg.dataset.name == "churn"
    assert cfg.dataset.target == "churned" and cfg.dataset.id_column == "customer_id"
    assert "churned" not in cfg.dataset.feature_columns and "customer_id" not in cfg.dataset.feature_columns
    assert cfg.root_uri == f"file://{REPO / 'var' / 'lake'}"
    assert cfg.gx_root == REPO / "great_expectations"  # ../../great_expectations from config/datasets/
    assert DEFAULT_CONFIG_PATH == DEFAULT and DEFAULT_CONFIG_DIR == DEFAULT.parent


def test_env_overrides_keep_types():
    cfg = load_config(
        DEFAULT,
        environ={
            "MLOPS_STORAGE__ROOT_URI": "s3://bucket/prefix/",
            "MLOPS_VALIDATION__RESULT_RETENTION": "5",
            "MLOPS_VALIDATION__BUILD_DATA_DOCS": "false",
        },
    )
    assert cfg.root_uri == "s3://bucket/prefix"
    assert cfg.validation.result_retention == 5 and cfg.validation.build_data_docs is False


def test_mlops_config_env_selects_the_file(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(DEFAULT.read_text().replace("  name: churn\n", "  name: churn_eu\n"))
    assert load_config(environ={"MLOPS_CONFIG": str(other)}).dataset.name == "churn_eu"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("target: churned", "target: label"), "target='label' is not one of the declared columns"),
        (("result_retention: 30", "result_retention: 0"), "validation.result_retention"),
        (("root_uri: ../../var/lake", "root_uri: gs://bucket"), "only file:// and s3:// are supported"),
        (('csv_delimiter: ","', 'csv_delimiter: ";;"'), "ingest.csv_delimiter"),
        (
            ("  name: churn\n", "  name: churn\n  colour: blue\n"),
            "dataset.colour: Extra inputs are not permitted",
        ),
        (
            ("{name: age, dtype: float, nullable: true}", "{name: age, dtype: decimal}"),
            "dataset.columns.6.dtype",
        ),
    ],
)
def test_invalid_config_names_file_and_field(tmp_path, edit, message):
    bad = tmp_path / "bad.yaml"
    text = DEFAULT.read_text()
    assert edit[0] in text
    bad.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={}).root_uri  # noqa: B018  (root_uri validates the scheme lazily)
    assert str(bad) in str(info.value) or "storage.root_uri" in str(info.value)
    assert message in str(info.value)


def test_missing_file_and_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match="not found: set MLOPS_CONFIG"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="unknown section 'storag'"):
        load_config(DEFAULT, environ={"MLOPS_STORAG__ROOT_URI": "x"})
