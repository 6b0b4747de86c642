"""The cluster page at / in a real headless browser (Debian's chromium): it shows the replicas
and a handler moving to another replica after a kill -9."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from leasehold_kit.cluster import lease, start
from conftest import wait_until


def render(url: str, screenshot: Path | None = None) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/setup installs Debian's package)")
    # A fresh profile per call: a shared one would carry cached credentials from one render to the next.
    profile = tempfile.mkdtemp(prefix="leasehold-chromium-")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=4000", "--window-size=1200,800", f"--user-data-dir={profile}"]
    if screenshot:
        subprocess.run(base + [f"--screenshot={screenshot}", url], capture_output=True, timeout=60)
    try:
        result = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def lane(dom: str, replica: str) -> str:
    """The timeline lane of one replica (an SVG group), or "" when it has none."""
    parts = dom.split(f'<g data-lane="{replica}">')
    return parts[1].split("</g>")[0] if len(parts) > 1 else ""


def test_page_shows_replicas_and_a_handler_moving_after_a_kill(database_url, spawn, tmp_path):
    r1 = spawn(database_url=database_url, replica_id="r1", extra=["--lease-ttl", "2s", "--idle-timeout", "off"])
    r2 = spawn(database_url=database_url, replica_id="r2", extra=["--lease-ttl", "2s", "--idle-timeout", "off"])
    start(r1.url, "approval", {"request": "page"}, "page-1")
    wait_until(lambda: lease(r2.url, "page-1")["owner"] == "r1", what="owned by r1")
    before = render(r2.url + "/", tmp_path / "before.png")
    assert 'data-replica="r1"' in before and 'data-replica="r2"' in before
    assert 'data-handler="page-1"' in before
    row = before.split('data-handler="page-1"')[1].split("</tr>")[0]
    assert '<td class="owner">r1</td>' in row
    r1.kill9()
    wait_until(lambda: lease(r2.url, "page-1")["owner"] == "r2", timeout=15, what="handler moved to r2")
    after = render(r2.url + "/", tmp_path / "after.png")
    row = after.split('data-handler="page-1"')[1].split("</tr>")[0]
    assert '<td class="owner">r2</td>' in row
    r1_row = after.split('data-replica="r1"')[1].split("</tr>")[0]
    assert 'class="dead"' in r1_row or 'data-replica="r1"' not in after
    # The timeline: the handler was in r1's lane, and after the kill it is in r2's, marked as a
    # failover; the per-handler view lists its lease history and its log.
    assert 'data-segment="page-1"' in lane(before, "r1")
    assert 'data-segment="page-1"' in lane(after, "r1") and 'data-segment="page-1"' in lane(after, "r2")
    assert 'class="mark failover"' in lane(after, "r2")
    detail = render(r2.url + "/#handler=page-1", tmp_path / "detail.png")
    history = detail.split('id="history"')[1].split("</table>")[0]
    assert 'data-change="created"' in history and 'data-change="failed_over"' in history
    assert "InputRequiredEvent" in detail.split('id="events"')[1].split("</table>")[0]
    shots = os.environ.get("LEASEHOLD_SCREENSHOTS")
    if shots:
        for name in ("before", "after", "detail"):
            shutil.copy(tmp_path / f"{name}.png", Path(shots) / f"cluster-page-{name}.png")


def test_page_with_an_api_key_asks_the_browser_for_it(spawn, tmp_path):
    """With --api-key a browser is asked for HTTP Basic credentials (the key as the password); with
    them the page and the data it fetches load, without them it gets the 401."""
    replica = spawn(extra=["--api-key", "pagekey"])
    host = replica.url.removeprefix("http://")
    shown = f'data-replica="{replica.replica_id}"'
    assert shown not in render(replica.url + "/")
    assert shown not in render(f"http://operator:nope@{host}/")
    page = render(f"http://operator:pagekey@{host}/", tmp_path / "auth.png")
    assert shown in page and '<p id="error"></p>' in page


def test_a_page_on_another_origin_cannot_change_anything(spawn, tmp_path):
    """CSRF: a page served from another origin makes the browser submit a form (cancel) and send
    fetches (cancel, start a run) to a replica without an API key. Every one is refused; the
    handler is untouched and nothing was started."""
    import functools
    import http.server
    import threading

    import httpx

    from leasehold_kit.procs import free_port

    replica = spawn()
    start(replica.url, "approval", {"request": "csrf"}, "victim")
    wait_until(lambda: httpx.get(f"{replica.url}/handlers/victim", timeout=5).json()["status"] == "running",
               what="victim running")
    evil = tmp_path / "evil"
    evil.mkdir()
    target = replica.url
    (evil / "index.html").write_text(f"""<!doctype html>
<iframe name="sink"></iframe>
<form id="form" target="sink" method="POST" action="{target}/handlers/victim/cancel?purge=true"></form>
<script>
  const body = JSON.stringify({{start_event: {{message: "x"}}, handler_id: "evil-fetch"}});
  Promise.allSettled([
    fetch("{target}/handlers/victim/cancel", {{method: "POST", mode: "no-cors"}}),
    fetch("{target}/workflows/echo/run-nowait", {{method: "POST", mode: "no-cors", body,
                                                  headers: {{"Content-Type": "text/plain"}}}}),
  ]).then(() => document.getElementById("form").submit());
</script>
""")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        render(f"http://127.0.0.1:{port}/index.html")
    finally:
        server.shutdown()
        server.server_close()
    refused = [line for line in replica.log_path.read_text(errors="replace").splitlines()
               if "cross-" in line or "must be JSON" in line]
    record = httpx.get(f"{replica.url}/handlers/victim", timeout=5)
    assert record.status_code == 202 and record.json()["status"] == "running", (record.text, refused)
    assert httpx.get(f"{replica.url}/handlers/evil-fetch", timeout=5).status_code == 404
    # The three requests reached the replica and were refused (not lost on the way).
    # (The form posts into a frame: the page itself stays, so the browser ends at once.)
    metrics = httpx.get(f"{replica.url}/metrics", timeout=5).text
    refusals = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("leasehold_http_requests_total") and ('status="403"' in line or 'status="415"' in line))
    assert refusals >= 3, metrics
