"""Shared by the browser tests: where Debian's Chromium is, the flags it needs, where screenshots go.

The tests drive the system's ``chromium`` (Debian package, installed by ``make browser``), never a
browser downloaded by Playwright. Tests that use it carry the ``browser`` marker. Without it a test is
skipped, except in CI (env ``CI`` set), where it fails: the CI job installs it first.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests import services

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS_ENV = "MLOPS_TEST_ARTIFACTS"

# Flags for headless Chromium in a container, usually as root: the setuid/namespace sandbox is not
# available there (Chromium refuses to start as root with it), /dev/shm is often tiny, there is no GPU.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str:
    """The Chromium executable; skips the test without one (fails instead when ``CI`` is set)."""
    services.assert_services_allowed("a browser (chromium)")
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    services.unavailable("chromium not installed (Debian: apt-get install chromium, or `make browser`)")


def artifacts_dir(*parts: str) -> Path:
    """``test-artifacts/<parts>`` under the repo root (git-ignored), or under ``$MLOPS_TEST_ARTIFACTS``;
    created if missing."""
    root = Path(os.environ.get(ARTIFACTS_ENV) or REPO / "test-artifacts")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
