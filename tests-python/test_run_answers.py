"""Every answer is true (issue #28, N4): a `run` answered 503 never runs later, and a 200 was
really completed. Three real replicas; the database is stalled mid-commit (every PostgreSQL
process of the test server stopped with SIGSTOP) for longer than a lease, while runs are sent."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import wait_until

TTL = "2s"


def postgres_stopped():
    """Stops every process of the test server (postmaster first, so it forks no new one) and
    returns a function that resumes them. Only processes of the server scripts/test started."""
    pgdir = os.environ.get("LEASEHOLD_PG_DIR")
    if not pgdir:
        pytest.skip("no test Postgres directory (run through scripts/test)")
    postmaster = int(Path(pgdir, "data", "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGSTOP)
    children = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True,
                                                   text=True, timeout=10).stdout.split()]
    for pid in children:
        os.kill(pid, signal.SIGSTOP)

    def resume():
        for pid in [postmaster, *children]:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    return resume


@pytest.fixture
def cluster(database_url, spawn):
    return [spawn(database_url=database_url, replica_id=f"r{i}", extra=["--lease-ttl", TTL]) for i in (1, 2, 3)]


# Stalls around a lease: shorter ones end after the replica fenced itself (at 80 % of the TTL)
# but before its registration lapsed in the database, where a creation in flight still commits
# (N4's window); longer ones outlast the registration.
STALLS = [1.7, 1.8, 1.9, 2.2, 3.0]


def test_a_run_answered_503_never_runs_and_a_200_was_completed(cluster):
    r1, r2, _ = cluster
    answers: dict[str, httpx.Response | Exception] = {}

    def send(message: str, handler_id: str | None):
        body = {"start_event": {"message": message}}
        if handler_id:
            body["handler_id"] = handler_id
        try:
            answers[message] = httpx.post(f"{r1.url}/workflows/echo/run", json=body, timeout=90)
        except httpx.HTTPError as error:
            answers[message] = error

    for round_number, stall in enumerate(STALLS):
        # Warm: r1 is registered and runs again (it fenced itself in the round before).
        wait_until(lambda: httpx.post(f"{r1.url}/workflows/echo/run", json={"start_event": {"message": "warm"}},
                                      timeout=30).status_code == 200, timeout=60, what="r1 running runs")
        resume = postgres_stopped()
        try:
            senders = [threading.Thread(target=send, args=(
                f"stalled-{round_number}-{i}", f"client-{round_number}-{i}" if i % 3 == 0 else None))
                for i in range(9)]
            for sender in senders:
                sender.start()
            time.sleep(stall)  # the fault's duration, not a wait for a condition
        finally:
            resume()
        for sender in senders:
            sender.join(timeout=120)
    assert len(answers) == 9 * len(STALLS), answers

    def echo_handlers() -> list[dict]:
        return httpx.get(f"{r2.url}/handlers", params={"workflow_name": "echo"}, timeout=10).json()["handlers"]

    # Every handler that will finish has finished: nothing of echo is left running.
    wait_until(lambda: all(h["status"] != "running" for h in echo_handlers()), timeout=90,
               what="every echo handler finished")
    done = [h["result"]["value"]["result"] for h in echo_handlers() if h["status"] == "completed"]
    outcomes: dict[int, int] = {}
    for message, answer in answers.items():
        assert isinstance(answer, httpx.Response), (message, answer)
        outcomes[answer.status_code] = outcomes.get(answer.status_code, 0) + 1
        if answer.status_code == 200:
            assert answer.json()["result"]["value"]["result"] == message, answer.text
            assert done.count(message) == 1, (message, done)
        elif answer.status_code == 503:
            # Told it will not run: it never did (nor will: nothing is left running), and the
            # answer names the handler.
            assert done.count(message) == 0, (message, answer.text)
            assert "handler_id" in answer.json(), answer.text
        elif answer.status_code == 500:
            # A run whose step began before its handler could be written (a server-chosen id):
            # told it will not go on, and not to retry blindly. It did not complete.
            assert "will not go on" in answer.text and "retry-after" not in answer.headers, answer.text
            assert done.count(message) == 0, (message, answer.text)
        elif answer.status_code == 504:
            assert "handler_id" in answer.json(), answer.text  # unknown, and said so: never "retry"
            assert done.count(message) <= 1
        else:
            pytest.fail(f"{message}: {answer.status_code} {answer.text}")
    print("answers by status:", outcomes)
