"""
### Train: validated data -> candidate models -> gate vs champion -> promotion

One per data set (`<dataset>__train`). Runs whenever the data set's ingest publishes
**`mlops.<dataset>.validated_data`** or its monitor publishes **`mlops.<dataset>.drift_detected`** (drift
that passed the guard rails), and on demand from the UI or the REST API.

1. **prepare_window** assembles the training window from validated staging partitions (`window_days`
   days ending at `end_date`; triggering batches it does not hold are audited as `train.batch_not_trained`
   with the reason, and the drift triggers it consumed are marked started), splits it by time (the most
   recent slice is the holdout, never trained on) and checks that MLflow is reachable;
2. **train_candidate** trains every configured candidate (`training.candidates` in the config) as a
   dynamically mapped task in the data set's pool `<dataset>__training`, logging params, metrics, the model (signature,
   input example), the datasets and lineage tags to MLflow;
3. **register_best** registers the best candidate by `training.metric` as a model version (a rerun with
   the same data and params reuses the version instead of registering a duplicate);
4. **evaluate_gate** / **approve** pause for a human approval when `promotion.require_approval` is set,
   for every forced promotion, and with `promotion.four_eyes` (approve in *Required Actions* or through
   the REST API); the evaluation is recorded as an evaluation, not a decision. Four eyes (forced, or
   `promotion.four_eyes`): the user who triggered the run cannot approve it;
5. **promote** compares challenger and champion on the same holdout under a lock, with the configured
   floor, minimum improvement and guard metrics, then moves the `champion` alias (old one kept as
   `previous`) or rejects; the decision is written to the decision ledger before any alias moves, so a
   retry completes that decision instead of deciding again; the decision record is an MLflow artifact
   plus version tags, naming who triggered and who approved;
6. **publish_champion** emits **`mlops.<dataset>.champion_model`** only when the champion changed.

Load the champion with `mlops_bundle.training.load_model(cfg, "models:/<registered model>@champion")`
(it checks the version's provenance signature first and loads skops only).

**Params**: `end_date` (YYYY-MM-DD; default: the newest validated partition when the run starts, so a
batch validated while this run waited in the queue is in its window; else yesterday), `window_days`, `candidates` (names from the config; default all), `force` + `justification`
(promote even if the gate says no; the justification is required and recorded, and a second person must
approve).
"""

from __future__ import annotations

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import Param, dag, task

from mlops_airflow import assets, names
from mlops_airflow.approval import PromotionApprovalOperator
from mlops_airflow.dag_defaults import dag_args, date_param
from mlops_airflow.factory import DatasetDags, datasets


def build(ds: DatasetDags) -> None:
    validated_data = assets.validated_data(ds.name)
    drift_detected = assets.drift_detected(ds.name)
    champion_model = assets.champion_model(ds.name)

    @dag(
        dag_id=ds.dag_id(names.TRAIN),
        schedule=validated_data | drift_detected,
        max_active_runs=2,
        params={
            "end_date": date_param("Last day of the window"),
            "window_days": Param(
                None, type=["null", "integer"], minimum=1, maximum=3660, description="Default: from config"
            ),
            "candidates": Param(
                None,
                type=["null", "array"],
                items={"type": "string"},
                description="Subset of configured names",
            ),
            "force": Param(False, type="boolean", description="Promote even if the gate rejects"),
            "justification": Param(None, type=["null", "string"], description="Required with force"),
        },
        doc_md=ds.doc(__doc__),
        **dag_args("train", "mlflow", dataset=ds.name, retry_delay_s=15),
    )
    def train():
        @task
        def prepare_window(params=None, dag_run=None) -> list[dict]:
            from mlops_airflow.train_tasks import prepare

            return prepare(params, dag_run)

        @task(
            pool=names.training_pool(ds.name), queue="training"
        )  # heavy: Celery workers serving the training queue
        def train_candidate(job: dict, dag_run=None) -> dict:
            from mlops_airflow.train_tasks import train_one

            return train_one(job, dag_run)

        @task
        def register_best(results: list, dag_run=None, ti=None) -> dict:
            from mlops_airflow.train_tasks import register

            return register(results, dag_run, ti)

        @task.branch
        def evaluate_gate(registered: dict, params=None, dag_run=None):
            from mlops_airflow.train_tasks import ASK_APPROVAL, pre_approval

            route = pre_approval(registered, params, dag_run, "evaluate_gate")
            # no approval needed, or the gate would reject: promote records the decision without asking
            return ["approve"] if route == ASK_APPROVAL else ["no_approval_needed"]

        approve = PromotionApprovalOperator(
            task_id="approve",
            subject="Promote the new model version to champion?",
            body="The gate passed; see the evaluate_gate log and the MLflow version for the metrics.",
        )
        no_approval_needed = EmptyOperator(task_id="no_approval_needed")

        @task.branch(trigger_rule="none_failed_min_one_success")
        def promote(registered: dict, params=None, dag_run=None, ti=None):
            from mlops_airflow.approval import responder_name
            from mlops_airflow.train_tasks import gate

            answer = ti.xcom_pull(task_ids="approve")  # None when nobody was asked
            approver = responder_name(answer)
            decision = gate(registered, params, dag_run, apply=True, task_id="promote", approved_by=approver)
            ti.xcom_push(key="decision", value=decision)
            return ["publish_champion"] if decision["applied"] else []

        @task(outlets=[champion_model])
        def publish_champion(outlet_events=None, ti=None) -> dict:
            from mlops_airflow.train_tasks import champion_event

            extra = champion_event(ti.xcom_pull(task_ids="promote", key="decision"))
            outlet_events[champion_model].extra = extra
            return extra

        registered = register_best(train_candidate.expand(job=prepare_window()))
        branch = evaluate_gate(registered)
        promoted = promote(registered)
        branch >> [approve, no_approval_needed] >> promoted
        promoted >> publish_champion()

    train()


for _ds in datasets():
    build(_ds)
