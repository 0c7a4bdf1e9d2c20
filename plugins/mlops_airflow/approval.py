"""The train DAG's approval step: Airflow's ApprovalOperator with four eyes.

Four eyes apply to a forced promotion always and to every promotion with ``promotion.four_eyes``
(``mlops_bundle.promotion.approval_rules``). Where they apply, the user who triggered the run cannot
approve it, on two levels:

* the request's assigned users are ``promotion.approvers`` (or, where four eyes apply and none are
  configured, every non-viewer user of Airflow's SimpleAuthManager) minus the triggering user, so
  Airflow's REST API (and the UI's Required Actions) refuse the triggering user with 403;
* whatever the auth manager lets through (no approvers configured, SimpleAuthManager's all-admins mode),
  an "Approve" by the triggering user is refused here: logged, audited (``approval.refused``) and the
  question is asked again, so the run keeps waiting for a second person. A "Reject" from anyone stands.

The promote task checks the same rule once more in the library (``approval_verdict``) and records both
users in the decision.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk.exceptions import AirflowFailException


def _rules(context: Any) -> tuple[Any, bool, str | None]:
    """(config, four eyes apply, triggering user name) for this run."""
    from mlops_airflow import runtime
    from mlops_bundle.promotion import approval_rules

    cfg = runtime.bundle_config()
    _, second_person = approval_rules(cfg, bool((context.get("params") or {}).get("force")))
    return cfg, second_person, context["dag_run"].triggering_user_name


def auth_manager_respondents() -> list[str]:
    """The users of Airflow's SimpleAuthManager who may answer Required Actions (every role but VIEWER),
    from ``[core] simple_auth_manager_users``; [] with another auth manager (its users are not listed in
    the config) or in all-admins mode (everyone may answer anyway)."""
    from airflow.configuration import conf

    manager = conf.get("core", "auth_manager", fallback="") or ""
    if not manager.endswith("SimpleAuthManager"):
        return []
    if conf.getboolean("core", "simple_auth_manager_all_admins", fallback=False):
        return []
    users = []
    for item in (conf.get("core", "simple_auth_manager_users", fallback="") or "").split(","):
        name, _, role = item.strip().partition(":")
        if name.strip() and role.strip().upper() != "VIEWER":
            users.append(name.strip())
    return users


def responder_name(answer: dict[str, Any] | None) -> str | None:
    """Who answered an approval request (the HITL output's ``responded_by_user``), by name, else id."""
    who = (answer or {}).get("responded_by_user") or {}
    return who.get("name") or who.get("id") or None


class PromotionApprovalOperator(ApprovalOperator):
    """Approve or reject the promotion; the triggering user may not approve where four eyes apply."""

    def execute(self, context: Any) -> Any:
        from mlops_bundle.promotion import same_person

        cfg, second_person, trigger = _rules(context)
        pool = list(cfg.promotion.approvers) or (auth_manager_respondents() if second_person else [])
        allowed = [u for u in pool if not (second_person and same_person(u, trigger))]
        if pool and not allowed:
            raise AirflowFailException(
                f"nobody may approve this promotion: the possible approvers are only {pool}, and {trigger!r} "
                "triggered the run (four eyes); add a second person to promotion.approvers (or as an "
                "Airflow user)"
            )
        if allowed:
            self.assigned_users = [{"id": u, "name": u} for u in allowed]
        if second_person and trigger:
            self.body = (
                f"{self.body or ''}\n\n**Four eyes:** {trigger} triggered this run and cannot approve it; "
                "a second person must."
            ).strip()
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from mlops_bundle.promotion import same_person

        if "error" not in event and self.APPROVE in (event.get("chosen_options") or []):
            cfg, second_person, trigger = _rules(context)
            who = event.get("responded_by_user") or {}
            if second_person and (
                same_person(who.get("id"), trigger) or same_person(who.get("name"), trigger)
            ):
                self._refuse(cfg, context, trigger)
                return self.execute(context)  # resets the answer and waits for another one
        return super().execute_complete(context=context, event=event)

    def _refuse(self, cfg: Any, context: Any, trigger: str) -> None:
        from mlops_bundle.audit import record_event

        dag_run = context["dag_run"]
        message = (
            f"approval by {trigger!r} refused: they triggered run {dag_run.run_id} and four eyes apply "
            "(a forced promotion, or promotion.four_eyes); asking again, a second person must approve"
        )
        self.log.error("%s", message)
        record_event(
            cfg,
            "approval.refused",
            actor=f"user:{trigger}",
            subject=f"{dag_run.dag_id}/{dag_run.run_id}/{self.task_id}",
            payload={"reason": message, "model": cfg.model_name},
            source="operator",
            required=False,
        )
