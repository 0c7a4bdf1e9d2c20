"""``EncryptingStorage``: a ``Storage`` wrapper that encrypts the lake's objects at rest, keys unchanged."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlops_bundle.crypto.header import LEGACY_VERSION, MAGIC, DecryptionError, format_version, object_context
from mlops_bundle.crypto.keyrings import Keyring
from mlops_bundle.crypto.stream import decrypt_bytes, decrypt_stream, encrypt_bytes, encrypt_stream
from mlops_bundle.storage import atomic_file

log = logging.getLogger(__name__)

_HEAD = len(MAGIC) + 1  # bytes that tell plaintext and format versions apart
MIGRATION_SETTING = "encryption.allow_legacy_objects"


def _norm_prefixes(prefixes: list[str]) -> list[str]:
    return [p.strip("/") for p in prefixes]


class EncryptingStorage:
    """A Storage that encrypts objects under `prefixes` at rest; keys (and thus layouts) are unchanged.

    * writes (write_bytes/put_file) under the prefixes are encrypted, bound to ``lake_id`` and the
      object's final key (relative to the store root; never a temporary name), so a ciphertext copied
      to another key or into another lake is refused, naming where it was encrypted for;
    * reads (read_bytes/get_file) decrypt, and are strict: an object under the prefixes that is not
      encrypted (planted, or written before encryption was on) or is in the legacy format version 1
      (not bound to a lake) is refused with an error naming the object, the prefix and what to do.
      ``allow_legacy=True`` (config ``encryption.allow_legacy_objects``) is the migration escape hatch:
      such objects are read, with a WARNING per object;
    * local_path() is None for keys under the prefixes, so callers fall back to read_bytes/get_file and
      never parse ciphertext; list()/exists()/delete()/uri() pass through (sizes are ciphertext sizes).
    put_file/get_file stream through temporary files in constant memory.

    ``lake_id`` defaults to the store's root URI: set it explicitly (config ``encryption.lake_id``) for a
    lake that may be moved or served under another URI.
    """

    def __init__(
        self,
        inner: Any,
        keyring: Keyring,
        prefixes: list[str],
        *,
        lake_id: str | None = None,
        allow_legacy: bool = False,
    ):
        self.inner = inner
        self.keyring = keyring
        self.prefixes = _norm_prefixes(prefixes)
        self.root_uri = inner.root_uri
        self.lake_id = lake_id or inner.root_uri
        self.allow_legacy = allow_legacy
        if allow_legacy:
            log.warning(
                "%s is ON for %s: plaintext and format-1 objects under %s are read as valid. This is for "
                "migrating an existing lake only; turn it off as soon as the lake is rewritten",
                MIGRATION_SETTING,
                self.root_uri,
                self.prefixes,
            )

    def __getattr__(self, attr: str) -> Any:  # root, bucket, client... of the wrapped store
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def _prefix_of(self, key: str) -> str | None:
        key = key.strip("/")
        for p in self.prefixes:
            if p == "" or key == p or key.startswith(p + "/"):
                return p
        return None

    def encrypts(self, key: str) -> bool:
        return self._prefix_of(key) is not None

    def context(self, key: str) -> bytes:
        """The associated data an object at `key` is bound to: this lake's id and the key."""
        return object_context(self.lake_id, key)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def list(self, prefix: str):
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def local_path(self, key: str) -> Path | None:
        return None if self.encrypts(key) else self.inner.local_path(key)

    def _read_aad(self, key: str, head: bytes) -> bytes | None:
        """The associated data to decrypt `key` with, or None for a legacy plaintext object allowed through.

        Raises DecryptionError for plaintext / format-1 objects unless the migration setting is on.
        """
        version = format_version(head)
        if version is not None and version != LEGACY_VERSION:
            return self.context(key)
        if not head.startswith(MAGIC) or version == LEGACY_VERSION:
            what = (
                "not encrypted"
                if version is None
                else "in the legacy encryption format 1 (not bound to a lake)"
            )
            prefix = self._prefix_of(key)
            if not self.allow_legacy:
                raise DecryptionError(
                    f"{self.inner.uri(key)}: refused: object {key.strip('/')!r} is {what}, but every object "
                    f"under the encrypted prefix '{prefix}/' must be encrypted for lake {self.lake_id!r} "
                    "(encryption.enabled is on). It was planted there, or written before this was switched "
                    "on: delete it and re-run the task that produces it (ingest for staging/, score/report "
                    f"for predictions/ and reports/); to migrate a whole existing lake set {MIGRATION_SETTING}"
                    ": true until every object is rewritten"
                )
            log.warning(
                "%s: MIGRATION: reading %s object (%s is on)", self.inner.uri(key), what, MIGRATION_SETTING
            )
            return None if version is None else key.strip("/").encode("utf-8")
        return self.context(key)  # our magic, unknown version: let the decrypt name it

    def read_bytes(self, key: str) -> bytes:
        data = self.inner.read_bytes(key)
        if not self.encrypts(key):
            return data
        aad = self._read_aad(key, data[:_HEAD])
        if aad is None:
            return data
        return decrypt_bytes(data, self.keyring, aad=aad, name=self.inner.uri(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        if not self.encrypts(key):
            return self.inner.write_bytes(key, data)
        blob = encrypt_bytes(data, self.keyring, aad=self.context(key), name=self.inner.uri(key))
        return self.inner.write_bytes(key, blob)

    def put_file(self, key: str, path: Path) -> str:
        if not self.encrypts(key):
            return self.inner.put_file(key, path)
        name = self.inner.uri(key)
        aad = self.context(key)  # the final key, also when the bytes pass through a temporary file
        dest = self.inner.local_path(key)
        if dest is not None:  # local: encrypt straight into a temp file beside the object
            with open(path, "rb", buffering=0) as fin, atomic_file(Path(dest)) as fout:
                encrypt_stream(fin, fout, self.keyring, aad=aad, name=name)
            return name
        with tempfile.TemporaryDirectory(prefix="mlops-enc-") as tmp:
            enc = Path(tmp) / "object.enc"
            with open(path, "rb", buffering=0) as fin, open(enc, "wb") as fout:
                encrypt_stream(fin, fout, self.keyring, aad=aad, name=name)
            return self.inner.put_file(key, enc)

    def get_file(self, key: str, path: Path) -> Path:
        if not self.encrypts(key):
            return self.inner.get_file(key, path)
        path = Path(path)
        name = self.inner.uri(key)
        src = self.inner.local_path(key)
        with contextlib.ExitStack() as stack:
            if src is None:  # remote: download the ciphertext beside the destination first
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent)))
                src = self.inner.get_file(key, tmp / "object.enc")
            with open(src, "rb") as fh:
                aad = self._read_aad(key, fh.read(_HEAD))
            if aad is None:
                with open(src, "rb") as fin, atomic_file(path) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                return path
            with open(src, "rb") as fin, atomic_file(path) as fout:
                decrypt_stream(fin, fout, self.keyring, aad=aad, name=name)
        return path

    def upgrade_legacy(self, prefix: str) -> list[str]:
        """Rewrite the plaintext and format-1 objects under `prefix` in the current format; their keys.

        Migration only, so it requires ``allow_legacy`` (``encryption.allow_legacy_objects``): it turns
        whatever lies there into trusted ciphertext, planted objects included. Run it once per prefix on a
        lake you trust, then switch the setting off. Objects stream through a temporary folder.
        """
        if not self.allow_legacy:
            raise DecryptionError(
                f"upgrading legacy objects under {self.inner.uri(prefix)} needs {MIGRATION_SETTING}: true "
                "(it encrypts whatever plaintext lies there, so it is a deliberate migration step)"
            )
        upgraded = []
        for obj in self.inner.list(prefix):
            if not self.encrypts(obj.key):
                continue
            with tempfile.TemporaryDirectory(prefix="mlops-upgrade-") as tmp:
                raw = self.inner.get_file(obj.key, Path(tmp) / "raw")
                with open(raw, "rb") as fh:
                    version = format_version(fh.read(_HEAD))
                if version not in (None, LEGACY_VERSION):
                    continue
                plain = self.get_file(obj.key, Path(tmp) / "plain") if version else raw
                self.put_file(obj.key, plain)
            log.warning("%s: MIGRATION: rewritten in encryption format 2", self.inner.uri(obj.key))
            upgraded.append(obj.key)
        return upgraded
