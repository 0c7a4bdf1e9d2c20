"""Data rows that leave the lake for MLflow (the drift reference sample) travel in the same envelope.

MLflow's artifact store is outside the lake's encryption, so an artifact holding rows of data is sealed
before it is logged: the same format as the lake's objects, bound to the lake id and to
``mlflow-artifacts/<run id>/<artifact path>``, so a sealed artifact copied to another run (e.g. another
model's reference put behind the champion to hide drift) or another lake is refused. Artifact names are
unchanged (the magic tells a sealed artifact from a plaintext one, as in the lake).
"""

from __future__ import annotations

import logging

from mlops_bundle.crypto.encrypting_storage import MIGRATION_SETTING, EncryptingStorage
from mlops_bundle.crypto.header import MAGIC, VERSION, DecryptionError, format_version
from mlops_bundle.crypto.stream import decrypt_bytes, encrypt_bytes

log = logging.getLogger(__name__)


def artifact_key(run_id: str, path: str) -> str:
    """The name an MLflow artifact is bound to (as an object key of the lake's associated data)."""
    return f"mlflow-artifacts/{run_id}/{path.strip('/')}"


def _name(run_id: str, path: str) -> str:
    return f"runs:/{run_id}/{path.strip('/')}"


def seal_artifact(store: EncryptingStorage, run_id: str, path: str, data: bytes) -> bytes:
    """`data` encrypted with the lake's keyring, bound to the lake and to the run's artifact path."""
    aad = store.context(artifact_key(run_id, path))
    return encrypt_bytes(data, store.keyring, aad=aad, name=_name(run_id, path))


def open_artifact(store: EncryptingStorage, run_id: str, path: str, blob: bytes) -> bytes:
    """The plaintext of a sealed artifact; a plaintext (or format-1) one is refused unless migrating."""
    name = _name(run_id, path)
    if format_version(blob[: len(MAGIC) + 1]) != VERSION:
        if not store.allow_legacy:
            raise DecryptionError(
                f"{name}: refused: this MLflow artifact holds data rows but is not encrypted for lake "
                f"{store.lake_id!r}, and encryption is on (it was logged before encryption was switched on, "
                "or planted). Retrain the model with the train DAG so its artifact is recorded encrypted, "
                f"or set {MIGRATION_SETTING}: true while migrating"
            )
        log.warning("%s: MIGRATION: reading a plaintext data artifact (%s is on)", name, MIGRATION_SETTING)
        return blob
    return decrypt_bytes(blob, store.keyring, aad=store.context(artifact_key(run_id, path)), name=name)
