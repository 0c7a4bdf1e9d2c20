"""The quick tier's guard: with ``MLOPS_TEST_NO_SERVICES=1`` (``make test-quick`` sets it) nothing may reach
PostgreSQL, Redis or RabbitMQ. Connections to their ports and every ``psycopg2.connect`` are refused with
a ``ServiceReached`` error naming the service, and recorded, so a test that swallows the error still fails
(tests/conftest.py checks ``violations`` after each test).

tests/conftest.py installs it in the pytest process and puts this folder first on ``PYTHONPATH``, so
Python subprocesses of the tests import it as their ``sitecustomize`` and are guarded too.
"""

from __future__ import annotations

import os
import socket
import sys

ENV = "MLOPS_TEST_NO_SERVICES"
GUARDED_PORTS = {5432: "PostgreSQL", 6379: "Redis", 5672: "RabbitMQ"}
violations: list[str] = []


class ServiceReached(ConnectionRefusedError):
    """A test of the quick tier tried to reach a service."""


def _refuse(what: str):
    message = (
        f"{ENV} is set: {what} was reached by a run that must need Python only; mark the test for the "
        f"service it needs (pytest markers: postgres, redis, moto, mlflow_server, browser, airflow_procs, "
        f"stack)"
    )
    violations.append(message)
    print(message, file=sys.stderr, flush=True)
    raise ServiceReached(message)


def _check(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and len(address) >= 2:
        service = GUARDED_PORTS.get(address[1])
        if service:
            _refuse(f"{service} ({address[0]}:{address[1]})")


def install() -> None:
    """Idempotent: patch socket connects and psycopg2.connect (libpq does not use Python sockets)."""
    if getattr(socket.socket.connect, "_no_services_guard", False):
        return
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        _check(self, address)
        return real_connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return real_connect_ex(self, address)

    connect._no_services_guard = True
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    try:
        import psycopg2
    except ImportError:
        return

    def refused_connect(*args, **kwargs):
        _refuse("PostgreSQL (psycopg2.connect)")

    psycopg2.connect = refused_connect


if os.environ.get(ENV):
    install()
