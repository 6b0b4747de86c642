"""Waiting for another process's state, which has no event to await.

Standard library only at import: httpx (the default errors to ignore) is imported when a wait
needs it, so the process-management modules, which run on the system python3, can wait too.
"""

from __future__ import annotations

import time


class WaitTimeout(TimeoutError, AssertionError):
    """The condition did not hold in time (a test failure and a drill's timeout alike)."""


def http_errors() -> tuple[type[BaseException], ...]:
    """httpx's errors and OSError: what a replica that is restarting answers."""
    import httpx

    return (httpx.HTTPError, OSError)


def wait_until(
    condition,
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] | None = None,
):
    """Polls `condition` until it returns something true (returned) or `timeout` passes.

    Errors of the `ignoring` types (default: `http_errors()`; a replica restarting refuses
    connections) count as "not yet"; any other error propagates, so a wrong assumption fails
    loudly instead of timing out.
    """
    if ignoring is None:
        ignoring = http_errors()
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except ignoring:
            pass
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_for_cluster(condition, timeout: float, what: str):
    """`wait_until` for drills and fault runs: a replica that answers an error body while it
    restarts (a missing key, non-JSON) also counts as "not yet"."""
    return wait_until(condition, timeout, what, ignoring=(*http_errors(), KeyError, ValueError))
