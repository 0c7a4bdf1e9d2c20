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
    """load_config, cached on the file's identity (inode, mtime, size) and the MLOPS_* environment: the
    audit listener asks for the deployment's config on every event, and a config is frozen (safe to
    share). An edited file has a new mtime, so the next call reads it again."""
    try:
        st = path.stat()
        stamp: tuple = (st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        return load_config(path, environ)  # raises the ConfigError naming the file
    env = tuple(sorted((k, v) for k, v in environ.items() if k.startswith(ENV_PREFIX)))
    return _load_cached(str(path), stamp, env)


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, stamp: tuple, env: tuple) -> BundleConfig:
    return load_config(path, dict(env))


def _audit_key(cfg: BundleConfig) -> tuple:
    a = cfg.audit
    return (a.enabled, cfg.audit_uri, a.hmac_conn_id, a.anchor_uri)


def placeholder_name(stem: str) -> str:
    """A valid data-set name for a file whose stem is not one (the placeholder DAG's id needs one)."""
    text = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in stem.lower())
    if not text or not text[0].isalpha() or not text.isascii():
        text = "x_" + text.encode("ascii", "replace").decode().replace("?", "_")
    return text[:63]


def scan(location: Path | None = None, environ: dict[str, str] | None = None) -> list[Entry]:
    """Every config file of the catalog, sorted by name, each loaded and validated (env overrides applied).

    Errors are per entry and name the file and the field; the audit store of every data set must be the
    first valid one's (one chain per deployment).
    """
    environ = dict(os.environ if environ is None else environ)
    location = Path(location) if location is not None else config_location(environ)
    if not location.exists():
        raise ConfigError(
            f"{CONFIG_ENV}={location} does not exist: point it at the folder of data set configs (or one file)"
        )
    folder = location.is_dir()
    entries: list[Entry] = []
    audit: tuple | None = None
    for path in config_files(location):
        stem_name = path.stem if DATASET_NAME_RE.match(path.stem) else placeholder_name(path.stem)
        try:
            cfg = _load(path, environ)
        except ConfigError as exc:
            entries.append(Entry(stem_name if folder else placeholder_name(path.stem), path, error=str(exc)))
            continue
        if folder and cfg.dataset.name != path.stem:
            entries.append(Entry(stem_name, path, error=(
                f"config file {path} is invalid: dataset.name: {cfg.dataset.name!r} must be the file's name "
                f"{path.stem!r} (rename the file to {cfg.dataset.name}.yaml or change dataset.name)"
            )))  # fmt: skip
            continue
        twin = next((e for e in entries if e.name == cfg.dataset.name), None)
        if twin is not None:
            entries.append(Entry(f"{stem_name}_{len(entries) + 1}", path, error=(
                f"config file {path} is invalid: dataset.name: data set {cfg.dataset.name!r} is already "
                f"declared by {twin.path.name}: remove one of the two files"
            )))  # fmt: skip
            continue
        if audit is None:
            audit = _audit_key(cfg)
        elif _audit_key(cfg) != audit:
            entries.append(Entry(cfg.dataset.name, path, error=(
                f"config file {path} is invalid: audit: the deployment has one audit chain, and this file's "
                f"audit settings (store {cfg.audit_uri}) differ from the other data sets' (store "
                f"{audit[1]}): give every data set the same audit section, or set MLOPS_AUDIT__STORE_URI"
            )))  # fmt: skip
            continue
        entries.append(Entry(cfg.dataset.name, path, config=cfg))
    # a placeholder's name must not take another file's (a.yaml and a.yml both broken)
    seen: set[str] = set()
    unique = []
    for e in entries:
        name = e.name
        while name in seen:
            name = f"{name}_2"[:63]
        seen.add(name)
        unique.append(e if name == e.name else Entry(name, e.path, e.config, e.error))
    return sorted(unique, key=lambda e: e.name)


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
