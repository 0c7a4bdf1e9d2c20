"""The real Airflow api-server app (with the bundle's plugin mounted by Airflow) in a TestClient."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest


@contextlib.contextmanager
def api_server_client(name: str) -> Iterator[Any]:
    """A TestClient of a freshly built api-server app; ``name`` makes its JWT secret its own (every
    api-server needs one; the stack shares one)."""
    from airflow.api_fastapi.app import create_app, purge_cached_app
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW__API_AUTH__JWT_SECRET", f"mlops-{name}-test-secret-" + "x" * 32)
        app = create_app()
        with TestClient(app) as client:
            yield client
        purge_cached_app()
