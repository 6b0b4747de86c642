"""Waiting for another process's state, which has no event to await."""

from __future__ import annotations

import time

import httpx


class WaitTimeout(TimeoutError, AssertionError):
    """The condition did not hold in time (a test failure and a drill's timeout alike)."""


def wait_until(
    condition,
    timeout: float = 15.0,
    what: str = "condition",
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (httpx.HTTPError, OSError),
):
    """Polls `condition` until it returns something true (returned) or `timeout` passes.

    Errors of the `ignoring` types count as "not yet" (a replica restarting refuses connections);
    any other error propagates, so a wrong assumption fails loudly instead of timing out.
    """
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
    return wait_until(condition, timeout, what, ignoring=(httpx.HTTPError, OSError, KeyError, ValueError))
