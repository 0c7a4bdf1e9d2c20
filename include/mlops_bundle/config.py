"""The bundle's one validated configuration.

A data set is declared once, in a YAML file (``config/datasets/<name>.yaml``): its columns and dtypes,
its id/timestamp/target columns, where data lives (a storage root URI) and the thresholds every lifecycle
stage reads. Pointing the bundle at a new tabular data set means a new config file plus its GX files
(``python -m mlops_bundle new-dataset`` writes both), never DAG code. Relative paths in a config file are
relative to that file's folder. The folder of config files is the data set catalog
(``mlops_bundle.catalog``): ``$MLOPS_CONFIG`` names that folder or a single config file, default
``config/datasets/`` of this checkout. Any scalar field can be overridden with an environment variable
``MLOPS_<SECTION>__<FIELD>`` (for example ``MLOPS_STORAGE__ROOT_URI=s3://bucket/prefix``); values are
parsed as YAML scalars so ``true``/``42``/``0.5`` keep their types.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops_bundle.features import PROBA_PREFIX, RESERVED_COLUMNS
from mlops_bundle.names import DATASET_NAME_PATTERN
from mlops_bundle.schedules import Schedule
from mlops_bundle.task_types import TASKS, TaskName, task_type

ENV_PREFIX = "MLOPS_"
CONFIG_ENV = "MLOPS_CONFIG"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# the data set catalog: one config file per data set
DEFAULT_CONFIG_DIR = PROJECT_ROOT / "config" / "datasets"
# the sample data set's config (scripts and tests that want "the churn sample" use it)
DEFAULT_CONFIG_PATH = DEFAULT_CONFIG_DIR / "churn.yaml"

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DType = Literal["int", "float", "string", "category", "bool", "datetime"]


class ConfigError(ValueError):
    """The config file is missing or invalid; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    name: str = Field(min_length=1)
    dtype: DType
    nullable: bool = False
    description: str = ""


class DatasetConfig(_Strict):
    name: str = Field(pattern=DATASET_NAME_PATTERN)
    columns: list[ColumnSpec] = Field(min_length=2)
    # both optional (a data set from sklearn's load_* has neither): without a timestamp the training window
    # is split by batch date (the staging partition's ds), without an id rows keep their file order
    id_column: str | None = None
    timestamp_column: str | None = None
    target: str
    # binary | multiclass | regression (mlops_bundle.task_types): metrics, gate direction, outputs
    task: TaskName = "binary"

    @model_validator(mode="after")
    def _roles_exist(self) -> DatasetConfig:
        names = [c.name for c in self.columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate column names: {dupes}")
        for role in ("id_column", "timestamp_column", "target"):
            value = getattr(self, role)
            if value is not None and value not in names:
                raise ValueError(f"{role}={value!r} is not one of the declared columns {names}")
        roles = [r for r in (self.id_column, self.timestamp_column, self.target) if r is not None]
        if len(set(roles)) != len(roles):
            raise ValueError(f"id_column, timestamp_column and target must be different columns, got {roles}")
        if self.timestamp_column is not None and self.column(self.timestamp_column).dtype != "datetime":
            raise ValueError(f"timestamp_column {self.timestamp_column!r} must have dtype 'datetime'")
        reserved = [n for n in names if n in RESERVED_COLUMNS or n.startswith(PROBA_PREFIX)]
        if reserved:
            raise ValueError(
                f"column(s) {reserved} take a name reserved for the scores (prediction, prediction_proba and "
                f"the per-class {PROBA_PREFIX}<label> columns score_batch adds): rename them in dataset.columns "
                "(and in the delivered batches)"
            )
        if self.task == "regression" and self.column(self.target).dtype not in ("int", "float"):
            raise ValueError(
                f"target {self.target!r} has dtype {self.column(self.target).dtype!r}: task 'regression' "
                "needs a numeric target (int or float); use task binary/multiclass for a label"
            )
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def feature_columns(self) -> list[str]:
        skip = {self.id_column, self.timestamp_column, self.target} - {None}
        return [c.name for c in self.columns if c.name not in skip]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


class StorageConfig(_Strict):
    # file:///abs/path, a path relative to the config file's folder, or s3://bucket/prefix
    root_uri: str = "../../var/lake"
    # Airflow connection used for s3:// roots; credentials never live in this file
    aws_conn_id: str = "aws_default"
    landing_prefix: str = "landing"
    staging_prefix: str = "staging"
    quarantine_prefix: str = "quarantine"
    reports_prefix: str = "reports"
    # scored batches, training hand-over files and monitoring state (retrain history)
    predictions_prefix: str = "predictions"
    work_prefix: str = "work"
    monitoring_prefix: str = "monitoring"

    def written_prefixes(self) -> list[str]:
        """Every prefix the pipeline writes data to (landing is delivered, never written by it)."""
        return [
            self.staging_prefix,
            self.quarantine_prefix,
            self.reports_prefix,
            self.predictions_prefix,
            self.work_prefix,
        ]


def absolute_location(uri: str, base_dir: Path, field: str) -> str:
    """A configured folder as an absolute URI: ``s3://`` and ``file://`` as written (minus a trailing
    slash), a plain path relative to the config file's folder (``base_dir``). The one rule for every
    storage-like setting (storage.root_uri, ingest.allowed_sources); ``field`` names the setting in the
    error for any other scheme."""
    if uri.startswith("s3://") or uri.startswith("file://"):
        return uri.rstrip("/")
    if "://" in uri:
        raise ConfigError(f"{field} {uri!r}: only file:// and s3:// are supported")
    return (base_dir / uri).resolve().as_uri()


class IngestConfig(_Strict):
    # when the data set's ingest DAG runs (UTC): it ingests the day before the run's logical date
    schedule: Schedule = "30 0 * * *"
    file_patterns: list[str] = Field(default_factory=lambda: ["*.csv", "*.csv.gz", "*.parquet"])
    csv_delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: Literal["utf-8"] = "utf-8"
    # how many offending values an error message shows per column
    error_examples: int = Field(default=5, ge=1, le=50)
    # folders the ingest DAG's `source` Param may name instead of landing/ (whoever may trigger ingest
    # controls that Param): file:///abs/folder/, s3://bucket/prefix/, or a folder relative to this
    # file's folder; a request matches on whole path segments, symlinks resolved. Empty: no override.
    allowed_sources: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _sources_are_folders(self) -> IngestConfig:
        for i, entry in enumerate(self.allowed_sources):
            problem = _source_entry_problem(entry)
            if problem:
                raise ValueError(
                    f"ingest.allowed_sources[{i}] {entry!r} {problem}; write file:///absolute/folder/, "
                    "s3://bucket/prefix/ or a folder relative to the config file"
                )
        return self


def _source_entry_problem(entry: str) -> str:
    """Why an ingest.allowed_sources entry cannot be an allowlist prefix ('' if it can)."""
    scheme = entry.partition("://")[0] if "://" in entry else ""
    if not entry.strip() or any(c in entry for c in "\x00\\?#"):
        return "is empty or holds a NUL, backslash, '?' or '#'"
    if scheme not in ("", "file", "s3"):
        return "has an unsupported scheme (only file:// and s3://)"
    if scheme == "s3" and not entry[5:].partition("/")[0]:
        return "names no bucket"
    if scheme == "file" and not entry.startswith("file:///"):
        return "is not an absolute local path (file:// must be followed by /, no host)"
    if entry.rstrip("/") in ("file:", ""):
        return "names the whole filesystem"
    return ""


class ValidationConfig(_Strict):
    # a folder relative to the config file's folder (the one rule for every relative path), or absolute
    gx_root: str = "../../great_expectations"
    suite_name: str
    validation_definition: str
    checkpoint_name: str
    # keep this many stored validation results per suite; older ones are pruned
    result_retention: int = Field(default=30, ge=1)
    build_data_docs: bool = True


class MlflowConfig(_Strict):
    # a folder (relative to the config file) -> local SQLite tracking store + artifacts in it;
    # or http(s)://host:port of an MLflow server; or a database URI (postgresql://...)
    tracking_uri: str = "../../var/mlflow"
    experiment: str = "{dataset}-training"
    monitoring_experiment: str = "{dataset}-monitoring"
    # {dataset} and {kind} (classifier or regressor, from dataset.task) are filled in
    registered_model: str = "{dataset}-{kind}"
    # Airflow connection (login/password) of the MLflow account the bundle writes with, set for MLflow's
    # client in every task process (plugins/mlops_airflow/mlflow_auth.py); empty: no credentials (a
    # tracking server without authentication, e.g. the local demo)
    conn_id: str = ""
    # Airflow connection whose password is the model provenance key (signs registered versions, checked
    # before every load); empty: $MLOPS_PROVENANCE_KEY
    provenance_conn_id: str = ""


class CandidateSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")
    # exactly one of: a model family known to mlops_bundle.training, or the dotted import path of a
    # scikit-learn-compatible estimator class under training.estimator_modules (both checked when training
    # starts, with a clear error)
    family: str | None = None
    estimator: str | None = None
    params: dict[str, float | int | str | bool | None] = Field(default_factory=dict)
    # estimator only: types its fitted object holds that skops must be told to trust beyond its defaults
    # and the built-in families' (e.g. "sklearn.neighbors._kd_tree.KDTree"); each under estimator_modules
    trusted_types: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_model(self) -> CandidateSpec:
        if bool(self.family) == bool(self.estimator):
            raise ValueError(
                f"candidate {self.name!r} must name exactly one of family (a built-in model family) or "
                f"estimator (a dotted import path), got family={self.family!r}, estimator={self.estimator!r}"
            )
        if self.trusted_types and not self.estimator:
            raise ValueError(f"candidate {self.name!r}: trusted_types applies to estimator candidates only")
        return self

    @property
    def model(self) -> str:
        """The family name or the estimator's import path (what logs, tags and messages call it)."""
        return self.family or self.estimator or ""


class TrainingConfig(_Strict):
    # the training window: this many days of validated partitions ending at the run's batch date
    window_days: int = Field(default=30, ge=1)
    # the most recent share of the window (by timestamp, else by batch date) is the holdout, never trained on
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    # the primary metric; empty = the task's default (binary: roc_auc, multiclass: f1_macro, regression: rmse)
    metric: str = ""
    min_rows: int = Field(default=200, ge=10)
    candidates: list[CandidateSpec] = Field(default_factory=list)
    # module prefixes a candidate's `estimator` import path may come from. Importing a module runs its code,
    # so this is an allowlist of code the training task may execute: keep it to libraries you trust
    estimator_modules: list[str] = Field(default_factory=lambda: ["sklearn."])
    # slots of the Airflow pool that bounds concurrently training candidates
    pool_slots: int = Field(default=2, ge=1)
    seed: int = 42

    def module_allowed(self, dotted: str) -> bool:
        """``dotted`` (a module, class or type path) lies under one of ``estimator_modules``, on whole name
        segments: ``sklearn.`` and ``sklearn`` both allow ``sklearn.ensemble.X``, neither ``sklearn_x.Y``."""
        for prefix in self.estimator_modules:
            base = prefix.rstrip(".")
            if base and (dotted == base or dotted.startswith(base + ".")):
                return True
        return False

    @model_validator(mode="after")
    def _trusted_types_are_allowed(self) -> TrainingConfig:
        """The text check only (config parsing runs at DAG parse: no imports here). That each entry is a
        class defined at that path is checked when training builds the candidate and before every load
        (mlops_bundle.training.models.check_trusted_types)."""
        for spec in self.candidates:
            outside = [t for t in spec.trusted_types if not self.module_allowed(t)]
            if outside:
                raise ValueError(
                    f"candidate {spec.name!r} trusts type(s) {outside} outside training.estimator_modules "
                    f"{self.estimator_modules}"
                )
        return self


class PromotionConfig(_Strict):
    # the challenger must reach this value of training.metric on the holdout
    floor: float = 0.70
    # ... and beat the champion (on the same holdout) by at least this much
    min_improvement: float = 0.0
    # metric -> largest tolerated drop vs the champion
    guard_metrics: dict[str, float] = Field(default_factory=dict)
    # pause for a human approval (Airflow's Required Actions) before any promotion
    require_approval: bool = False
    # four eyes for every promotion: it waits for an approval and the approver must be a different user
    # from the one who triggered the run (a forced promotion always works this way, whatever this says)
    four_eyes: bool = False
    # Airflow user ids allowed to answer the approval (its assigned users, minus the triggering user where
    # four eyes apply); empty: anyone allowed to answer Required Actions of the train DAG
    approvers: list[str] = Field(default_factory=list)
    # where promotions serialize: a postgresql:// URI (advisory lock) or empty for a file lock next to
    # the tracking store (only safe when every worker shares that disk)
    lock_uri: str = ""


class MonitoringConfig(_Strict):
    # when the data set's monitor DAG runs (UTC): it scores and reports on the day before its logical date
    schedule: Schedule = "0 6 * * *"
    # the verdict is "drift" when this share of the feature columns drifted
    drift_share_threshold: float = Field(default=0.3, gt=0, le=1)
    # fewer rows than this on either side: the verdict is "insufficient data" (reported, never a retrain)
    min_rows: int = Field(default=50, ge=4)
    # feature -> fixed drift threshold (used as given); the others are calibrated on the reference at the
    # batch's size, never below the pinned method's threshold (mlops_bundle.monitoring.calibration)
    column_thresholds: dict[str, float] = Field(default_factory=dict)
    # calibration: the largest share of same-distribution batches whose verdict may be "drift"
    false_alarm_rate: float = Field(default=0.01, gt=0, lt=0.5)
    sample_cap: int = Field(default=100_000, ge=1_000)
    cooldown_hours: float = Field(default=6.0, ge=0)
    max_retrains_per_day: int = Field(default=2, ge=0)


class EncryptionConfig(_Strict):
    # encrypt objects under storage prefixes at rest
    enabled: bool = False
    # "connection": a Tink keyset held by an Airflow connection (embedded mode);
    # "kms": AWS KMS key-encryption keys through the Airflow AWS connection (storage.aws_conn_id)
    key_source: Literal["connection", "kms"] = "connection"
    # Airflow connection holding the local keyset (key_source=connection)
    keyset_conn_id: str = "mlops_keyset"
    # KMS key id/ARN/alias that wraps new data keys (key_source=kms); always allowed to unwrap
    kms_key_id: str = ""
    # further KMS key ARNs allowed to unwrap (e.g. the keys before a rotation); a header naming any other
    # key is refused before KMS is asked. ARNs only: an alias can be repointed, an allowlist must not move
    kms_key_ids: list[str] = Field(default_factory=list)
    # the prefixes to encrypt; empty (the default) = every prefix the pipeline writes
    # (storage.written_prefixes(): staging, quarantine, reports, predictions, work)
    prefixes: list[str] = Field(default_factory=list)
    # bound into every object's associated data with its key, so an object copied from another lake is
    # refused; empty = the storage root URI (set it explicitly if the lake may move or change URI)
    lake_id: str = Field(default="", max_length=256)
    # MIGRATION ONLY: read plaintext and format-1 objects under the encrypted prefixes (logged as a
    # WARNING per object). Off = such objects are refused (a planted plaintext object is never read)
    allow_legacy_objects: bool = False
    # MLflow artifacts holding data rows (the drift reference sample): "encrypt" them in the lake's
    # envelope, or "omit" them (no drift reports then). The model's input example is never logged while
    # encryption is on (MLflow reads it as plaintext)
    data_artifacts: Literal["encrypt", "omit"] = "encrypt"

    @model_validator(mode="after")
    def _kms_ids_are_arns(self) -> EncryptionConfig:
        for i, arn in enumerate(self.kms_key_ids):
            parts = arn.split(":")
            if len(parts) != 6 or parts[0] != "arn" or parts[2] != "kms" or not parts[5].startswith("key/"):
                raise ValueError(
                    f"kms_key_ids[{i}]={arn!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:key/<id>):"
                    " aliases and bare key ids are not accepted in the allowlist; use `aws kms describe-key"
                    " --key-id ...` to get the ARN"
                )
        return self


class AuditConfig(_Strict):
    enabled: bool = True
    # SQLAlchemy-style URL of the shared audit store: sqlite:///path (embedded) or postgresql://... (stack);
    # a plain path is relative to the config file's folder
    store_uri: str = "../../var/audit/audit.db"
    # Airflow connection whose password is the HMAC key of the chain (optional but recommended)
    hmac_conn_id: str = ""
    # where verified heads are anchored out of the tasks' reach: s3://bucket/prefix/ of a bucket created
    # with Object Lock (versioning on), written through the AWS connection storage.aws_conn_id. Empty:
    # anchors only in the store's own DB (rewritable by whoever can delete records; verify warns)
    anchor_uri: str = ""
    # Object Lock retention of each anchor object: COMPLIANCE (nobody, not even the bucket's root account,
    # can delete or shorten it before it expires) or GOVERNANCE (principals with
    # s3:BypassGovernanceRetention can); days >= the longest time an incident may go unnoticed
    anchor_retention_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    anchor_retention_days: int = Field(default=400, ge=1, le=36500)
    # per-host folder (relative to the config file's folder) where a listener counts the events it could
    # not write while the store was down; the next successful write turns them into an audit.gap record
    gap_dir: str = "../../var/audit/gaps"

    @model_validator(mode="after")
    def _anchor_uri_is_s3(self) -> AuditConfig:
        uri = self.anchor_uri
        if uri and (not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]):
            raise ValueError(
                f"audit.anchor_uri {uri!r}: use s3://bucket/prefix/ (a bucket with Object Lock) or leave it "
                f"empty"
            )
        return self


class BundleConfig(_Strict):
    dataset: DatasetConfig
    storage: StorageConfig = StorageConfig()
    ingest: IngestConfig = IngestConfig()
    validation: ValidationConfig
    mlflow: MlflowConfig = MlflowConfig()
    training: TrainingConfig = TrainingConfig()
    promotion: PromotionConfig = PromotionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    encryption: EncryptionConfig = EncryptionConfig()
    audit: AuditConfig = AuditConfig()
    # where the file came from; relative paths in it resolve against its folder
    source: str = ""

    @model_validator(mode="after")
    def _metrics_fit_the_task(self) -> BundleConfig:
        task = task_type(self.dataset.task)
        if not self.training.metric:
            object.__setattr__(self.training, "metric", task.default_metric)  # frozen: filled in once here
        named = {
            "training.metric": [self.training.metric],
            "promotion.guard_metrics": self.promotion.guard_metrics,
        }
        for field_name, metrics in named.items():
            unknown = sorted(set(metrics) - set(task.metrics))
            if unknown:
                raise ValueError(
                    f"{field_name} names {unknown}, not a metric of task {task.name!r} (dataset.task); "
                    f"its metrics: {list(task.metrics)}"
                )
        return self

    @model_validator(mode="after")
    def _thresholds_name_features(self) -> BundleConfig:
        unknown = sorted(set(self.monitoring.column_thresholds) - set(self.dataset.feature_columns))
        if unknown:
            raise ValueError(
                f"monitoring.column_thresholds names {unknown}, which are not feature columns of the data set "
                f"(features: {self.dataset.feature_columns})"
            )
        return self

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else PROJECT_ROOT / "config"

    @property
    def root_uri(self) -> str:
        """The storage root as an absolute URI (file:///... or s3://...)."""
        return absolute_location(self.storage.root_uri, self.base_dir, "storage.root_uri")

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI; a plain folder becomes a SQLite store inside it."""
        uri = self.mlflow.tracking_uri
        if "://" in uri or uri.startswith("sqlite:"):
            return uri
        folder = Path(uri) if Path(uri).is_absolute() else (self.base_dir / uri).resolve()
        return f"sqlite:///{folder / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        """Where a local tracking store keeps artifacts (None: the server decides)."""
        uri = self.mlflow.tracking_uri
        if "://" in uri or uri.startswith("sqlite:"):
            return None
        folder = Path(uri) if Path(uri).is_absolute() else (self.base_dir / uri).resolve()
        return f"file://{folder / 'artifacts'}"

    @property
    def audit_uri(self) -> str:
        """The audit store as a URL; a plain path becomes sqlite:/// relative to the config file."""
        uri = self.audit.store_uri
        if "://" in uri or uri.startswith("sqlite:"):
            return uri
        path = Path(uri) if Path(uri).is_absolute() else (self.base_dir / uri).resolve()
        return f"sqlite:///{path}"

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment.format(dataset=self.dataset.name)

    @property
    def monitoring_experiment_name(self) -> str:
        return self.mlflow.monitoring_experiment.format(dataset=self.dataset.name)

    @property
    def encrypted_prefixes(self) -> list[str]:
        """The storage prefixes encrypted at rest when encryption is enabled."""
        return list(self.encryption.prefixes) or self.storage.written_prefixes()

    @property
    def model_name(self) -> str:
        kind = TASKS[self.dataset.task].model_kind
        return self.mlflow.registered_model.format(dataset=self.dataset.name, kind=kind)

    @property
    def gx_root(self) -> Path:
        p = Path(self.validation.gx_root)
        return p if p.is_absolute() else (self.base_dir / p).resolve()


def config_location(environ: dict[str, str] | None = None) -> Path:
    """The catalog: the folder (or single config file) ``$MLOPS_CONFIG`` names, else config/datasets/."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(CONFIG_ENV) or DEFAULT_CONFIG_DIR)


def config_files(location: Path) -> list[Path]:
    """The config files of a catalog location, sorted: the file itself, or a folder's ``*.yaml``/``*.yml``
    (hidden files and ``_``-prefixed ones, e.g. drafts, are not data sets)."""
    if not location.is_dir():
        return [location]
    found = [*location.glob("*.yaml"), *location.glob("*.yml")]
    return sorted(p for p in found if p.is_file() and not p.name.startswith((".", "_")))


def _single_config_file(location: Path) -> Path:
    files = config_files(location)
    if len(files) == 1:
        return files[0]
    raise ConfigError(
        f"{location} holds {len(files)} data set config files ({', '.join(p.stem for p in files) or 'none'}): "
        "name the data set (mlops_bundle.catalog.dataset_config(name)) or set "
        f"{CONFIG_ENV} to one config file"
    )


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key or key == CONFIG_ENV:
            continue
        section, _, field = key[len(ENV_PREFIX) :].lower().partition("__")
        out.setdefault(section, {})[field] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load_config(
    path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None
) -> BundleConfig:
    """Read, merge env overrides into and validate one config file; raise ConfigError naming what is wrong.

    Without ``path``: ``$MLOPS_CONFIG`` if it names a file, else the catalog folder's only data set (a
    folder of several needs the data set's name: ``mlops_bundle.catalog.dataset_config``).
    """
    environ = dict(os.environ if environ is None else environ)
    cfg_path = Path(path) if path else _single_config_file(config_location(environ))
    if not cfg_path.is_file():
        raise ConfigError(
            f"config file {cfg_path} not found: set {CONFIG_ENV} to your data set's config file or to the "
            f"folder of them (see config/datasets/churn.yaml for an example)"
        )
    try:
        text = cfg_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {cfg_path} cannot be read as UTF-8 text: {exc}") from None
    try:
        # libyaml's safe loader where PyYAML has it: ~10x faster, and every DAG file parses every config
        data = yaml.load(text, Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {cfg_path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {cfg_path} must be a mapping of sections, got {type(data).__name__}")
    for section, fields in _env_overrides(environ).items():
        if section not in BundleConfig.model_fields or section == "source":
            raise ConfigError(
                f"environment override names unknown section {section!r}; "
                f"sections are {sorted(k for k in BundleConfig.model_fields if k != 'source')}"
            )
        if not isinstance(data.get(section) or {}, dict):
            raise ConfigError(f"config file {cfg_path} is invalid: {section}: must be a mapping of fields")
        data[section] = {**(data.get(section) or {}), **fields}  # an empty `section:` header is None
    data["source"] = str(cfg_path.resolve())
    try:
        return BundleConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise ConfigError(f"config file {cfg_path} is invalid: {problems}") from None
