"""The data set catalog: every config file in one folder is one data set of this deployment.

``$MLOPS_CONFIG`` names the folder (default ``config/datasets/``) or a single config file. In a folder the
file name is the data set's name (``churn.yaml`` declares ``dataset.name: churn``), so a data set's config
is found by name without reading the others, and two files can never claim one name. Every data set gets
its own DAGs, Assets, pool, registered model, GX files, reports, promotion lock and audit entries (the
Airflow side is ``plugins/mlops_airflow/factory.py``); the audit chain is one per deployment, so every data
set must name the same audit store (the env overrides ``MLOPS_AUDIT__*`` set it for all of them).

A broken file does not stop the others: ``scan`` returns it as an entry with the error, which names the
file and the field (the DAG factory turns it into a placeholder DAG that says so).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mlops_bundle.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    BundleConfig,
    ConfigError,
    config_files,
    config_location,
    load_config,
)
from mlops_bundle.names import DATASET_NAME_RE, valid_dataset_name


@dataclass(frozen=True)
class Entry:
    """One config file of the catalog: its data set's config, or why it has none."""

    name: str  # the data set's name (in a folder: the file's stem, made a valid name if it is not one)
    path: Path
    config: BundleConfig | None = None
    error: str | None = None


def _load(path: Path, environ: dict[str, str]) -> BundleConfig:
    """load_config, cached on the file's bytes and the MLOPS_<SECTION>__<FIELD> overrides: the audit
    listener asks for the deployment's config on every event, and a config is frozen (safe to share)."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return load_config(path, environ)  # raises the ConfigError naming the file
    overrides = tuple(sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIX) and "__" in k))
    return _load_cached(str(path), digest, overrides)


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, digest: str, overrides: tuple) -> BundleConfig:
    return load_config(path, dict(overrides))


def _audit_key(cfg: BundleConfig) -> tuple:
    a = cfg.audit
    return (a.enabled, cfg.audit_uri, a.hmac_conn_id, a.anchor_uri, a.gap_dir)


def placeholder_name(stem: str) -> str:
    """A valid data-set name for a file whose stem is not one (the placeholder DAG's id needs one)."""
    text = "".join(ch if ch.isascii() and (ch.isalnum() or ch == "_") else "_" for ch in stem.lower())
    if not text or not text[0].isalpha():
        text = "x_" + text
    return text[:63]


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name`` cut to fit plus ``_2``, ``_3``... so that it is not in ``taken``."""
    n = 1
    candidate = name
    while candidate in taken:
        n += 1
        suffix = f"_{n}"
        candidate = name[: 63 - len(suffix)] + suffix
    return candidate


# names that must differ between data sets (they key MLflow objects, the promotion lock, the decision
# ledger and the GX files), with the field that sets each; an MLOPS_* override applies to every data set
_UNIQUE_FIELDS = {
    "mlflow.registered_model": lambda c: c.model_name,
    "mlflow.experiment": lambda c: c.experiment_name,
    "mlflow.monitoring_experiment": lambda c: c.monitoring_experiment_name,
    "validation.suite_name": lambda c: (str(c.gx_root), "suite", c.validation.suite_name),
    "validation.validation_definition": lambda c: (str(c.gx_root), "vd", c.validation.validation_definition),
    "validation.checkpoint_name": lambda c: (str(c.gx_root), "cp", c.validation.checkpoint_name),
}


def _owns_names(cfg: BundleConfig | None) -> bool:
    if cfg is None:
        return True
    values = [get(cfg) for get in _UNIQUE_FIELDS.values()]
    return all(str(v[-1] if isinstance(v, tuple) else v).startswith(cfg.dataset.name) for v in values)


def _read(path: Path, environ: dict[str, str], folder: bool) -> tuple[BundleConfig | None, str | None]:
    """One file's config, or the error that names the file and the field (never raises: one broken file
    must not take the other data sets' DAGs down)."""
    try:
        cfg = _load(path, environ)
    except ConfigError as exc:
        return None, str(exc)
    except Exception as exc:  # anything else a file can provoke is that file's error too
        return None, f"config file {path} cannot be loaded: {type(exc).__name__}: {exc}"
    if folder and cfg.dataset.name != path.stem:
        return None, (
            f"config file {path} is invalid: dataset.name: {cfg.dataset.name!r} must be the file's name "
            f"{path.stem!r} (rename the file to {cfg.dataset.name}.yaml or change dataset.name)"
        )
    return cfg, None


def scan(location: Path | None = None, environ: dict[str, str] | None = None) -> list[Entry]:
    """Every config file of the catalog, sorted by name, each loaded and validated (env overrides applied).

    Errors are per entry and name the file and the field: a file that does not load, a data set declared
    twice, a name another data set already uses (registered model, experiments, GX suite, validation
    definition, checkpoint: see ``_UNIQUE_FIELDS``), or audit settings that differ from the other data
    sets' (one chain per deployment: the settings most data sets share win, ties to the first name).
    Valid data sets keep their names; a placeholder gets a name no other placeholder has.
    """
    environ = dict(os.environ if environ is None else environ)
    location = Path(location) if location is not None else config_location(environ)
    if not location.exists():
        raise ConfigError(
            f"{CONFIG_ENV}={location} does not exist: point it at the folder of data set configs (or one file)"
        )
    folder = location.is_dir()
    loaded = [(path, *_read(path, environ, folder)) for path in config_files(location)]
    valid: dict[str, Entry] = {}
    errors: list[Entry] = []

    def refuse(path: Path, error: str) -> None:
        stem = path.stem if DATASET_NAME_RE.match(path.stem) else placeholder_name(path.stem)
        errors.append(Entry(stem, path, error=error))

    # audit: the settings most valid files share (ties: the one of the first name)
    votes: dict[tuple, list[str]] = {}
    for _, cfg, _ in loaded:
        if cfg is not None:
            votes.setdefault(_audit_key(cfg), []).append(cfg.dataset.name)
    audit = min(votes, key=lambda k: (-len(votes[k]), min(votes[k])), default=None)
    used: dict[str, dict[object, str]] = {field: {} for field in _UNIQUE_FIELDS}
    # on a clash the data set whose names start with its own name keeps them (a copied file that still
    # names the original's suite or model is the one refused), then the first name
    for path, cfg, error in sorted(loaded, key=lambda item: (not _owns_names(item[1]), item[0].name)):
        if cfg is None:
            refuse(path, error or "unknown error")
            continue
        twin = valid.get(cfg.dataset.name)
        if twin is not None:
            refuse(path, (
                f"config file {path} is invalid: dataset.name: data set {cfg.dataset.name!r} is already "
                f"declared by {twin.path.name}: remove one of the two files"
            ))  # fmt: skip
            continue
        if _audit_key(cfg) != audit:
            refuse(path, (
                f"config file {path} is invalid: audit: the deployment has one audit chain, and this file's "
                f"audit settings (store {cfg.audit_uri}) differ from the other data sets' (store {audit[1]}): "
                "give every data set the same audit section, or set MLOPS_AUDIT__STORE_URI"
            ))  # fmt: skip
            continue
        clash = next(
            ((f, used[f][get(cfg)]) for f, get in _UNIQUE_FIELDS.items() if get(cfg) in used[f]), None
        )
        if clash is not None:
            refuse(path, (
                f"config file {path} is invalid: {clash[0]}: data set {clash[1]!r} already uses this name "
                "(registered models, experiments and GX files are per data set): choose another"
            ))  # fmt: skip
            continue
        for field, get in _UNIQUE_FIELDS.items():
            used[field][get(cfg)] = cfg.dataset.name
        valid[cfg.dataset.name] = Entry(cfg.dataset.name, path, config=cfg)
    # a placeholder's DAG id <name>__config_error must be unique among placeholders (a.yaml + a.yml)
    taken: set[str] = set()
    placeholders = []
    for e in errors:
        name = _unique(e.name, taken)
        taken.add(name)
        placeholders.append(e if name == e.name else Entry(name, e.path, e.config, e.error))
    return sorted([*valid.values(), *placeholders], key=lambda e: (e.name, e.config is None))


def configs(location: Path | None = None, environ: dict[str, str] | None = None) -> list[BundleConfig]:
    """The valid data sets' configs, sorted by name."""
    return [e.config for e in scan(location, environ) if e.config is not None]


def dataset_config(
    name: str, location: Path | None = None, environ: dict[str, str] | None = None
) -> BundleConfig:
    """The config of data set ``name``: ``<folder>/<name>.yaml``, or the single config file if it declares
    ``name``. ConfigError when there is none (the name is checked first: it is never a path)."""
    valid_dataset_name(name)
    environ = dict(os.environ if environ is None else environ)
    location = Path(location) if location is not None else config_location(environ)
    if location.is_dir():
        path = next((p for p in config_files(location) if p.stem == name), None)
        if path is None:
            raise ConfigError(f"no data set {name!r}: {location} has no {name}.yaml")
    else:
        path = location
    cfg = _load(path, environ)
    if cfg.dataset.name != name:
        raise ConfigError(
            f"config file {path} is invalid: dataset.name: {cfg.dataset.name!r} is not the data set {name!r} "
            "this run belongs to"
        )
    return cfg


def deployment_config(location: Path | None = None, environ: dict[str, str] | None = None) -> BundleConfig:
    """The config that speaks for the deployment where no data set is in play (the audit chain, which every
    data set shares): the first valid data set's. ConfigError when no data set is valid."""
    entries = scan(location, environ)
    for e in entries:
        if e.config is not None:
            return e.config
    problems = "; ".join(e.error or "" for e in entries) or "no config files"
    raise ConfigError(f"no valid data set config in {location or config_location(environ)}: {problems}")
