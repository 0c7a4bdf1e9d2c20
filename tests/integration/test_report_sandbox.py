"""A drift report built from a hostile batch cannot act with the viewer's Airflow session.

The attack: a batch whose category column holds ``</script><script>PAYLOAD</script>``. Evidently writes
its data into an inline ``<script>`` without escaping ``</script>``, so the value closes Evidently's script
and PAYLOAD runs when someone opens the report, on the api-server's origin, where the browser holds the
Airflow session cookie (``_token``). PAYLOAD tries what such a script would want and writes each outcome
into ``<pre id="pwn">`` of its own document:

* a credentialed ``fetch('/api/v2/dags', {credentials: 'include'})`` and an ``<img>`` GET of ``/api/v2``;
* reading and writing the parent page when the report is framed by a same-origin page (the Airflow UI);
* ``document.cookie`` and ``localStorage`` of the origin.

Setup, all real: a local Airflow (api-server with the bundle's plugin, ``local_airflow``), a real
Evidently report written where the monitor DAG writes it (``reports/<dataset>/<date>/`` of the bundle's
storage), headless Chromium (Debian's, driven by Playwright) holding the session cookie exactly as
Airflow's login sets it (``_token``, httpOnly, SameSite=Lax, path /).

Why the control is honest: both cases go through the same small HTTP proxy on 127.0.0.1 in front of the
api-server, which records every request that reaches it and whether it carried the session cookie (the
api-server keeps no access log). In the *protected* case the proxy passes everything through unchanged
(checked: the report's bytes and headers equal the api-server's own answer). In the *control* case it
removes exactly the headers this bundle adds to ``/mlops`` answers (``report_app.DATA_PAGE_HEADERS`` /
``APP_PAGE_HEADERS``) and nothing else. Everything else is identical: the same report file served by the
same real route, the same origin for the report, the Airflow UI and ``/api/v2``, the same cookie, the same
browser, the same payload. The control must show the payload running *and succeeding* (the DAG list read
with the session, the UI page written, storage used); only then does the protected case's failure mean the
headers stopped it, not that the payload was broken.

The framing page is the Airflow UI itself (``/``, served by the api-server): the same-origin page that
holds the session and that a script would want to drive. The test adds an ``<iframe>`` of the report to
it, as a UI view embedding the report (Airflow 3 plugins can embed pages in the UI) would.

And the headers must not break the feature: an ordinary report, loaded straight from the api-server,
still renders Evidently's drift table, in an opaque origin, without a CSP violation.
"""

from __future__ import annotations

import http.client
import http.server
import json
import threading
import urllib.parse
from dataclasses import dataclass, field

import pandas as pd
import pytest

from tests.browser import CHROMIUM_ARGS, chromium_path
from tests.polling import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DATE = "2026-02-01"
REPORT = f"/mlops/reports/churn/{DATE}/report.html"
CLEAN_DATE = "2026-02-02"  # an ordinary report: the sandbox must not break it
# Written into a data value: only backquotes for strings, because the value reaches the HTML inside a
# JSON string (a '"' or '\' would come out escaped). Runs once (the value appears several times), in a
# closure (Evidently's own scripts, which run later, define globals of the same short names).
PAYLOAD_JS = """
if (!window.__pwn) { window.__pwn = 1; (function () {
  var R = {framed: window !== parent};
  var out = function (k, v) {
    R[k] = String(v).slice(0, 300);
    var e = document.getElementById(`pwn`);
    if (!e) { e = document.createElement(`pre`); e.id = `pwn`; document.documentElement.appendChild(e); }
    e.textContent = JSON.stringify(R);
  };
  out(`ran`, `yes`); out(`origin`, self.origin);
  try { out(`cookie`, `read:` + document.cookie); } catch (e) { out(`cookie`, `blocked:` + e.name); }
  try { localStorage.setItem(`pwn`, `1`); out(`storage`, `read:` + localStorage.getItem(`pwn`)); }
  catch (e) { out(`storage`, `blocked:` + e.name); }
  if (window === parent) { out(`parent`, `none`); }
  else try { var d = parent.document; d.body.setAttribute(`data-pwned`, `by-report`); out(`parent`, `read:` + d.title); }
  catch (e) { out(`parent`, `blocked:` + e.name); }
  fetch(`/api/v2/dags?limit=1&pwn=fetch`, {credentials: `include`})
    .then(function (r) { return r.text().then(function (t) { out(`fetch`, `status:` + r.status + ` ` + t); }); })
    .catch(function (e) { out(`fetch`, `blocked:` + e.name); });
  var i = new Image();
  i.onload = function () { out(`img`, `loaded`); }; i.onerror = function () { out(`img`, `error`); };
  i.src = `/api/v2/dags?pwn=img`;
})(); }
"""
PAYLOAD = "</script><script>" + " ".join(PAYLOAD_JS.split()) + "</script>"
DONE = ("ran", "cookie", "storage", "parent", "fetch", "img")


# ------------------------------------------------------------------------------------------- proxy


@dataclass
class Seen:
    method: str
    path: str
    with_session: bool


@dataclass
class Proxy:
    """A recording HTTP proxy to the api-server; ``strip`` removes the bundle's headers from /mlops answers."""

    upstream: str
    strip: frozenset[str]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def start(self) -> Proxy:
        proxy = self
        up = urllib.parse.urlsplit(self.upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                cookie = self.headers.get("Cookie", "")
                proxy.seen.append(Seen(self.command, self.path, "_token=" in cookie))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = {"host", "connection", "keep-alive", "proxy-connection"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                drop = {"transfer-encoding", "connection", "keep-alive", "content-length"}
                if self.path.startswith("/mlops"):
                    drop |= proxy.strip
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in drop:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api_calls(self, marker: str) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith("/api/v2") and marker in s.path]


def _bundle_header_names() -> frozenset[str]:
    import airflow  # noqa: F401  (puts Airflow's plugins folder, hence mlops_airflow, on sys.path)

    from mlops_airflow.report_app import APP_PAGE_HEADERS, DATA_PAGE_HEADERS

    return frozenset(k.lower() for k in {**DATA_PAGE_HEADERS, **APP_PAGE_HEADERS})


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_path()  # requested first: skips before an Airflow is started for nothing


@pytest.fixture(scope="module")
def hostile_report(chromium, local_airflow):
    """A real Evidently drift report of a batch whose `region` values carry PAYLOAD, in the lake."""
    from mlops_bundle.monitoring import build_report, reports_prefix, score_batch, write_report
    from mlops_bundle.sample import generate_batch
    from mlops_bundle.storage import LocalStorage
    from tests.models import fit_logreg

    cfg = local_airflow.bundle_config()
    train = pd.concat([generate_batch(f"2026-01-0{d}", 800) for d in (1, 2)], ignore_index=True)
    model = fit_logreg(train)
    current = generate_batch(DATE, 800, seed=11)
    current["region"] = current["region"].astype(str)
    current.loc[:200, "region"] = PAYLOAD
    reference = score_batch(model, train, cfg)
    store = LocalStorage(local_airflow.lake)
    write_report(
        store, reports_prefix(cfg, DATE), build_report(reference, score_batch(model, current, cfg), cfg)
    )
    clean = score_batch(model, generate_batch(CLEAN_DATE, 800, drift=1.0, seed=12), cfg)
    write_report(store, reports_prefix(cfg, CLEAN_DATE), build_report(reference, clean, cfg))
    html = store.read_bytes(f"{cfg.storage.reports_prefix}/churn/{DATE}/report.html").decode()
    assert PAYLOAD in html, "Evidently no longer embeds the value unescaped: update the attack"
    return local_airflow


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture(params=["protected", "control"])
def case(request, hostile_report, browser):
    """(name, proxy, browser context holding the admin's session cookie for the proxy's origin)."""
    af = hostile_report
    strip = _bundle_header_names() if request.param == "control" else frozenset()
    proxy = Proxy(af.url, strip).start()
    context = browser.new_context()
    context.add_cookies(
        [{"name": "_token", "value": af.token, "url": proxy.url, "httpOnly": True, "sameSite": "Lax"}]
    )
    yield request.param, proxy, context
    context.close()
    proxy.stop()


def _outcomes(frame) -> dict:
    """The payload's record, once every attempt has reported (read over the DevTools protocol, which the
    page's CSP does not govern; Playwright's wait_for_function would need the page to allow eval)."""
    return wait_for(
        lambda: json.loads(frame.evaluate("() => document.getElementById('pwn')?.textContent || '{}'")),
        lambda got: all(k in got for k in DONE),
        timeout=90,
        interval=0.5,
        describe=lambda got: f"the payload did not finish: {got}",
    )


# ------------------------------------------------------------------------------------------- tests


def test_the_proxy_is_transparent_unless_told_to_strip(hostile_report):
    """The protected case sees exactly the api-server's answer; the control only lacks our headers."""
    af = hostile_report
    names = _bundle_header_names()

    def get(base: str) -> tuple[bytes, dict]:
        u = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
        conn.request("GET", REPORT, headers={"Cookie": f"_token={af.token}"})
        resp = conn.getresponse()
        body, headers = resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        conn.close()
        assert resp.status == 200, body[:300]
        return body, {k: v for k, v in headers.items() if k not in {"date", "content-length"}}

    direct = get(af.url)
    assert names <= set(direct[1]) and direct[1]["content-security-policy"].startswith(
        "sandbox allow-scripts"
    )
    for strip in (frozenset(), names):
        proxy = Proxy(af.url, strip).start()
        try:
            body, headers = get(proxy.url)
        finally:
            proxy.stop()
        assert body == direct[0]
        assert headers == {k: v for k, v in direct[1].items() if k not in strip}


def test_a_report_opened_in_its_own_tab(case):
    name, proxy, context = case
    page = context.new_page()
    page.goto(proxy.url + REPORT, wait_until="load")
    got = _outcomes(page.main_frame)
    fetches, images = proxy.api_calls("pwn=fetch"), proxy.api_calls("pwn=img")
    assert got["ran"] == "yes" and got["framed"] is False and got["parent"] == "none"
    if name == "control":
        # without the headers the value's script acts as the signed-in user
        assert got["origin"] == proxy.url
        assert got["fetch"].startswith("status:200") and '"dag_id"' in got["fetch"], got
        assert fetches and all(s.with_session for s in fetches), proxy.seen
        assert images and all(s.with_session for s in images), proxy.seen
        assert got["storage"] == "read:1"
        assert got["cookie"] == "read:"  # _token is httpOnly: even the control cannot read it
    else:
        # it still runs (Evidently needs scripts), but in an opaque origin that loads nothing
        assert got["origin"] == "null"
        assert got["fetch"] == "blocked:TypeError" and got["img"] == "error", got
        assert fetches == [] and images == [], "a request of the payload reached the api-server"
        assert got["storage"] == "blocked:SecurityError" and got["cookie"] == "blocked:SecurityError"


def test_a_report_framed_by_the_airflow_ui(case):
    name, proxy, context = case
    page = context.new_page()
    page.goto(proxy.url + "/", wait_until="load")  # the Airflow UI, same origin, signed in
    page.evaluate(
        "src => { const f = document.createElement('iframe'); f.src = src;"
        " f.style.width = '900px'; f.style.height = '600px'; document.body.appendChild(f); }",
        REPORT,
    )
    frame = wait_for(
        lambda: page.query_selector("iframe").content_frame(),
        lambda f: f is not None and f.url.endswith(REPORT),
        timeout=30,
        interval=0.5,
        describe=lambda f: f"the report frame did not load: {f and f.url}",
    )
    got = _outcomes(frame)
    pwned = page.evaluate("() => document.body.getAttribute('data-pwned')")
    fetches = proxy.api_calls("pwn=fetch")
    assert got["ran"] == "yes" and got["framed"] is True
    if name == "control":
        assert pwned == "by-report" and got["parent"].startswith("read:") and "Airflow" in got["parent"], got
        assert got["fetch"].startswith("status:200") and fetches and all(s.with_session for s in fetches)
    else:
        assert pwned is None and got["parent"] == "blocked:SecurityError", got
        assert got["fetch"] == "blocked:TypeError" and fetches == []
        assert got["storage"] == "blocked:SecurityError"


def test_an_ordinary_report_still_renders_in_the_sandbox(hostile_report, browser):
    """The headers do not break the feature: Evidently's app renders, served by the api-server itself."""
    af = hostile_report
    context = browser.new_context()
    context.add_cookies(
        [{"name": "_token", "value": af.token, "url": af.url, "httpOnly": True, "sameSite": "Lax"}]
    )
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        r = page.goto(f"{af.url}/mlops/reports/churn/{CLEAN_DATE}/report.html", wait_until="load")
        assert r.status == 200 and r.headers["content-security-policy"].startswith("sandbox allow-scripts")
        page.get_by_text("Data Drift Summary").first.wait_for(timeout=60_000)
        assert page.get_by_text("Dataset Drift is detected").count() >= 1
        assert page.evaluate("() => self.origin") == "null"  # it really ran sandboxed
        assert not [c for c in console if "Content Security Policy" in c], console
    finally:
        context.close()
