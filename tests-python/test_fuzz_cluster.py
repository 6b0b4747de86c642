"""Hostile input against a three-replica cluster (issue #28): every sample's start event, the
events a handler accepts, and every route's query parameters, with large and negative numbers,
numbers past Int64 and past 1e300, deep nesting around the depth limit, huge strings and wrong
types. No replica process may exit; every answer is a status the API documents, with a JSON body
on an error. The `poison` workflow (the debug build's trap by design) is left out.

Budget: per sample, each start field × each hostile value (about 30), plus a few whole-body
values; per handler route, the same values as events and query values. About 700 requests."""

from __future__ import annotations

import itertools
import json

import httpx
import pytest

from conftest import wait_until

TTL = "2s"


def nested(depth: int, leaf=1, kind: str = "array"):
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "array" else {"a": value}
    return value


HOSTILE = [
    2**62, -(2**62), 2**63 - 1, -(2**63), 2**64, 10**30, -1, 0, 1.5, -1e-300, 1e300, -1e300, 1.7976931348623157e308,
    "", "x" * 200_000, "\u00e9\U0001F600", "a\u0000b", None, True, [], {}, [2**62, 1], [1e300], ["x"],
    nested(255), nested(256), nested(257), nested(300, kind="object"), nested(600),
]


@pytest.fixture
def cluster(database_url, spawn):
    return [spawn(database_url=database_url, replica_id=f"r{i}", extra=["--lease-ttl", TTL]) for i in (1, 2, 3)]


def test_hostile_input_ends_no_replica(cluster):
    replicas = cluster
    urls = itertools.cycle([r.url for r in replicas])
    workflows = [w for w in httpx.get(f"{replicas[0].url}/workflows", timeout=10).json()["workflows"]
                 if w != "poison"]
    started: list[str] = []
    answers: dict[int, int] = {}
    requests = 0

    def post(path: str, body) -> httpx.Response | None:
        nonlocal requests
        requests += 1
        try:
            response = httpx.post(next(urls) + path, content=json.dumps(body, allow_nan=True),
                                  headers={"content-type": "application/json"}, timeout=30)
        except httpx.HTTPError as error:
            pytest.fail(f"POST {path}: {type(error).__name__}: {error} (a replica died?)")
        answers[response.status_code] = answers.get(response.status_code, 0) + 1
        # 503 is documented too: a replica that cannot prove its leases for a moment (a loaded
        # machine delays a renewal) refuses a run before writing anything, saying "retry".
        assert response.status_code in (200, 400, 404, 409, 413, 503), (path, response.status_code, response.text[:300])
        if response.status_code == 503:
            assert response.headers.get("retry-after"), response.text[:300]
        if response.status_code != 200:
            assert "detail" in response.json(), response.text[:300]
        return response

    for number, workflow in enumerate(workflows):
        schema = httpx.get(f"{replicas[0].url}/workflows/{workflow}/schema", timeout=10).json()["start"]
        fields = list(schema.get("properties", {}))
        for field, value in itertools.product(fields, HOSTILE):
            handler_id = f"fz-{number}-{requests}"
            response = post(f"/workflows/{workflow}/run-nowait",
                            {"start_event": {field: value}, "handler_id": handler_id})
            if response.status_code == 200:
                started.append(handler_id)
        for value in HOSTILE[:12] + [nested(300), "not json {"]:
            post(f"/workflows/{workflow}/run-nowait", {"start_event": value})
    # An approval to send hostile events to, and the routes that take query values.
    target = "fz-target"
    post("/workflows/approval/run-nowait", {"start_event": {"request": "fuzz"}, "handler_id": target})
    for value in HOSTILE:
        post(f"/events/{target}", {"event": {"type": "HumanResponseEvent", "value": {"response": value}}})
        post(f"/events/{target}", {"event": value})
        post(f"/events/{target}", {"event": json.dumps({"type": "HumanResponseEvent", "value": {"response": value}})})
    for value in ["-2", "9223372036854775808", "1e300", "nan", "now", "", "x" * 5000]:
        requests += 1
        response = httpx.get(f"{next(urls)}/events/{target}", params={"after_sequence": value, "sse": "false"},
                             timeout=httpx.Timeout(10, read=1))
        assert response.status_code in (200, 204, 400), (value, response.status_code)
        requests += 1
        response = httpx.get(f"{next(urls)}/cluster/history", params={"limit": value}, timeout=10)
        assert response.status_code in (200, 400), (value, response.status_code)
        requests += 1
        response = httpx.post(f"{next(urls)}/handlers/{target}/cancel", params={"purge": value}, timeout=10)
        assert response.status_code in (200, 400), (value, response.status_code)

    # Every accepted run has taken its first step (or ended): a trap in it would have ended a
    # replica by now. Then the long ones (huge counts) are cancelled.
    def first_steps_taken() -> bool:
        for handler_id in started:
            view = httpx.get(f"{replicas[0].url}/cluster/handlers/{handler_id}", timeout=10).json()
            if view["status"] == "running" and view["last_sequence"] < 1:
                return False
        return True

    wait_until(first_steps_taken, timeout=120, what="every fuzzed run past its first step")
    for handler_id in started:
        httpx.post(f"{replicas[0].url}/handlers/{handler_id}/cancel", timeout=10)
    for replica in replicas:
        assert replica.proc.poll() is None, f"{replica.replica_id} exited: {replica.log_tail()}"
        assert httpx.get(f"{replica.url}/health", timeout=5).status_code == 200
    failed = [h for h in started if httpx.get(f"{replicas[0].url}/handlers/{h}", timeout=10).json()["status"] == "failed"]
    print(f"{requests} requests, answers {answers}, {len(started)} runs started, {len(failed)} failed cleanly")
