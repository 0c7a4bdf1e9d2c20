"""One polling loop for the tests that wait on real processes (runs, task states, new runs)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float,
    describe: Callable[[T], str],
    interval: float = 2.0,
    alive: Callable[[], None] | None = None,
) -> T:
    """Call `fetch()` every `interval` seconds until `done(value)`; return that value.

    `alive()` (e.g. a stack's check_alive) runs before each fetch and raises when a process died, so a
    crash fails at once instead of at the timeout; `fetch` may raise to stop early too. After `timeout`
    seconds: AssertionError("<describe(last value)> after <timeout>s").
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{describe(value)} after {timeout:.0f}s")
        time.sleep(interval)
