"""MLflow plumbing shared by training, promotion and scoring: one place that knows the tracking URI.

Nothing happens at import time: MLflow is imported inside the functions (its import is one of the costly
ones, see benchmarks/README.md, and without ``MLFLOW_DISABLE_TELEMETRY`` it reaches out to the network),
and the tracking URI is set only when a caller asks for it with :func:`use`. The registry URI is always
the tracking URI: one store holds runs, logged models and registered versions, so a version's
``runs:/``/``models:/`` source always resolves.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from mlops_bundle.config import BundleConfig

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server cannot be reached; the message names the URI and what to do."""


class TrackingError(RuntimeError):
    """The tracking store is reachable but in a state the bundle cannot use (e.g. a deleted experiment)."""


def _quiet_telemetry() -> None:
    """MLflow 3 sends usage telemetry unless told not to; a pipeline must not phone home."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def use(cfg: BundleConfig) -> str:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``, ``load_model``) at the config's store.

    Called at the start of every task that logs or loads, never at import: the DAG processor imports the
    library and must not touch MLflow. Returns the tracking URI.
    """
    _quiet_telemetry()
    import mlflow

    uri = cfg.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(cfg: BundleConfig) -> MlflowClient:
    """An MlflowClient bound to the config's tracking URI (registry on the same store)."""
    _quiet_telemetry()
    from mlflow import MlflowClient

    uri = cfg.tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def error_code(exc: BaseException) -> str | None:
    """The MLflow error code of an exception ('RESOURCE_ALREADY_EXISTS', ...) or None.

    The local SQL store and the REST client raise MlflowException/RestException with the same codes, so
    callers branch on the code rather than on the exception class or message.
    """
    return getattr(exc, "error_code", None)


def check_reachable(cfg: BundleConfig, timeout: float = 5) -> str:
    """Fail fast with a clear message instead of MLflow's minutes of retries against a dead server.

    http(s): GET <uri>/health must answer 200. sqlite: the folder of the database file is created (the
    SQL store creates the file, not its folder). Other schemes (postgresql://, ...) are left to MLflow.
    Returns the tracking URI.
    """
    uri = cfg.tracking_uri
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - configured URI
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} is not reachable ({reason}): start it (e.g. `mlflow server "
                f"--host ... --port ...`) or fix mlflow.tracking_uri / MLOPS_MLFLOW__TRACKING_URI"
            ) from exc
        if status != 200:
            raise TrackingUnavailable(
                f"MLflow tracking server {uri} answered HTTP {status} on /health: check the server's logs "
                "(and --allowed-hosts if it rejects this host) before retrying"
            )
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
    return uri


def ensure_experiment(cfg: BundleConfig, name: str | None = None) -> str:
    """The id of the config's experiment (or of ``name``, e.g. the monitoring one), creating it on first use.

    With a local store (``cfg.artifact_root`` set) artifacts go to ``<artifact_root>/<experiment name>``
    so the database and artifacts live side by side in one folder; a server decides for itself. Two
    workers creating it at the same moment is expected (parallel candidate tasks): the loser gets
    RESOURCE_ALREADY_EXISTS and re-reads the winner's experiment.
    """
    check_reachable(cfg)
    c = client(cfg)
    name = name or cfg.experiment_name
    exp = c.get_experiment_by_name(name)
    if exp is None:
        location = f"{cfg.artifact_root}/{name}" if cfg.artifact_root else None
        try:
            exp_id = c.create_experiment(name, artifact_location=location)
            log.info("created MLflow experiment %r (id %s) at %s", name, exp_id, location or "server default")
            return exp_id
        except Exception as exc:
            if error_code(exc) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
            exp = c.get_experiment_by_name(name)
            if exp is None:  # pragma: no cover - created and deleted in between
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) at {cfg.tracking_uri} is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or set mlflow.experiment "
            "to a new name"
        )
    return exp.experiment_id


def alias_version(c: MlflowClient, model: str, alias: str) -> str | None:
    """The version (as str) an alias of a registered model points to, or None if the alias/model is absent.

    The one home of this lookup (promotion, scoring and the tests use it). Why: the SQL store returns
    versions as int and the REST server as str; comparing "3" with 3 silently fails, so every caller goes
    through this normalisation.
    """
    try:
        mv = c.get_model_version_by_alias(model, alias)
    except Exception as exc:
        code = error_code(exc)
        # a missing model is RESOURCE_DOES_NOT_EXIST; a missing alias is INVALID_PARAMETER_VALUE "... not
        # found" (an invalid alias *name* is also INVALID_PARAMETER_VALUE, and must still raise)
        if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or (
            code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
        ):
            return None
        raise
    return None if mv is None or mv.version is None else str(mv.version)
