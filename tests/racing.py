"""The switches of the race tests (tests/unit/test_promotion.py, tests/unit/test_audit.py), one home.

Each race test forces its racers to interleave (barriers and staggered writes injected in the racer
processes only), so a missing lock loses the race every time. To show that on demand:

    MLOPS_TEST_RACE_RUNS=10 MLOPS_TEST_RACE_NO_LOCK=1 .venv/bin/python -m pytest -q -k race tests/unit

* ``MLOPS_TEST_RACE_NO_LOCK=1``: the racers run with their lock replaced by a no-op: every run must fail.
* ``MLOPS_TEST_RACE_RUNS=N``: every test that takes the ``race_run`` fixture runs N times.
Both are off by default; the ``race_run`` fixture and its parametrization live in tests/conftest.py.
"""

from __future__ import annotations

import os

RACE_RUNS = int(os.environ.get("MLOPS_TEST_RACE_RUNS", "1"))
RACE_NO_LOCK = os.environ.get("MLOPS_TEST_RACE_NO_LOCK", "") not in ("", "0")
