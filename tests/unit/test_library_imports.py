"""The library never imports Airflow: every module of include/mlops_bundle, found on disk (subpackages too,
so a new module is covered without editing this file), is imported alone in a fresh interpreter, which
then must hold no ``airflow`` module. The interpreters run in parallel, one per CPU.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import REPO

PACKAGE = "mlops_bundle"
PACKAGE_DIR = REPO / "include" / PACKAGE
PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
leaked = sorted(m for m in sys.modules if m == "airflow" or m.startswith("airflow."))
if leaked:
    sys.exit("imports Airflow: " + ", ".join(leaked[:10]))
"""


def library_modules() -> list[str]:
    """Every module and package below include/mlops_bundle, by dotted name, without importing any.

    ``pkgutil.iter_modules`` per folder rather than ``walk_packages``: the latter imports each package to
    find its children and skips folders without ``__init__.py`` (namespace packages, like mlops_bundle).
    """
    names = []
    for folder in sorted([PACKAGE_DIR, *(p for p in PACKAGE_DIR.rglob("*") if p.is_dir())]):
        if folder.name == "__pycache__" or not any(folder.glob("*.py")):
            continue
        prefix = ".".join([PACKAGE, *folder.relative_to(PACKAGE_DIR).parts]) + "."
        names += [info.name for info in pkgutil.iter_modules([str(folder)], prefix)]
    return sorted(set(names))


MODULES = library_modules()


def _import_alone(module: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(
        [sys.executable, "-c", PROBE, module], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def imports() -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return dict(zip(MODULES, pool.map(_import_alone, MODULES), strict=True))


def test_every_library_module_is_found():
    on_disk = {p.stem for p in PACKAGE_DIR.glob("*.py")}
    assert {m.split(".")[1] for m in MODULES} >= on_disk
    assert f"{PACKAGE}.config" in MODULES and f"{PACKAGE}.training" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_library_module_imports_without_airflow(imports, module):
    proc = imports[module]
    assert proc.returncode == 0, f"{module}: {(proc.stderr or proc.stdout).strip()[-3000:]}"
