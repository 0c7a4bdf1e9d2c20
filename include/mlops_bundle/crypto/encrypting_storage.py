"""``EncryptingStorage``: a ``Storage`` wrapper that encrypts the lake's objects at rest, keys unchanged."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlops_bundle.crypto.header import MAGIC, DecryptionError, is_encrypted
from mlops_bundle.crypto.keyrings import Keyring
from mlops_bundle.crypto.stream import decrypt_bytes, decrypt_stream, encrypt_bytes, encrypt_stream
from mlops_bundle.storage import atomic_file

log = logging.getLogger(__name__)


def _norm_prefixes(prefixes: list[str]) -> list[str]:
    return [p.strip("/") for p in prefixes]


class EncryptingStorage:
    """A Storage that encrypts objects under `prefixes` at rest; keys (and thus layouts) are unchanged.

    * writes (write_bytes/put_file) under the prefixes are encrypted with the object's key (relative to
      the store root) as associated data, so a ciphertext copied to another key does not decrypt;
    * reads (read_bytes/get_file) decrypt; objects under the prefixes that are NOT encrypted (written
      before encryption was switched on) are returned as they are when ``allow_plaintext`` is true (the
      default, for migration) and refused otherwise -- set it false once a lake is fully encrypted, so a
      plaintext object planted in its place is rejected;
    * local_path() is None for keys under the prefixes, so callers fall back to read_bytes/get_file and
      never parse ciphertext; list()/exists()/delete()/uri() pass through (sizes are ciphertext sizes).
    put_file/get_file stream through temporary files in constant memory.
    """

    def __init__(self, inner: Any, keyring: Keyring, prefixes: list[str], *, allow_plaintext: bool = True):
        self.inner = inner
        self.keyring = keyring
        self.prefixes = _norm_prefixes(prefixes)
        self.allow_plaintext = allow_plaintext
        self.root_uri = inner.root_uri

    def __getattr__(self, attr: str) -> Any:  # root, bucket, client... of the wrapped store
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def encrypts(self, key: str) -> bool:
        key = key.strip("/")
        return any(p == "" or key == p or key.startswith(p + "/") for p in self.prefixes)

    @staticmethod
    def _aad(key: str) -> bytes:
        return key.strip("/").encode("utf-8")

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

    def _plaintext_ok(self, key: str) -> None:
        if not self.allow_plaintext:
            raise DecryptionError(
                f"{self.inner.uri(key)}: not encrypted, but objects under {self.prefixes} must be "
                "(allow_plaintext is off): it was written without encryption or replaced"
            )
        log.debug("%s is not encrypted; reading it as plaintext (migration)", self.inner.uri(key))

    def read_bytes(self, key: str) -> bytes:
        data = self.inner.read_bytes(key)
        if not self.encrypts(key):
            return data
        if not is_encrypted(data[: len(MAGIC) + 1]):
            self._plaintext_ok(key)
            return data
        return decrypt_bytes(data, self.keyring, aad=self._aad(key), name=self.inner.uri(key))

    def write_bytes(self, key: str, data: bytes) -> str:
        if not self.encrypts(key):
            return self.inner.write_bytes(key, data)
        blob = encrypt_bytes(data, self.keyring, aad=self._aad(key), name=self.inner.uri(key))
        return self.inner.write_bytes(key, blob)

    def put_file(self, key: str, path: Path) -> str:
        if not self.encrypts(key):
            return self.inner.put_file(key, path)
        name = self.inner.uri(key)
        dest = self.inner.local_path(key)
        if dest is not None:  # local: encrypt straight into a temp file beside the object
            with open(path, "rb", buffering=0) as fin, atomic_file(Path(dest)) as fout:
                encrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
            return name
        with tempfile.TemporaryDirectory(prefix="mlops-enc-") as tmp:
            enc = Path(tmp) / "object.enc"
            with open(path, "rb", buffering=0) as fin, open(enc, "wb") as fout:
                encrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
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
                head = fh.read(len(MAGIC) + 1)
            if not is_encrypted(head):
                self._plaintext_ok(key)
                with open(src, "rb") as fin, atomic_file(path) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                return path
            with open(src, "rb") as fin, atomic_file(path) as fout:
                decrypt_stream(fin, fout, self.keyring, aad=self._aad(key), name=name)
        return path
