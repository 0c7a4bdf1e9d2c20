"""Loading a registered model safely: provenance first, then skops with a trust list the bundle owns.

Every load of a model (scoring, the gate, rollback's records, the console) goes through
:func:`load_model`:

1. only registered versions load (``models:/<name>/<version>`` or ``models:/<name>@<alias>``);
2. the version's files are downloaded and its skops file's digest and signature are checked
   (:mod:`mlops_bundle.provenance`) before anything is deserialized;
3. the file is loaded with ``skops.io.load`` and the trust list of :func:`trusted_types`: a base list in
   code plus the fitted types of the model families the config names (and, for estimator candidates, the
   types their config entry lists), never the types the stored model asks for. Never MLflow's loader (it takes
   the serialization format, and skops' trust list, from the MLmodel file being loaded, so a planted
   version chooses pickle or trusts anything) and never a pickle.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

from mlops_bundle import provenance, tracking
from mlops_bundle.config import BundleConfig, CandidateSpec
from mlops_bundle.provenance import ProvenanceError
from mlops_bundle.training.models import FAMILIES, check_trusted_types

# skops trusts scikit-learn's estimators and numpy arrays by default; a fitted pipeline also holds dtypes
BASE_TRUSTED_TYPES = ("numpy.dtype",)
_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[A-Za-z0-9_-]+))/?")


def candidate_trusted_types(spec: CandidateSpec) -> list[str]:
    """What skops may instantiate for one candidate's model beyond its defaults.

    A family candidate: the base list + its family's fitted types. An estimator candidate (import path):
    the base list + the built-in families' fitted types (scikit-learn's own tree internals) + the types
    its config entry lists in ``trusted_types`` (each a class defined under ``training.estimator_modules``
    at that very path: :func:`~mlops_bundle.training.models.check_trusted_types`, run when training builds
    the candidate and by :func:`trusted_types` before every load). Never what the fitted model itself asks
    for: training refuses a model that needs more (:func:`~mlops_bundle.training.runs.check_saveable`), so
    everything registered loads with this list.
    """
    types = set(BASE_TRUSTED_TYPES)
    if spec.family:
        family = FAMILIES.get(spec.family)
        if family is not None:
            types.update(family.fitted_types)
    else:
        for family in FAMILIES.values():
            types.update(family.fitted_types)
        types.update(spec.trusted_types)
    return sorted(types)


def trusted_types(cfg: BundleConfig) -> list[str]:
    """What skops may instantiate beyond its defaults: the union of the configured candidates' lists.

    Each estimator candidate's ``trusted_types`` entry is imported and checked to be a class defined at
    that path first (:func:`~mlops_bundle.training.models.check_trusted_types`, TrainingError naming the
    entry): a function such as ``sklearn.utils._testing.check_output`` (``subprocess.check_output``) passes
    the config's prefix check but must never be trusted. Not at config parse time: parsing stays import-free.
    """
    types = set(BASE_TRUSTED_TYPES)
    for spec in cfg.training.candidates:
        if spec.trusted_types:
            check_trusted_types(spec, cfg)
        types.update(candidate_trusted_types(spec))
    return sorted(types)


def resolve_version(cfg: BundleConfig, model_uri: str, client: Any = None) -> tuple[str, Any]:
    """(registered model name, ModelVersion) of a ``models:/`` URI; refuses any other kind of URI."""
    m = _URI.fullmatch(model_uri or "")
    if not m:
        raise ProvenanceError(
            f"{model_uri!r}: the bundle loads registered versions only (models:/<name>/<version> or "
            "models:/<name>@<alias>), never runs:/ or file paths, whose provenance it cannot check"
        )
    client = client or tracking.client(cfg)
    name = m["name"]
    if m["version"]:
        return name, client.get_model_version(name, m["version"])
    return name, client.get_model_version_by_alias(name, m["alias"])


@contextlib.contextmanager
def checked_version(cfg: BundleConfig, model_uri: str, client: Any = None) -> Iterator[tuple[str, Any, str]]:
    """Download a version and check its provenance without loading it; yields (name, version, skops file).

    The download is removed when the ``with`` block ends.
    """
    tracking.use(cfg)
    import mlflow.artifacts

    name, mv = resolve_version(cfg, model_uri, client)
    folder = tempfile.mkdtemp(prefix="mlops-model-")
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=folder)
        yield name, mv, str(provenance.verify(name, mv, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def load_model(cfg: BundleConfig, model_uri: str, client: Any = None):
    """The scikit-learn pipeline of a registered version, after its provenance check (see module doc)."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    trusted = trusted_types(cfg)  # checks the configured trusted_types before anything is downloaded
    with checked_version(cfg, model_uri, client) as (name, mv, path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # skops' notes about modules Airflow answers getattr() for
                return skops.io.load(path, trusted=trusted)
        except UntrustedTypesFoundException as exc:
            raise ProvenanceError(
                f"{name} version {mv.version} holds types the bundle does not trust ({exc}); trusted: "
                f"{trusted} (the families/estimators of training.candidates). Not loaded: if it is an "
                "older model of a family or estimator removed from the config, add that candidate back"
            ) from None
