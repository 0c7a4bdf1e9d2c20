"""The data set catalog (mlops_bundle.catalog): a folder of config files, one data set each; a broken file
is an entry with an error naming the file and the field, the others load; names are checked before any
path is built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mlops_bundle import catalog
from mlops_bundle.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from tests import sk_data

# no MLOPS_* of the test session: each test says what its environment is
ENV: dict[str, str] = {}


def _churn(folder: Path, name: str = "churn", file: str | None = None, edit=None) -> Path:
    """A copy of config/datasets/churn.yaml declaring data set ``name`` in ``folder/<file or name>.yaml``,
    with GX names of its own, its relative paths made absolute (they stay where the original's point)."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    data["dataset"]["name"] = name
    for field in ("suite_name", "validation_definition", "checkpoint_name"):  # GX names are per data set
        data["validation"][field] = data["validation"][field].replace("churn", name)
    base = DEFAULT_CONFIG_PATH.parent
    data["storage"]["root_uri"] = str((base / data["storage"]["root_uri"]).resolve())
    data["mlflow"]["tracking_uri"] = str((base / data["mlflow"]["tracking_uri"]).resolve())
    data["validation"]["gx_root"] = str((base / data["validation"]["gx_root"]).resolve())
    data["audit"]["store_uri"] = str((base / data["audit"]["store_uri"]).resolve())
    data["audit"]["gap_dir"] = str((base / data["audit"]["gap_dir"]).resolve())
    if edit:
        edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file or f"{name}.yaml")
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _same_audit(path: Path, like: Path) -> Path:
    """Give the config at ``path`` the audit section of ``like`` (one audit chain per deployment)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["audit"] = yaml.safe_load(like.read_text(encoding="utf-8"))["audit"]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def test_a_folder_of_two_valid_configs_gives_both_sorted(tmp_path):
    _churn(tmp_path, "telco")
    _churn(tmp_path, "churn")
    entries = catalog.scan(tmp_path, ENV)
    assert [(e.name, e.path.name, e.error) for e in entries] == [
        ("churn", "churn.yaml", None),
        ("telco", "telco.yaml", None),
    ]
    assert [c.dataset.name for c in catalog.configs(tmp_path, ENV)] == ["churn", "telco"]
    # every data set's relative paths resolve against its own file: both point where churn's do
    assert (
        catalog.dataset_config("telco", tmp_path, ENV).root_uri
        == load_config(DEFAULT_CONFIG_PATH, ENV).root_uri
    )


def test_drafts_and_hidden_files_are_not_data_sets(tmp_path):
    _churn(tmp_path, "churn")
    (tmp_path / "_draft.yaml").write_text("dataset: [not, a, config", encoding="utf-8")
    (tmp_path / ".hidden.yml").write_text("dataset: [not, a, config", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not yaml at all: [", encoding="utf-8")
    assert [(e.name, e.error) for e in catalog.scan(tmp_path, ENV)] == [("churn", None)]


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ("dataset:\n  name: [unclosed\n", None),  # not YAML
        (None, "training.min_rows"),  # an invalid field
    ],
    ids=["bad-yaml", "invalid-field"],
)
def test_a_broken_file_is_an_entry_naming_file_and_field_while_the_others_load(tmp_path, broken, field):
    _churn(tmp_path, "churn")
    _churn(tmp_path, "telco")
    if broken is None:
        bad = _churn(tmp_path, "wine", edit=lambda d: d["training"].update(min_rows=-5))
    else:
        bad = tmp_path / "wine.yaml"
        bad.write_text(broken, encoding="utf-8")
    entries = {e.name: e for e in catalog.scan(tmp_path, ENV)}
    assert sorted(entries) == ["churn", "telco", "wine"]
    assert entries["churn"].config is not None and entries["telco"].config is not None
    wine = entries["wine"]
    assert wine.config is None and wine.path == bad
    assert str(bad) in wine.error, wine.error
    if field:
        assert field in wine.error, wine.error
    else:
        assert "yaml" in wine.error.lower() or "line" in wine.error, wine.error
    assert [c.dataset.name for c in catalog.configs(tmp_path, ENV)] == ["churn", "telco"]
    with pytest.raises(ConfigError, match="training.min_rows" if field else "wine.yaml"):
        catalog.dataset_config("wine", tmp_path, ENV)
    assert catalog.dataset_config("telco", tmp_path, ENV).dataset.name == "telco"


def test_file_name_must_be_the_data_set_name(tmp_path):
    _churn(tmp_path, "churn")
    path = _churn(tmp_path, "telco", file="mobile.yaml")
    [churn, mobile] = catalog.scan(tmp_path, ENV)
    assert churn.config is not None
    assert mobile.name == "mobile" and mobile.config is None
    assert str(path) in mobile.error and "dataset.name" in mobile.error and "'telco'" in mobile.error
    with pytest.raises(ConfigError, match="no data set 'telco'"):
        catalog.dataset_config("telco", tmp_path, ENV)
    with pytest.raises(ConfigError, match="dataset.name"):
        catalog.dataset_config("mobile", tmp_path, ENV)


def test_two_files_declaring_one_name_give_one_data_set_and_one_error(tmp_path):
    yaml_file = _churn(tmp_path, "churn", file="churn.yaml")
    yml_file = _churn(tmp_path, "churn", file="churn.yml")
    entries = catalog.scan(tmp_path, ENV)
    assert len(entries) == 2
    valid = [e for e in entries if e.config is not None]
    broken = [e for e in entries if e.config is None]
    assert [e.name for e in valid] == ["churn"] and len(broken) == 1
    # the first file (by name) is the data set; the other gets a placeholder (DAG id churn__config_error,
    # beside the data set's own DAGs: no DAG id is taken twice)
    assert (valid[0].path, broken[0].path) == (yaml_file, yml_file)
    assert "already declared" in broken[0].error and "dataset.name" in broken[0].error
    assert str(broken[0].path) in broken[0].error


def test_two_broken_files_with_one_stem_get_unique_placeholder_names(tmp_path):
    _churn(tmp_path, "churn")
    (tmp_path / "wine.yaml").write_text("dataset: [", encoding="utf-8")
    (tmp_path / "wine.yml").write_text("dataset: {", encoding="utf-8")
    (tmp_path / "Bad-Name.yaml").write_text("dataset: {", encoding="utf-8")
    entries = catalog.scan(tmp_path, ENV)
    names = [e.name for e in entries]
    assert len(names) == len(set(names)) == 4, names
    broken = [e for e in entries if e.config is None]
    assert sorted(e.path.name for e in broken) == ["Bad-Name.yaml", "wine.yaml", "wine.yml"]
    from mlops_bundle.names import DATASET_NAME_RE

    assert all(DATASET_NAME_RE.match(e.name) for e in entries), names
    assert all(str(e.path) in e.error for e in broken)


def test_a_data_set_with_another_audit_store_is_an_error_naming_audit(tmp_path):
    _churn(tmp_path, "churn")
    other = _churn(tmp_path, "telco", edit=lambda d: d["audit"].update(store_uri=str(tmp_path / "other.db")))
    entries = {e.name: e for e in catalog.scan(tmp_path, ENV)}
    assert entries["churn"].config is not None
    telco = entries["telco"]
    assert telco.config is None and str(other) in telco.error
    assert "audit" in telco.error and str(tmp_path / "other.db") in telco.error
    # the deployment-wide override gives every data set the same store: both valid
    env = {"MLOPS_AUDIT__STORE_URI": f"sqlite:///{tmp_path / 'shared.db'}"}
    assert [c.dataset.name for c in catalog.configs(tmp_path, env)] == ["churn", "telco"]


def test_a_copy_that_keeps_another_data_sets_names_is_an_error_naming_the_field(tmp_path):
    _churn(tmp_path, "churn")
    copy = _churn(tmp_path, "telco", edit=lambda d: d["validation"].update(suite_name="churn_batch"))
    entries = {e.name: e for e in catalog.scan(tmp_path, ENV)}
    assert entries["churn"].config is not None
    telco = entries["telco"]
    assert telco.config is None and str(copy) in telco.error
    assert "validation.suite_name" in telco.error and "'churn'" in telco.error


@pytest.mark.parametrize(
    "name", ["../x", "x/../churn", "/etc/passwd", "churn.yaml", "Churn", "", "1churn", "a" * 64, "churn\n"]
)
def test_invalid_names_are_refused_before_any_path_use(tmp_path, name):
    # a location that does not exist: had the name reached the path lookup, this would be a ConfigError
    with pytest.raises(ValueError, match="data set name .* is invalid") as info:
        catalog.dataset_config(name, tmp_path / "nowhere", ENV)
    assert not isinstance(info.value, ConfigError)


def test_an_unknown_data_set_is_a_config_error(tmp_path):
    _churn(tmp_path, "churn")
    with pytest.raises(ConfigError, match="no data set 'telco'"):
        catalog.dataset_config("telco", tmp_path, ENV)
    # a single config file answers only for the data set it declares
    with pytest.raises(ConfigError, match="dataset.name: 'churn' is not the data set 'telco'"):
        catalog.dataset_config("telco", tmp_path / "churn.yaml", ENV)


def test_a_single_file_is_a_catalog_of_one(tmp_path):
    path = _churn(tmp_path / "elsewhere", "telco", file="any-name.yaml")
    env = {"MLOPS_CONFIG": str(path)}
    [entry] = catalog.scan(environ=env)
    assert entry.config is not None and entry.name == "telco" and entry.path == path
    assert catalog.dataset_config("telco", environ=env).dataset.name == "telco"
    assert catalog.deployment_config(environ=env).dataset.name == "telco"
    assert load_config(environ=env).dataset.name == "telco"


def test_mlops_config_names_the_folder(tmp_path):
    _churn(tmp_path, "churn")
    _churn(tmp_path, "telco")
    env = {"MLOPS_CONFIG": str(tmp_path)}
    assert [c.dataset.name for c in catalog.configs(environ=env)] == ["churn", "telco"]
    assert catalog.dataset_config("telco", environ=env).dataset.name == "telco"
    assert catalog.deployment_config(environ=env).dataset.name == "churn"
    with pytest.raises(ConfigError, match="does not exist"):
        catalog.scan(environ={"MLOPS_CONFIG": str(tmp_path / "missing")})


def test_env_overrides_apply_to_every_data_set(tmp_path):
    _churn(tmp_path, "churn")
    sk_data_path = sk_data.write_config(tmp_path, "diabetes", [{"name": "ridge", "family": "ridge"}])
    _same_audit(sk_data_path, tmp_path / "churn.yaml")
    env = {"MLOPS_STORAGE__ROOT_URI": "s3://bucket/lake", "MLOPS_TRAINING__MIN_ROWS": "77"}
    cfgs = catalog.configs(tmp_path, env)
    assert [c.dataset.name for c in cfgs] == ["churn", "diabetes"]
    assert [c.root_uri for c in cfgs] == ["s3://bucket/lake", "s3://bucket/lake"]
    assert [c.training.min_rows for c in cfgs] == [77, 77]
    assert catalog.dataset_config("diabetes", tmp_path, env).root_uri == "s3://bucket/lake"
    # without them each keeps its own
    assert [c.training.min_rows for c in catalog.configs(tmp_path, ENV)] != [77, 77]
    # an override that breaks a field breaks it for every data set, each naming its own file
    entries = catalog.scan(tmp_path, {"MLOPS_TRAINING__MIN_ROWS": "-1"})
    assert all(e.config is None and str(e.path) in e.error and "min_rows" in e.error for e in entries)


def test_load_config_without_a_path_needs_the_data_set_named_in_a_folder_of_two(tmp_path):
    _churn(tmp_path, "churn")
    _churn(tmp_path, "telco")
    with pytest.raises(ConfigError, match="name the data set") as info:
        load_config(environ={"MLOPS_CONFIG": str(tmp_path)})
    assert "churn" in str(info.value) and "telco" in str(info.value)
    # a folder of one is that data set
    (tmp_path / "telco.yaml").unlink()
    assert load_config(environ={"MLOPS_CONFIG": str(tmp_path)}).dataset.name == "churn"


@pytest.mark.parametrize(
    "bad",
    ["0 25 * * *", "daily", "* * * * * *", "", "R R * * *", "0 0 L * *"],
    ids=["hour-25", "a-word", "six-fields", "empty", "random", "last-day"],
)
def test_a_bad_schedule_is_its_files_error_naming_the_field_and_the_valid_forms(tmp_path, bad):
    _churn(tmp_path, "churn")
    _churn(tmp_path, "telco", edit=lambda d: d["ingest"].update(schedule=bad))
    entries = {e.name: e for e in catalog.scan(tmp_path, ENV)}
    assert entries["churn"].config is not None, "the other data set keeps its DAGs"
    error = entries["telco"].error
    assert "ingest.schedule" in error and "cron" in error and "null" in error, error


def test_schedules_are_per_data_set_and_null_means_triggered_only(tmp_path):
    _churn(tmp_path, "churn")
    _churn(
        tmp_path,
        "telco",
        edit=lambda d: (d["ingest"].update(schedule=None), d["monitoring"].update(schedule="@hourly")),
    )
    by_name = {c.dataset.name: c for c in catalog.configs(tmp_path, ENV)}
    assert (by_name["churn"].ingest.schedule, by_name["churn"].monitoring.schedule) == (
        "30 0 * * *",
        "0 6 * * *",
    )
    assert (by_name["telco"].ingest.schedule, by_name["telco"].monitoring.schedule) == (None, "@hourly")
    # the demo's switch: a YAML null through the environment turns every data set's schedule off
    off = catalog.configs(tmp_path, {**ENV, "MLOPS_INGEST__SCHEDULE": "null"})
    assert [c.ingest.schedule for c in off] == [None, None]
