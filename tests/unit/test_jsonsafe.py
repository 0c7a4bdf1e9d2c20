"""The one JSON coercion used by audit records, promotion decisions and monitoring summaries."""

from __future__ import annotations

import datetime as dt
import enum
import json

import numpy as np

from mlops_bundle.audit import canonical_json
from mlops_bundle.jsonsafe import json_safe


class _State(enum.Enum):
    OK = "ok"


def test_json_safe_coerces_every_kind_the_bundle_records():
    value = {
        1: np.float64(0.25),
        "nan": float("nan"),
        "inf": np.float32("inf"),
        "i": np.int64(7),
        "b": np.bool_(True),
        "when": dt.datetime(2026, 1, 5, 6, 0, tzinfo=dt.UTC),
        "day": dt.date(2026, 1, 5),
        "state": _State.OK,
        "tags": {"b", "a"},
        "pair": (1, "x"),
        "other": object.__new__(type("Thing", (), {"__str__": lambda self: "thing"})),
    }
    out = json_safe(value)
    assert out == {
        "1": 0.25,
        "nan": None,
        "inf": None,
        "i": 7,
        "b": True,
        "when": "2026-01-05T06:00:00+00:00",
        "day": "2026-01-05",
        "state": "ok",
        "tags": ["a", "b"],
        "pair": [1, "x"],
        "other": "thing",
    }
    json.dumps(out, allow_nan=False)  # plain JSON


def test_canonical_json_is_stable_for_the_audit_hash():
    # the audit chain hashes this text: a change here would break verification of existing logs
    assert canonical_json({"b": {2, 1}, "a": 1.5, "c": None}) == '{"a":1.5,"b":[1,2],"c":null}'
