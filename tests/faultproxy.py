"""A TCP proxy that injects network faults between a client process and a real server.

Why: the recovery paths (retries, idempotent writes, a worker killed right after a commit) only matter when a
real component fails *once*, at a chosen moment, and then works again. Patching the client library would
test the patch; the network is the one place where a real `mlflow server` or PostgreSQL can be made to
"fail once" on demand while both ends stay unmodified. Point the client at ``proxy.url`` / ``proxy.port``
instead of the server and arm a fault on a byte pattern of the client->server stream::

    with FaultProxy("127.0.0.1", server_port) as proxy:
        fault = proxy.add_fault(b"POST /api/2.0/mlflow/runs/create", "drop_response")
        ...  # the server creates the run, the client never hears back and retries
        assert fault.fired == 1 and proxy.hits == [("drop_response", b"POST /api/2.0/mlflow/runs/create")]

Actions (``settle_s`` bounds each wait): ``drop_request`` (the chunk holding the match is not forwarded,
both sockets are reset: the server never sees the request); ``drop_response`` (forwarded; once the server
starts replying, i.e. it did the work, or after ``settle_s`` at the latest, its reply is discarded and both
sockets reset: a lost reply); ``kill_after_response`` (forwarded, the reply passes through, ``settle_s``
after it started SIGKILL goes to ``pid``: a worker killed right after its write succeeded); ``delay``
(forwarded after sleeping ``settle_s``, to widen race windows). A fault fires at most ``times`` times over
all connections, each matched byte position once (a rolling 64 KiB window per connection finds patterns
split across reads); ``hits`` lists (action, pattern) of every firing. Connections made after a fault keep
working, like a network that recovers. Stdlib only.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass

ACTIONS = ("drop_request", "drop_response", "kill_after_response", "delay")
WINDOW = 64 * 1024  # rolling client->server buffer per connection, so split patterns still match


@dataclass(eq=False)
class Fault:
    pattern: bytes
    action: str
    times: int = 1
    pid: int | None = None
    settle_s: float = 0.5
    fired: int = 0


def _abort(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees a reset, not an orderly end of stream."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.hits: list[tuple[str, bytes]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._acceptor: threading.Thread | None = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_fault(
        self, pattern: bytes, action: str, *, times: int = 1, pid: int | None = None, settle_s: float = 0.5
    ) -> Fault:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
        if action == "kill_after_response" and pid is None:
            raise ValueError("kill_after_response needs pid")
        if not pattern or times < 1:
            raise ValueError("pattern must be non-empty and times >= 1")
        fault = Fault(bytes(pattern), action, times, pid, settle_s)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def start(self) -> FaultProxy:
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self._acceptor = self._spawn(self._accept_loop, "accept")
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._acceptor is not None:  # first, so no connection thread starts after the snapshot below
            self._acceptor.join(2.0)
        self._listener.close()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:  # wakes the connection loops at once (select sees EOF, sendall fails)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 2.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _spawn(self, target, name: str, *args) -> threading.Thread:
        thread = threading.Thread(
            target=target, args=args, name=f"faultproxy-{self.port}-{name}", daemon=True
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.setblocking(True)
            self._spawn(self._serve, "conn", client)

    def _match(self, buf: bytearray, prev: int) -> list[Fault]:
        """Faults that fire on the matches ending in the new bytes buf[prev:] (each position fires once)."""
        fired: list[Fault] = []
        with self._lock:
            for fault in self._faults:
                i = buf.find(fault.pattern, max(0, prev - len(fault.pattern) + 1))
                while i >= 0 and fault.fired < fault.times:
                    fault.fired += 1
                    self.hits.append((fault.action, fault.pattern))
                    fired.append(fault)
                    if fault.action.startswith("drop"):
                        return fired
                    i = buf.find(fault.pattern, i + 1)
        return fired

    def _kill(self, pid: int, after_s: float) -> None:
        time.sleep(after_s)  # time for the reply to reach the client
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _abort(client)
            return
        server.settimeout(None)
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks.update((client, server))
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        buf, kills, abort, drop_until = bytearray(), [], False, None
        try:
            while sel.get_map() and not self._stopping.is_set():
                if drop_until is not None and time.monotonic() >= drop_until:
                    break
                for key, _ in sel.select(0.05):
                    src, dst = key.fileobj, key.data
                    data = src.recv(65536)
                    if not data:  # half-close: pass the EOF on, keep the other direction running
                        sel.unregister(src)
                        if drop_until is None:
                            dst.shutdown(socket.SHUT_WR)
                        continue
                    if src is server:
                        if drop_until is not None:  # the server replied, so it did the work: lose the reply
                            drop_until = 0.0
                            break
                        client.sendall(data)
                        for pid, after_s in kills:  # the reply is on its way: kill once it had time to land
                            self._spawn(self._kill, "kill", pid, after_s)
                        kills.clear()
                        continue
                    prev = len(buf)
                    buf += data
                    if len(buf) > WINDOW:
                        prev -= len(buf) - WINDOW
                        del buf[: len(buf) - WINDOW]
                    fired = self._match(buf, prev)
                    if any(f.action == "drop_request" for f in fired):
                        abort = True
                        return
                    delays = [f.settle_s for f in fired if f.action == "delay"]
                    if delays:
                        time.sleep(max(delays))
                    server.sendall(data)
                    kills += [(f.pid, f.settle_s) for f in fired if f.action == "kill_after_response"]
                    drops = [f.settle_s for f in fired if f.action == "drop_response"]
                    if drops:  # stop forwarding; wait (at most settle_s) for the server to reply
                        drop_until = time.monotonic() + max(drops)
                        sel.unregister(client)
                        break
            abort = abort or drop_until is not None
        except OSError:
            abort = True
        finally:
            sel.close()
            with self._lock:
                self._socks.difference_update((client, server))
            for sock in (client, server):
                if abort:
                    _abort(sock)
                else:
                    sock.close()
            for pid, after_s in kills if not self._stopping.is_set() else []:  # no reply came
                self._spawn(self._kill, "kill", pid, after_s)
