"""Drift thresholds calibrated on the reference itself, for the current sample size.

A fixed threshold cannot be honest at every sample size: the distance between two samples of one
distribution is never zero, and its noise grows as the samples shrink (roughly like sqrt(1/n + 1/m)).
A threshold tuned for 1,000 rows per side flags about half the columns of a same-distribution split at
100 rows. So each column's threshold is the larger of

- its floor: the pinned method's threshold (or ``monitoring.column_thresholds``), the smallest move that
  counts as drift however many rows there are; and
- a high quantile of the column's distance over same-distribution resamples of the reference at the
  current sample size: the reference is split at random into a pseudo-current of the batch's size and a
  pseudo-reference of the rest, ``TRIALS`` times, and each distance is computed with the code the
  verdict uses (:func:`column_distance`, checked against Evidently's own numbers in the tests).

The quantile is then checked against the dataset-level verdict on held-out resamples: the share of columns
flagged must reach ``drift_share_threshold`` in at most ``false_alarm_rate`` of them (correlated columns
drift together under noise too); if it does more often, the next higher quantile is tried.

When the batch has more rows than half the reference, the pseudo-current cannot have the batch's size; the
quantile from equal halves is then scaled by sqrt((1/m + 1/n) / (1/h + 1/h)) (m batch rows, n reference
rows, h half), the sampling-noise ratio of both distances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# resamples per calibration: the first half sets the thresholds, the second checks the verdict
TRIALS = 200
# per-column quantiles tried in order until the held-out dataset-level false-alarm rate is low enough
QUANTILES = (0.99, 0.995, 0.999, 1.0)
# rows of the reference a calibration resamples at most (the noise needs its shape, not its volume)
MAX_CALIBRATION_ROWS = 20_000


@dataclass(frozen=True)
class Calibration:
    """Per-column thresholds for one reference at one current sample size, and how they were found."""

    current_rows: int
    reference_rows: int
    thresholds: dict[str, float]
    floors: dict[str, float]
    # column -> "numerical" / "categorical"
    kinds: dict[str, str]
    quantile: float
    trials: int
    # the dataset-level rule it was calibrated for: drift when this share of columns is flagged ...
    share_threshold: float
    # ... in at most this share of same-distribution batches
    target_rate: float
    # share of held-out same-distribution resamples whose verdict would have been "drift"
    false_alarm_rate: float
    seed: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------ distances


def encode(ref: pd.Series, cur: pd.Series | None, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Columns as arrays the distances work on: floats (NaN = missing) or category codes (-1 = missing).

    Categories are coded over both sides together, so a category seen on one side only still counts.
    """
    import numpy as np
    import pandas as pd

    if kind == "numerical":

        def num(s: pd.Series) -> np.ndarray:
            a = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            a[~np.isfinite(a)] = np.nan
            return a

        return num(ref), None if cur is None else num(cur)
    both = ref if cur is None else pd.concat([ref, cur], ignore_index=True)
    codes, _ = pd.factorize(both.astype(object), use_na_sentinel=True)
    codes = codes.astype(np.int64)
    return codes[: len(ref)], None if cur is None else codes[len(ref) :]


def array_distance(kind: str, ref: np.ndarray, cur: np.ndarray, n_categories: int = 0) -> float:
    """:func:`column_distance` on encoded arrays (see :func:`encode`)."""
    import numpy as np

    if kind == "numerical":
        from scipy import stats

        r = ref[~np.isnan(ref)]
        c = cur[~np.isnan(cur)]
        if not len(r) or not len(c):
            return math.nan
        return float(stats.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001))
    from scipy.spatial import distance

    r = ref[ref >= 0]
    c = cur[cur >= 0]
    if not len(r) or not len(c):
        return math.nan
    k = max(n_categories, int(r.max()) + 1, int(c.max()) + 1)
    p = np.bincount(r, minlength=k) / len(r)
    q = np.bincount(c, minlength=k) / len(c)
    seen = (p > 0) | (q > 0)
    return float(distance.jensenshannon(p[seen], q[seen]))


def column_distance(kind: str, ref: pd.Series, cur: pd.Series) -> float:
    """The drift distance of one column, computed as Evidently computes the bundle's pinned methods.

    numerical: Wasserstein-1 distance divided by the reference's standard deviation (at least 0.001);
    categorical: Jensen-Shannon distance (natural log) of the category shares. Missing values and
    infinities are left out first, as Evidently does. NaN when a side has no values.
    """
    r, c = encode(ref, cur, kind)
    return array_distance(kind, r, c)


def null_distances(kind: str, values: np.ndarray, masks: np.ndarray, n_categories: int) -> np.ndarray:
    """:func:`array_distance` (pseudo-current = ``values[mask]`` vs the rest) for every row of ``masks``.

    Vectorised over the trials: the numeric distance is the area between the two empirical CDFs over the
    sorted values (what ``scipy.stats.wasserstein_distance`` computes), the categorical one is built from
    per-trial category counts. NaN where a side has no values.
    """
    import numpy as np

    if kind == "numerical":
        keep = ~np.isnan(values)
        v, mk = values[keep], masks[:, keep]
        order = np.argsort(v, kind="stable")
        v, mk = v[order], mk[:, order]
        n_cur = mk.sum(axis=1)
        n_ref = len(v) - n_cur
        with np.errstate(invalid="ignore", divide="ignore"):
            cdf_cur = np.cumsum(mk, axis=1)[:, :-1] / n_cur[:, None]
            cdf_ref = np.cumsum(~mk, axis=1)[:, :-1] / n_ref[:, None]
            w1 = np.abs(cdf_cur - cdf_ref) @ np.diff(v)
            ref_sum = (~mk) @ v
            ref_sq = (~mk) @ (v * v)
            var = np.maximum(ref_sq / n_ref - (ref_sum / n_ref) ** 2, 0.0)
            out = w1 / np.maximum(np.sqrt(var), 0.001)
        out[(n_cur == 0) | (n_ref == 0)] = np.nan
        return out
    keep = values >= 0
    v, mk = values[keep], masks[:, keep]
    k = max(n_categories, int(v.max()) + 1 if len(v) else 0)
    onehot = np.zeros((len(v), k))
    onehot[np.arange(len(v)), v] = 1.0
    cur = mk.astype(float) @ onehot
    ref = (~mk).astype(float) @ onehot
    with np.errstate(invalid="ignore", divide="ignore"):
        p = ref / ref.sum(axis=1, keepdims=True)
        q = cur / cur.sum(axis=1, keepdims=True)
        mid = (p + q) / 2
        kl_p = np.where(p > 0, p * np.log(p / mid), 0.0).sum(axis=1)
        kl_q = np.where(q > 0, q * np.log(q / mid), 0.0).sum(axis=1)
        out = np.sqrt(np.maximum((kl_p + kl_q) / 2, 0.0))
    out[(cur.sum(axis=1) == 0) | (ref.sum(axis=1) == 0)] = np.nan
    return out


# ---------------------------------------------------------------------------------------- calibration


def calibrate(
    reference: pd.DataFrame,
    kinds: Mapping[str, str],
    floors: Mapping[str, float],
    current_rows: int,
    *,
    share_threshold: float,
    false_alarm_rate: float = 0.01,
    trials: int = TRIALS,
    seed: int = 0,
) -> Calibration:
    """Thresholds for the columns of ``kinds`` at ``current_rows`` rows per batch (see module doc)."""
    import numpy as np

    if current_rows < 1:
        raise ValueError("current_rows must be at least 1")
    rng = np.random.default_rng(seed)
    ref = reference
    if len(ref) > MAX_CALIBRATION_ROWS:
        ref = ref.iloc[rng.choice(len(ref), MAX_CALIBRATION_ROWS, replace=False)]
    n = len(ref)
    if n < 4:
        raise ValueError(f"a reference of {n} rows is too small to calibrate drift thresholds on")
    cols = list(kinds)
    encoded = {c: encode(ref[c], None, kinds[c])[0] for c in cols}
    n_cats = {
        c: int(encoded[c].max()) + 1 if kinds[c] != "numerical" and len(encoded[c]) else 0 for c in cols
    }
    half = n // 2
    m = min(current_rows, half)
    # noise of the real comparison (current_rows vs the whole reference) vs the simulated one
    scale = math.sqrt((1 / current_rows + 1 / len(reference)) / (1 / m + 1 / (n - m)))
    # one boolean row per trial: True = the row is in the pseudo-current; the same split for every column,
    # so columns that move together under noise do so here too
    masks = np.zeros((trials, n), dtype=bool)
    for t in range(trials):
        masks[t, rng.permutation(n)[:m]] = True
    dist = (
        np.column_stack([null_distances(kinds[c], encoded[c], masks, n_cats[c]) for c in cols]) * scale
        if cols
        else np.empty((trials, 0))
    )
    dist = np.nan_to_num(dist, nan=0.0)
    fit, check = dist[: trials // 2], dist[trials // 2 :]
    floor = np.array([float(floors[c]) for c in cols])
    thresholds = floor
    rate = 1.0
    quantile = QUANTILES[-1]
    for quantile in QUANTILES:
        thresholds = np.maximum(floor, np.quantile(fit, quantile, axis=0))
        rate = float(np.mean((check >= thresholds).mean(axis=1) >= share_threshold)) if cols else 0.0
        if rate <= false_alarm_rate:
            break
    return Calibration(
        current_rows=int(current_rows),
        reference_rows=int(len(reference)),
        thresholds={c: round(float(v), 6) for c, v in zip(cols, thresholds, strict=True)},
        floors={c: float(floors[c]) for c in cols},
        kinds={c: str(kinds[c]) for c in cols},
        quantile=float(quantile),
        trials=int(trials),
        share_threshold=float(share_threshold),
        target_rate=float(false_alarm_rate),
        false_alarm_rate=rate,
        seed=int(seed),
    )


class CalibrationCache:
    """Calibrations of one reference (one champion's), as JSON objects under ``prefix`` in the store.

    A calibration costs a fraction of a second to a few seconds; the monitor runs daily with similar batch
    sizes, so each (columns, size bucket) is computed once per champion. An entry is used only when the
    parameters it was computed with (floors, share threshold, false-alarm rate, trials, reference rows)
    are today's; anything else is recomputed and replaced. Whoever can write the monitoring prefix can raise
    thresholds here, as they can rewrite the retrain history beside it.
    """

    def __init__(self, store: Any, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.strip("/")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}.json"

    def get(self, name: str, expected: Mapping[str, Any]) -> Calibration | None:
        import json

        key = self.key(name)
        if not self.store.exists(key):
            return None
        try:
            data = json.loads(self.store.read_bytes(key).decode("utf-8"))
            cal = Calibration(**data)
        except (ValueError, TypeError):
            return None  # unreadable: recomputed and rewritten
        if _params(cal) != dict(expected) or not _plausible(cal):
            return None
        return cal

    def put(self, name: str, cal: Calibration) -> None:
        import json

        self.store.write_bytes(self.key(name), json.dumps(cal.to_json(), indent=1, sort_keys=True).encode())


def cached_calibration(
    cache: CalibrationCache | None,
    name: str,
    reference: pd.DataFrame,
    kinds: Mapping[str, str],
    floors: Mapping[str, float],
    current_rows: int,
    *,
    share_threshold: float,
    false_alarm_rate: float,
) -> Calibration:
    """:func:`calibrate` at ``size_bucket(current_rows)``, through ``cache`` when one is given."""
    rows = size_bucket(current_rows)
    expected = {
        "current_rows": rows,
        "reference_rows": len(reference),
        "floors": {c: float(floors[c]) for c in kinds},
        "share_threshold": float(share_threshold),
        "target_rate": float(false_alarm_rate),
        "trials": TRIALS,
    }
    entry = f"{name}-{rows}"
    if cache is not None and (hit := cache.get(entry, expected)) is not None:
        return hit
    cal = calibrate(
        reference,
        kinds,
        floors,
        rows,
        share_threshold=share_threshold,
        false_alarm_rate=false_alarm_rate,
    )
    if cache is not None:
        cache.put(entry, cal)
    return cal


# the largest Jensen-Shannon distance (natural log): a categorical threshold above it never fires
_JS_MAX = math.sqrt(math.log(2))


def _plausible(cal: Calibration) -> bool:
    """A cached entry is used only with thresholds a calibration could have produced: finite, at least
    the floor, and a categorical one below the distance's maximum (review: a planted NaN or 1e9 would
    otherwise hide any drift). What stays possible for whoever can write the cache: a finite, too high
    numeric threshold; the cache lives under the work prefix, encrypted (authenticated) when encryption
    is on."""
    for col, value in cal.thresholds.items():
        floor = cal.floors.get(col)
        if floor is None or not math.isfinite(value) or value < floor:
            return False
        if cal.kinds.get(col) != "numerical" and value >= _JS_MAX:
            return False
    return set(cal.thresholds) == set(cal.floors) == set(cal.kinds)


def _params(cal: Calibration) -> dict[str, Any]:
    return {
        "current_rows": cal.current_rows,
        "reference_rows": cal.reference_rows,
        "floors": cal.floors,
        "share_threshold": cal.share_threshold,
        "target_rate": cal.target_rate,
        "trials": cal.trials,
    }


def size_bucket(rows: int) -> int:
    """The batch size a cached calibration is computed at: rows rounded down to a power of 2**(1/4).

    Noise changes with sqrt(rows), so neighbouring sizes share one calibration (within ~9% in rows,
    ~4.5% in noise); rounding down calibrates for the smaller (noisier) size, which errs toward fewer
    false alarms.
    """
    if rows < 1:
        return 0
    step = 2**0.25
    return max(1, int(step ** math.floor(math.log(rows, step) + 1e-9)))


def verdict_share(distances: Mapping[str, float], thresholds: Mapping[str, float]) -> tuple[list[str], float]:
    """(drifted columns, share of columns drifted) with ``distance >= threshold``, Evidently's rule."""
    cols = [c for c in distances if not math.isnan(distances[c])]
    drifted = [c for c in cols if distances[c] >= thresholds[c]]
    return drifted, (len(drifted) / len(cols) if cols else 0.0)


__all__: Sequence[str] = (
    "Calibration",
    "CalibrationCache",
    "cached_calibration",
    "calibrate",
    "column_distance",
    "size_bucket",
    "verdict_share",
)
