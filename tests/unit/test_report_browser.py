"""The written drift report renders in a real browser: headless Chromium shows the drift table.

Evidently's HTML is a JavaScript app with the data embedded; without JS nothing of the table exists in
the DOM. So this test loads report.html in Chromium (``--dump-dom`` after a virtual-time budget that
lets the app render), reads the *rendered* text and checks what a person would see: the "Dataset Drift"
verdict, the "Data Drift Summary" table with its column headers, and one row per drifted column marked
"Detected". A screenshot lands in ``test-artifacts/`` (git-ignored) for humans.

Needs Debian's ``chromium`` (``apt-get install chromium``); skipped without it, unless ``CI`` is set.
"""

from __future__ import annotations

import html as html_lib
import re
import struct
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from mlops_bundle.config import load_config
from mlops_bundle.monitoring import build_report, score_batch, write_report
from mlops_bundle.sample import generate_batch
from mlops_bundle.storage import LocalStorage
from tests.browser import chromium_path
from tests.models import fit_logreg

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",  # tests run as root in containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",  # let the report's JS render before dumping / shooting
    ]
    proc = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


def _visible_text(dom: str) -> list[str]:
    """Text nodes of the DOM outside <script>/<style>, one stripped string per node."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S | re.I)
    text = html_lib.unescape(re.sub(r"<[^>]+>", "\n", dom))
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def written_report(tmp_path_factory):
    binary = chromium_path()  # skip before paying for Evidently
    cfg = load_config()
    train = pd.concat([generate_batch(f"2026-01-0{d}", 3_000) for d in range(1, 4)], ignore_index=True)
    model = fit_logreg(train)
    reference = score_batch(model, train, cfg)
    current = score_batch(model, generate_batch("2026-02-01", 3_000, drift=1.0, seed=11), cfg)
    result = build_report(reference, current, cfg)
    assert result.dataset_drift
    store = LocalStorage(tmp_path_factory.mktemp("lake"))
    write_report(store, "reports/churn/2026-02-01", result)
    path = store.local_path("reports/churn/2026-02-01/report.html")
    assert path is not None and path.is_file()
    return binary, path, result


def test_rendered_dom_shows_the_drift_table(written_report, tmp_path):
    binary, path, result = written_report
    raw = path.read_text(encoding="utf-8")
    # Before JS runs the table does not exist: the check below really tests the rendered page.
    assert "Data Drift Summary" not in _visible_text(raw)

    dom = _run_chromium(binary, tmp_path / "profile", "--dump-dom", path.as_uri()).stdout
    lines = _visible_text(dom)
    text = "\n".join(lines)
    assert "Dataset Drift" in lines
    assert "Dataset Drift is detected. Dataset drift detection threshold is 0.3" in lines
    assert "Data Drift Summary" in lines
    n_drifted, n_cols = len(result.drifted_columns), len(result.column_scores)
    assert f"({n_drifted} out of {n_cols})" in text and "Drift is detected for" in text
    for header in (
        "Column",
        "Type",
        "Reference Distribution",
        "Current Distribution",
        "Data Drift",
        "Stat Test",
        "Drift Score",
    ):
        assert header in lines, header
    # one table row per column: name, type, "Detected"/"Not Detected", method, score
    for col, score in result.column_scores.items():
        i = lines.index(col)
        status = "Detected" if score["drifted"] else "Not Detected"
        assert lines[i + 2] == status, (col, lines[i : i + 5])
        method = (
            "Wasserstein distance (normed)" if score["method"] == "wasserstein" else "Jensen-Shannon distance"
        )
        assert lines[i + 3] == method
        assert float(lines[i + 4]) == pytest.approx(score["score"], abs=1e-5)
    assert {"monthly_charges", "region"} <= set(result.drifted_columns)
    assert "Drift in column 'prediction_proba'" in lines


def test_screenshot_is_a_real_picture(written_report, tmp_path):
    binary, path, _ = written_report
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "monitoring-report.png"
    shot.unlink(missing_ok=True)
    _run_chromium(
        binary, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,2000", path.as_uri()
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    assert (width, height) == (1400, 2000)
    # a blank page compresses to a few KB; the table's histograms and text make it much larger
    assert len(data) > 50_000, f"screenshot is only {len(data)} bytes: the report probably did not render"
