"""Where the tests find the services of the slower tiers, and what a missing one means (one home).

- ``PG_URL`` (env ``MLOPS_TEST_PG``): the PostgreSQL server the ``postgres`` tests create their throwaway
  databases on; the stack tier uses the same server (``STACK_PG_*`` default to its parts, see conftest).
- ``REDIS_URL`` (env ``MLOPS_TEST_REDIS``): the Redis of the stack tier (``STACK_REDIS_*`` likewise).
- ``unavailable(reason)``: a missing service, browser or tool skips the test, except under CI (env ``CI``
  set), where it fails: CI has every service, so a skip there would hide a tier that did not run.
- ``aws_client(service, endpoint)``: a boto3 client for the moto server with the test credentials.
- ``NO_SERVICES_ENV`` (``MLOPS_TEST_NO_SERVICES=1``, set by ``make test-quick``): the run must need Python
  only; ``assert_services_allowed`` fails a fixture that would start or reach a service.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

PG_URL = os.environ.get("MLOPS_TEST_PG") or "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = os.environ.get("MLOPS_TEST_REDIS") or "redis://127.0.0.1:6379/0"
NO_SERVICES_ENV = "MLOPS_TEST_NO_SERVICES"
AWS_TEST_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "region_name": "us-east-1",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing service/browser/tool; under CI fail instead (every tier must run there)."""
    if in_ci():
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


def assert_services_allowed(what: str) -> None:
    """Fail at once when the run must need Python only (the test lacks the marker of `what`)."""
    if os.environ.get(NO_SERVICES_ENV):
        pytest.fail(
            f"{what} is needed, but {NO_SERVICES_ENV} is set (the quick tier): mark the test for it",
            pytrace=False,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_client(service: str, endpoint: str):
    """A boto3 client for `service` ("s3", "kms") on the moto server at `endpoint`."""
    import boto3

    return boto3.client(service, endpoint_url=endpoint, **AWS_TEST_CREDENTIALS)


def pg_reachable(url: str = PG_URL) -> str | None:
    """None when PostgreSQL at `url` accepts a connection, else why not."""
    import psycopg2

    try:
        psycopg2.connect(url, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return (
            f"PostgreSQL is not reachable at {url} ({str(exc).strip()}); set MLOPS_TEST_PG to another server"
        )
    return None


@contextlib.contextmanager
def pg_database(prefix: str = "mlops_test", url: str = PG_URL) -> Iterator[str]:
    """A fresh database on the server of `url` (unique name), dropped afterwards; yields its URL."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(url, connect_timeout=10)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.rsplit("/", 1)[0] + "/" + name
        finally:
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def stack_defaults() -> dict[str, str]:
    """``STACK_PG_*`` / ``STACK_REDIS_*`` (read by scripts/stack.py) from PG_URL and REDIS_URL."""
    pg, redis = urlsplit(PG_URL), urlsplit(REDIS_URL)
    return {
        "STACK_PG_HOST": pg.hostname or "127.0.0.1",
        "STACK_PG_PORT": str(pg.port or 5432),
        "STACK_PG_USER": pg.username or "postgres",
        "STACK_REDIS_HOST": redis.hostname or "127.0.0.1",
        "STACK_REDIS_PORT": str(redis.port or 6379),
    }
