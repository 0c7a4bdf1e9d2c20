"""The DAG factory: every data set of the catalog gets its own DAGs from the same DAG files.

Two data sets in one DagBag (churn and scikit-learn's diabetes, tests/sk_data.py) each have their DAGs,
Assets and pool; an ingest of one emits only its own `validated_data` event, which queues only its own
train DAG (really run: dag.test on a landed batch, then Airflow's asset-event rows and AssetDagRunQueue in
the metadata DB). A broken config file gets a placeholder DAG `<name>__config_error` that names the file
and field and fails when triggered, while the valid data set's DAGs stay.
"""

from __future__ import annotations

import shutil

import airflow  # noqa: F401  (importing Airflow puts plugins/ on sys.path, as in a worker)
import pytest
import yaml

from mlops_airflow import names
from mlops_bundle.config import DEFAULT_CONFIG_PATH
from mlops_bundle.sample import generate_batch, write_landing
from tests import sk_data
from tests.asset_events import asset_event_extras
from tests.conftest import LAKE, REPO

pytestmark = pytest.mark.usefixtures("airflow_db")

A, B = "churn", "diabetes"
DATE = "2026-11-03"  # a day no other DAG test lands


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag


def _asset_names(condition) -> set[str]:
    """The names of the Assets a schedule condition (Asset, `a | b`, `a & b`) is made of."""
    from airflow.sdk import Asset

    if condition is None:  # a time-based schedule
        return set()
    if isinstance(condition, Asset):
        return {condition.name}
    objects = getattr(condition, "objects", None)
    assert objects is not None, f"unexpected schedule element {condition!r} (an alias or a reference?)"
    return set().union(*(_asset_names(o) for o in objects))


def _all_ids(*datasets: str) -> set[str]:
    return {names.AUDIT_VERIFY_DAG, *(names.dag_id(d, k) for d in datasets for k in names.DAG_KINDS)}


@pytest.fixture
def two_datasets(tmp_path, monkeypatch):
    """A catalog folder with churn and diabetes, named by MLOPS_CONFIG (before any DagBag is built)."""
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIG_PATH, folder / f"{A}.yaml")  # its paths: the session's MLOPS_* overrides
    sk_data.write_config(folder, B, [{"name": "ridge", "family": "ridge"}], audit={})
    monkeypatch.setenv("MLOPS_CONFIG", str(folder))
    return folder


def _sync_to_db() -> None:
    """What dag.test() does before a run: parse the configured bundle (the repo's dags/, with the current
    MLOPS_CONFIG) and write its DAGs to the metadata DB, so they can be unpaused before the run."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    manager = DagBundlesManager()
    manager.sync_bundles_to_db()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)


def _set_paused(dag_ids: list[str], paused: bool) -> dict[str, bool]:
    """Pause/unpause; the previous states."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(DagModel).filter(DagModel.dag_id.in_(dag_ids)).all()
        before = {r.dag_id: r.is_paused for r in rows}
        assert sorted(before) == sorted(dag_ids), f"not in the metadata DB: {set(dag_ids) - set(before)}"
        for r in rows:
            r.is_paused = paused
    return before


def _queue(dag_ids: list[str], delete: bool = False) -> set[tuple[str, str]]:
    """(asset name, target DAG) of Airflow's AssetDagRunQueue rows for these DAGs (the asset-triggered
    runs the scheduler will create); optionally deleting them."""
    from airflow.models.asset import AssetDagRunQueue, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        query = session.query(AssetDagRunQueue).filter(AssetDagRunQueue.target_dag_id.in_(dag_ids))
        rows = {(session.get(AssetModel, r.asset_id).name, r.target_dag_id) for r in query.all()}
        if delete:
            query.delete(synchronize_session=False)
        return rows


def _schedule_refs(dag_id: str) -> set[str]:
    """The Asset names the metadata DB records as scheduling ``dag_id`` (from its serialized DAG)."""
    from airflow.models.asset import AssetModel, DagScheduleAssetReference
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.name)
            .join(DagScheduleAssetReference, DagScheduleAssetReference.asset_id == AssetModel.id)
            .filter(DagScheduleAssetReference.dag_id == dag_id)
            .all()
        )
        return {r[0] for r in rows}


def test_each_data_set_gets_its_own_dags_assets_and_pool(two_datasets):
    bag = _dagbag()
    assert set(bag.dag_ids) == _all_ids(A, B)
    for ds in (A, B):
        train = bag.get_dag(names.dag_id(ds, names.TRAIN))
        assert _asset_names(train.timetable.asset_condition) == {
            names.asset_name(ds, names.VALIDATED_DATA),
            names.asset_name(ds, names.DRIFT_DETECTED),
        }
        assert train.get_task("train_candidate").pool == names.training_pool(ds) == f"{ds}__training"
        ingest = bag.get_dag(names.dag_id(ds, names.INGEST))
        assert [o.name for o in ingest.get_task("validate_and_stage").outlets] == [
            names.asset_name(ds, names.VALIDATED_DATA)
        ]
        for kind in names.DAG_KINDS:
            dag = bag.get_dag(names.dag_id(ds, kind))
            assert f"dataset:{ds}" in dag.tags and f"**Data set `{ds}`**" in dag.doc_md, dag.dag_id
            # every Asset a DAG of this data set reads or writes is this data set's
            used = {o.name for t in dag.tasks for o in t.outlets if hasattr(o, "name")}
            used |= _asset_names(getattr(dag.timetable, "asset_condition", None))
            assert all(n.startswith(f"mlops.{ds}.") for n in used), (dag.dag_id, used)


def test_each_data_sets_schedules_come_from_its_config(two_datasets):
    path = two_datasets / f"{B}.yaml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["ingest"] = {"schedule": None}
    doc["monitoring"] = {"schedule": "15 */4 * * *"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    bag = _dagbag()

    def summary(ds: str, kind: str) -> str | None:
        return bag.get_dag(names.dag_id(ds, kind)).schedule

    assert (summary(A, names.INGEST), summary(A, names.MONITOR)) == ("30 0 * * *", "0 6 * * *")
    assert summary(B, names.INGEST) is None, "null: triggered only (UI, REST API)"
    assert summary(B, names.MONITOR) == "15 */4 * * *"


def test_an_ingest_queues_only_its_own_data_sets_train_dag(two_datasets):
    bag = _dagbag()
    trains = [names.dag_id(A, names.TRAIN), names.dag_id(B, names.TRAIN)]
    _sync_to_db()
    # the serialized schedules in the metadata DB: each train DAG is scheduled by its own Assets only
    for ds, train in zip((A, B), trains, strict=True):
        assert _schedule_refs(train) == {
            names.asset_name(ds, names.VALIDATED_DATA),
            names.asset_name(ds, names.DRIFT_DETECTED),
        }
    paused = _set_paused(trains, False)  # Airflow queues asset-triggered runs only for unpaused DAGs
    _queue(trains, delete=True)  # a clean queue: what an earlier test's event left there is not this run's
    try:
        write_landing(generate_batch(DATE, rows=600), LAKE / "landing" / A / DATE)
        dr = bag.get_dag(names.dag_id(A, names.INGEST)).test(run_conf={"date": DATE, "source": None})
        states = {ti.task_id: ti.state for ti in dr.get_task_instances()}
        assert dr.state == "success", states

        [event] = [
            e for e in asset_event_extras(names.asset_name(A, names.VALIDATED_DATA)) if e["date"] == DATE
        ]
        assert event["dataset"] == A and event["rows"] == 600
        assert [
            e for e in asset_event_extras(names.asset_name(B, names.VALIDATED_DATA)) if e.get("date") == DATE
        ] == []
        assert _source_dags(names.asset_name(A, names.VALIDATED_DATA), DATE) == [
            names.dag_id(A, names.INGEST)
        ]

        assert _queue(trains) == {(names.asset_name(A, names.VALIDATED_DATA), names.dag_id(A, names.TRAIN))}
    finally:
        _queue(trains, delete=True)
        for dag_id, was in paused.items():
            _set_paused([dag_id], was)


def _source_dags(asset: str, date: str) -> list[str]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == asset)
            .all()
        )
        return [e.source_dag_id for e in rows if (e.extra or {}).get("date") == date]


def test_a_broken_config_gets_a_placeholder_dag_that_fails_naming_file_and_field(
    tmp_path, monkeypatch, task_errors
):
    folder = tmp_path / "datasets"
    folder.mkdir()
    shutil.copy(DEFAULT_CONFIG_PATH, folder / f"{A}.yaml")
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    data["dataset"]["name"] = "wine"
    for field in ("suite_name", "validation_definition", "checkpoint_name"):  # GX names are per data set
        data["validation"][field] = data["validation"][field].replace("churn", "wine")
    data["training"]["min_rows"] = -5
    broken = folder / "wine.yaml"
    broken.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("MLOPS_CONFIG", str(folder))

    bag = _dagbag()
    placeholder = names.dag_id("wine", names.CONFIG_ERROR)
    assert set(bag.dag_ids) == _all_ids(A) | {placeholder}, "the valid data set keeps all its DAGs"
    dag = bag.get_dag(placeholder)
    assert str(broken) in dag.doc_md and "training.min_rows" in dag.doc_md
    assert [t.task_id for t in dag.tasks] == ["config_error"] and dag.schedule is None
    assert dag.fileloc == str(REPO / "dags" / "config_errors.py") and "dataset:wine" in dag.tags

    dr = dag.test()
    assert dr.state == "failed"
    assert {ti.task_id: ti.state for ti in dr.get_task_instances()} == {"config_error": "failed"}
    error = task_errors["config_error"]
    assert error.startswith("AirflowFailException") and str(broken) in error and "training.min_rows" in error

    # fixed: the next parse has the data set's DAGs instead of the placeholder
    data["training"]["min_rows"] = 50
    broken.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    assert set(_dagbag().dag_ids) == _all_ids(A, "wine")
