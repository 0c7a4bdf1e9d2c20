"""tests/faultproxy.py against real local TCP servers (an HTTP/1.1 keep-alive server and an echo server)."""

from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tests.faultproxy import FaultProxy


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the resets the faults cause are expected


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def _reply(self, body: bytes) -> None:
        self.server.calls[self.path] += 1  # the side effect, before any reply byte is sent
        self.server.peers.append(self.client_address)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply(f"got {self.path}".encode())

    def do_POST(self):
        self._reply(b"posted " + self.rfile.read(int(self.headers["Content-Length"])))

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.calls, server.peers = Counter(), []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(2)


@pytest.fixture
def echo_port():
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stopping, conns = threading.Event(), []

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setblocking(True)
            conns.append(threading.Thread(target=echo, args=(conn,), daemon=True))
            conns[-1].start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    stopping.set()
    acceptor.join(2)
    listener.close()
    for t in conns:
        t.join(2)


@pytest.fixture
def proxy_for():
    proxies: list[FaultProxy] = []

    def make(port: int) -> FaultProxy:
        proxies.append(FaultProxy("127.0.0.1", port).start())
        return proxies[-1]

    yield make
    started = time.monotonic()
    for proxy in proxies:
        proxy.stop()
    assert time.monotonic() - started < 3
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("faultproxy-")]
    assert not leaked, f"threads left after stop(): {leaked}"


def _get(proxy: FaultProxy, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def test_plain_http_and_keep_alive(http_server, proxy_for):
    proxy = proxy_for(http_server.server_port)
    assert proxy.url == f"http://127.0.0.1:{proxy.port}"
    assert _get(proxy, "/a") == b"got /a"
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    bodies = []
    for i in range(3):
        conn.request("POST", "/p", body=f"n{i}".encode())
        bodies.append(conn.getresponse().read())
    conn.close()
    assert bodies == [b"posted n0", b"posted n1", b"posted n2"]
    assert len(set(http_server.peers[1:])) == 1  # the 3 requests shared one upstream connection
    assert proxy.hits == []


def test_drop_request_never_reaches_the_server(http_server, proxy_for):
    proxy = proxy_for(http_server.server_port)
    fault = proxy.add_fault(b"GET /drop", "drop_request")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        _get(proxy, "/drop")
    assert _get(proxy, "/after") == b"got /after"  # a new connection works: the network recovered
    assert _get(proxy, "/drop") == b"got /drop"  # times=1: spent
    assert http_server.calls["/drop"] == 1  # only the second one
    assert fault.fired == 1 and proxy.hits == [("drop_request", b"GET /drop")]


def test_drop_response_loses_the_reply_of_done_work(http_server, proxy_for):
    proxy = proxy_for(http_server.server_port)
    fault = proxy.add_fault(b"POST /work", "drop_response", settle_s=10)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
    started = time.monotonic()
    conn.request("POST", "/work", body=b"x")
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        conn.getresponse().read()
    conn.close()
    # closed when the reply started, not after settle_s (generous: the machine may be busy)
    assert time.monotonic() - started < 9
    assert http_server.calls["/work"] == 1  # the server did the work
    assert fault.fired == 1 and proxy.hits == [("drop_response", b"POST /work")]
    assert _get(proxy, "/after") == b"got /after"


def test_kill_after_response(http_server, proxy_for):
    proxy = proxy_for(http_server.server_port)
    code = (
        "import sys, time, urllib.request\n"
        "input()\n"  # wait until the fault is armed with our pid
        f"print(urllib.request.urlopen({proxy.url + '/commit'!r}, timeout=5).read().decode(), flush=True)\n"
        "time.sleep(30)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        fault = proxy.add_fault(b"GET /commit", "kill_after_response", pid=child.pid, settle_s=2.0)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "got /commit"  # the reply reached the child
        started = time.monotonic()
        assert child.wait(timeout=10) == -9  # SIGKILL, not the end of its 30 s sleep
        assert time.monotonic() - started < 5
        assert fault.fired == 1 and http_server.calls["/commit"] == 1
    finally:
        child.kill()
        child.wait()


def _exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send each chunk as its own send() (with a pause, so the proxy reads them apart), then read to EOF."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(0.1)
            sock.shutdown(socket.SHUT_WR)  # half-close: the echo must still come back
            while data := sock.recv(65536):
                received += data
        except TimeoutError:
            raise
        except OSError:  # reset by a drop fault (ECONNRESET, EPIPE, ENOTCONN)
            pass
    return received


def test_pattern_split_across_sends(echo_port, proxy_for):
    proxy = proxy_for(echo_port)
    delay = proxy.add_fault(b"SPLIT", "delay", times=5, settle_s=0.01)
    assert _exchange(proxy.port, [b"a SP", b"LIT b", b" c"]) == b"a SPLIT b c"
    assert delay.fired == 1  # one match, counted once although the window holds it for later chunks
    proxy.clear_faults()
    drop = proxy.add_fault(b"SPLIT", "drop_request")
    received = _exchange(proxy.port, [b"hello SPL", b"IT world", b" more"])
    assert drop.fired == 1 and b"world" not in received
    assert proxy.hits == [("delay", b"SPLIT"), ("drop_request", b"SPLIT")]


def test_times_fires_exactly(echo_port, proxy_for):
    proxy = proxy_for(echo_port)
    fault = proxy.add_fault(b"ping", "drop_request", times=2)
    results = [_exchange(proxy.port, [b"ping"]) for _ in range(4)]
    assert results == [b"", b"", b"ping", b"ping"]
    assert fault.fired == 2 and proxy.hits == [("drop_request", b"ping")] * 2
