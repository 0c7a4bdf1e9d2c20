"""Provenance of registered model versions: the bundle signs what it registers and loads only what it signed.

At registration (``training.register_best``) each version gets an HMAC-SHA256 over (run id, train key,
SHA-256 of the model file), keyed by the provenance secret, written in the same call that creates the
version (tags ``provenance.*``). Before any load (scoring, gate, rollback, console) the loader downloads
the model file, recomputes its digest and checks the signature: a version registered straight into MLflow
(even with the bundle's own MLflow credentials), or whose file was swapped in the artifact store, is
refused before a single byte is deserialized.

The key comes from ``set_key`` (the Airflow side reads the connection ``mlflow.provenance_conn_id``) or
``$MLOPS_PROVENANCE_KEY``. What the HMAC does not stop: anyone who can read that secret (a DAG author, who
can read Airflow connections from a task; an operator with access to the deployment's environment) can
sign a model of their choosing. It stops everyone who can only reach MLflow or its artifact store.

``adopt`` signs a version registered before this check existed, after a person confirmed it, and audits
who did (``python -m mlops_bundle.provenance adopt --model NAME --version N``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

KEY_ENV = "MLOPS_PROVENANCE_KEY"
SIGNATURE_TAG = "provenance.signature"
DIGEST_TAG = "provenance.model_sha256"
KEY_ID_TAG = "provenance.key_id"
TRAIN_KEY_TAG = "train_key"
_LABEL = b"mlops-provenance-v1"

_key: bytes | None = None
_key_set = False


class ProvenanceError(ValueError):
    """A model version cannot be proven to come from the bundle; the message says what to do."""


def set_key(key: bytes | str | None) -> None:
    """Set this process's provenance key (the Airflow side calls this; else ``$MLOPS_PROVENANCE_KEY``)."""
    global _key, _key_set
    _key = key.encode() if isinstance(key, str) else key
    _key_set = True


def current_key() -> bytes:
    """The provenance key; raises ``ProvenanceError`` when none is configured (no key, no loads)."""
    key = _key if _key_set else (os.environ.get(KEY_ENV) or "").encode() or None
    if not key:
        raise ProvenanceError(
            "no provenance key: set the Airflow connection named by mlflow.provenance_conn_id (its password) "
            f"or ${KEY_ENV}; without it the bundle can neither sign the versions it registers nor check "
            "the ones it loads"
        )
    return key


def key_id(key: bytes) -> str:
    """A short public id of a key (which key signed a version), never the key itself."""
    return hmac.new(key, b"mlops-provenance key id", hashlib.sha256).hexdigest()[:12]


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def signature(key: bytes, run_id: str, train_key: str, model_sha256: str) -> str:
    message = b"\0".join([_LABEL, run_id.encode(), train_key.encode(), model_sha256.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signed_tags(run_id: str, train_key: str, model_sha256: str, key: bytes | None = None) -> dict[str, str]:
    """The ``provenance.*`` tags of a version registered from ``run_id`` with this model file digest."""
    key = key or current_key()
    return {
        SIGNATURE_TAG: signature(key, run_id, train_key, model_sha256),
        DIGEST_TAG: model_sha256,
        KEY_ID_TAG: key_id(key),
    }


def verify(name: str, mv: Any, folder: str | os.PathLike[str], key: bytes | None = None) -> Path:
    """Check that the downloaded model ``folder`` holds what the bundle registered as ``name`` version
    ``mv``: a signature, a skops file, and a digest that matches the signature. Returns the skops file.

    Raises ``ProvenanceError`` naming the version and what is wrong. Reads the file's bytes only.
    """
    key = key or current_key()
    tags = mv.tags or {}
    version = f"{name} version {mv.version}"
    sig = tags.get(SIGNATURE_TAG)
    if not sig:
        raise ProvenanceError(
            f"{version} carries no provenance signature: it was not registered by the bundle's train DAG "
            "(registered by hand, or before provenance checks existed). Not loaded. If a person vouches for "
            f"it: python -m mlops_bundle.provenance adopt --model {name} --version {mv.version}"
        )
    path = model_file(folder)
    digest = file_sha256(path)
    expected = signature(key, str(mv.run_id or ""), str(tags.get(TRAIN_KEY_TAG, "")), digest)
    if not hmac.compare_digest(expected, sig):
        which = tags.get(KEY_ID_TAG)
        hint = (
            f"it was signed with key {which}, this process has key {key_id(key)}"
            if which and which != key_id(key)
            else "its model file, run id or train key changed after it was signed"
        )
        raise ProvenanceError(
            f"{version} fails its provenance check ({hint}). Not loaded; find out who changed it (the "
            "registry's and the artifact store's access logs), then roll back to a version that passes"
        )
    return path


def model_file(folder: str | os.PathLike[str]) -> Path:
    """The skops file of a downloaded MLflow sklearn model folder; refuses any other format."""
    found = sorted(Path(folder).rglob("model.skops"))  # a runs:/ source downloads into a subfolder
    if len(found) == 1:
        return found[0]
    if not found:
        present = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        raise ProvenanceError(
            f"the model in {folder} is not a skops model (files: {present}); the bundle loads skops only, "
            "never pickle: re-register it through the train DAG"
        )
    raise ProvenanceError(f"the model in {folder} holds {len(found)} skops files; expected exactly one")


def adopt(cfg: Any, name: str, version: str, *, actor: str, confirm: Any) -> dict[str, str]:
    """Sign a version registered before provenance checks existed, once a person confirmed it.

    Shows ``confirm(summary)`` what is about to be signed (run, train key, model file digest) and signs only
    if it returns True; audits ``provenance.adopt`` with the actor. Refuses a non-skops model. Returns the
    tags written.
    """
    import shutil
    import tempfile

    from mlops_bundle import tracking
    from mlops_bundle.audit import record_event

    tracking.use(cfg)
    import mlflow.artifacts

    client = tracking.client(cfg)
    mv = client.get_model_version(name, str(version))
    folder = tempfile.mkdtemp(prefix="mlops-adopt-")
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=folder)
        digest = file_sha256(model_file(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    tags = mv.tags or {}
    summary = (
        f"{name} version {mv.version}: run {mv.run_id}, train_key {tags.get(TRAIN_KEY_TAG) or '(none)'}, "
        f"created {mv.creation_timestamp}, model.skops sha256 {digest}"
        + (", ALREADY SIGNED (re-signing)" if tags.get(SIGNATURE_TAG) else "")
    )
    if not confirm(summary):
        raise ProvenanceError(f"not confirmed: {name} version {mv.version} was not signed")
    signed = signed_tags(str(mv.run_id or ""), str(tags.get(TRAIN_KEY_TAG, "")), digest)
    for key, value in signed.items():
        client.set_model_version_tag(name, str(mv.version), key, value)
    record_event(
        cfg,
        "provenance.adopt",
        actor=actor,
        subject=f"{name}/{mv.version}",
        payload={
            "run_id": mv.run_id,
            "model_sha256": digest,
            "key_id": signed[KEY_ID_TAG],
            "summary": summary,
        },
        source="cli",
    )
    return signed


def main(argv: list[str] | None = None) -> int:
    """``python -m mlops_bundle.provenance adopt --model NAME --version N [--actor WHO]``."""
    import argparse
    import getpass
    import sys

    from mlops_bundle.catalog import dataset_config
    from mlops_bundle.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m mlops_bundle.provenance", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser(
        "adopt", help="sign a version registered before provenance checks, after confirming it"
    )
    p.add_argument("--dataset", help="the data set whose config to use (needed when the catalog has several)")
    p.add_argument("--model", help="registered model (default: the data set's)")
    p.add_argument("--version", required=True)
    p.add_argument("--actor", help="who vouches for it (default: the OS user)")
    args = parser.parse_args(argv)
    cfg = dataset_config(args.dataset) if args.dataset else load_config()
    name = args.model or cfg.model_name
    actor = args.actor or getpass.getuser()

    def confirm(summary: str) -> bool:
        print(summary, file=sys.stderr)
        print(f"{actor}: type the version number ({args.version}) to sign it, anything else aborts: ",
              end="", file=sys.stderr, flush=True)  # fmt: skip
        return sys.stdin.readline().strip() == str(args.version).strip()

    try:
        signed = adopt(cfg, name, args.version, actor=actor, confirm=confirm)
    except ProvenanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"signed {name} version {args.version} (key {signed[KEY_ID_TAG]}); audited as provenance.adopt by {actor}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
