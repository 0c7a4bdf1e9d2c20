"""Where key-encryption keys (KEKs) come from: a local Tink AEAD keyset or AWS KMS.

The keyring's current key wraps the data key of every new object; every key it still holds unwraps. The
key id written in an object's header (``local:<Tink key id>`` or ``kms:<key ARN>``) names the KEK that
wrapped its data key, so rotating the KEK never strands old objects. Key material never appears in
errors, reprs or return values.
"""

from __future__ import annotations

import io
from functools import cache
from typing import Any, Protocol

import tink
from tink import aead, secret_key_access, streaming_aead
from tink.proto import tink_pb2


class CryptoError(RuntimeError):
    """Base class of the errors of ``mlops_bundle.crypto``; messages never contain key material."""


class KeyringError(CryptoError):
    """A keyring cannot be built or used (bad keyset, unreachable KMS, unknown key id)."""


@cache
def register_tink() -> None:
    """Register Tink's AEAD and streaming AEAD primitives (once per process)."""
    aead.register()
    streaming_aead.register()


class Keyring(Protocol):
    """Where key-encryption keys come from: the current key encrypts, every held key decrypts."""

    @property
    def current_key_id(self) -> str: ...

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        """(key id to write in the header, the AEAD that wraps new data keys)."""
        ...

    def decryption_aead(self, key_id: str) -> aead.Aead:
        """The AEAD that unwraps data keys wrapped under `key_id`; KeyringError if it is not held."""
        ...


def _parse_keyset(keyset_json: str) -> tink.KeysetHandle:
    register_tink()
    if not isinstance(keyset_json, str) or not keyset_json.strip():
        raise KeyringError("the KEK keyset is empty: put a Tink JSON keyset in the connection's password")
    try:
        return tink.json_proto_keyset_format.parse(keyset_json, secret_key_access.TOKEN)
    except Exception as exc:  # the original message may quote the keyset: never propagate it
        raise KeyringError(
            f"the KEK keyset is not a valid Tink JSON keyset ({type(exc).__name__}); "
            "generate one with `python -m mlops_bundle.crypto new-keyset`"
        ) from None


class LocalKeyring:
    """KEKs from a Tink AEAD keyset in JSON (AES256_GCM keys): the primary encrypts, all enabled keys decrypt.

    Key ids in headers are ``local:<Tink key id>``. Removing a key from the keyset makes the objects it
    wrapped undecryptable (they fail naming the key id), which is how a compromised key is retired.
    """

    def __init__(self, keyset_json: str):
        handle = _parse_keyset(keyset_json)
        try:
            self._aead = handle.primitive(aead.Aead)
        except tink.TinkError:
            raise KeyringError(
                "the KEK keyset is not an AEAD keyset: generate one with "
                "`python -m mlops_bundle.crypto new-keyset`"
            ) from None
        info = handle.keyset_info()
        enabled = [k.key_id for k in info.key_info if k.status == tink_pb2.ENABLED]
        self._primary = info.primary_key_id
        self._key_ids = {f"local:{k}" for k in enabled}

    @property
    def current_key_id(self) -> str:
        return f"local:{self._primary}"

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._key_ids)

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        return self.current_key_id, self._aead

    def decryption_aead(self, key_id: str) -> aead.Aead:
        if key_id not in self._key_ids:
            raise KeyringError(
                f"unknown key id {key_id!r}: the local keyset holds {self.key_ids} "
                "(was the key removed, or was this object encrypted with another keyset or with KMS?)"
            )
        return self._aead

    def __repr__(self) -> str:
        return f"LocalKeyring(current={self.current_key_id!r}, keys={self.key_ids!r})"


class KmsKeyring:
    """KEKs in AWS KMS through a ready boto3 KMS client (the amazon provider's ``AwsBaseHook`` builds it).

    ``current_key_id`` may be a key id, key ARN, alias name (``alias/x``) or alias ARN; it is resolved once
    with ``DescribeKey`` to the key ARN written in headers, so repointing an alias later never strands
    objects. Unwrapping is allowlisted: only the current key's ARN and the key ARNs in
    ``allowed_key_ids`` (e.g. the keys before a rotation) are ever sent to KMS. A header naming any other
    key is refused before any KMS call -- otherwise whoever can write an object could make the bundle
    decrypt data wrapped under a key of their choosing (any key the task's role may use). Tink passes the
    ARN as ``KeyId`` to KMS ``Decrypt``, so KMS itself refuses a wrapped key made under another key.
    Entries must be key ARNs (not aliases: an alias can be repointed, an allowlist must not move).
    """

    def __init__(
        self, kms_client: Any, current_key_id: str = "", *, allowed_key_ids: list[str] | None = None
    ):
        from tink.integration import awskms

        register_tink()
        self._client = kms_client
        self._tink_client = awskms.new_client(boto3_client=kms_client)
        self._requested = current_key_id
        self._current_arn: str | None = None
        self._allowed = set(allowed_key_ids or ())

    def _resolve(self) -> str:
        if self._current_arn is None:
            if not self._requested:
                raise KeyringError(
                    "no KMS key configured for encryption: set encryption.kms_key_id "
                    "(key id, ARN or alias) in the bundle config"
                )
            try:
                meta = self._client.describe_key(KeyId=self._requested)["KeyMetadata"]
            except Exception as exc:
                raise KeyringError(f"KMS key {self._requested!r} cannot be described: {exc}") from exc
            if meta.get("KeyState", "Enabled") != "Enabled":
                raise KeyringError(f"KMS key {meta['Arn']} is {meta['KeyState']}: it cannot encrypt")
            self._current_arn = meta["Arn"]
        return self._current_arn

    @property
    def current_key_id(self) -> str:
        return f"kms:{self._resolve()}"

    @property
    def allowed_arns(self) -> list[str]:
        """The key ARNs this keyring will unwrap with (resolves the current key if it is configured)."""
        current = {self._resolve()} if self._requested else set()
        return sorted(self._allowed | current)

    def _aead_for(self, arn: str) -> aead.Aead:
        try:
            return self._tink_client.get_aead("aws-kms://" + arn)
        except tink.TinkError as exc:
            raise KeyringError(f"KMS key {arn!r} is not a usable AWS KMS key ARN: {exc}") from None

    def encryption_aead(self) -> tuple[str, aead.Aead]:
        arn = self._resolve()
        return f"kms:{arn}", self._aead_for(arn)

    def decryption_aead(self, key_id: str) -> aead.Aead:
        if not key_id.startswith("kms:"):
            raise KeyringError(f"unknown key id {key_id!r}: this keyring only holds AWS KMS keys (kms:<arn>)")
        arn = key_id[4:]
        if arn not in self._allowed and arn not in self.allowed_arns:
            raise KeyringError(
                f"unknown key id {key_id!r}: the header names KMS key {arn!r}, which is neither "
                f"encryption.kms_key_id ({self._requested or 'unset'}) nor in encryption.kms_key_ids "
                f"(allowed: {self.allowed_arns}); nothing was sent to KMS. If it is one of your keys (e.g. "
                "the key before a rotation), add its ARN to encryption.kms_key_ids; otherwise the object "
                "was planted or re-wrapped under a foreign key"
            )
        return self._aead_for(arn)

    def __repr__(self) -> str:
        return f"KmsKeyring(current={self._current_arn or self._requested!r})"


def generate_local_keyset() -> str:
    """A new Tink AEAD keyset (one AES256_GCM key) as JSON. It is SECRET: store it in a connection."""
    register_tink()
    handle = tink.new_keyset_handle(aead.aead_key_templates.AES256_GCM)
    return tink.json_proto_keyset_format.serialize(handle, secret_key_access.TOKEN)


def rotate_local_keyset(keyset_json: str) -> str:
    """The keyset plus a fresh AES256_GCM key that becomes primary; old keys stay for decryption."""
    LocalKeyring(keyset_json)  # validates, with a clean error
    keyset = tink.JsonKeysetReader(keyset_json).read()
    used = {k.key_id for k in keyset.key}
    while True:
        fresh = tink.JsonKeysetReader(generate_local_keyset()).read()
        if fresh.primary_key_id not in used:
            break
    keyset.key.append(fresh.key[0])
    keyset.primary_key_id = fresh.primary_key_id
    out = io.StringIO()
    tink.JsonKeysetWriter(out).write(keyset)
    return out.getvalue()
