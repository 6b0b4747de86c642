"""The cluster page at / in a real headless browser (Debian's chromium): it shows the replicas
and a handler moving to another replica after a kill -9."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from leasehold_kit.cluster import lease, start
from conftest import wait_until


def render(url: str, screenshot: Path | None = None) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/setup installs Debian's package)")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--virtual-time-budget=4000", "--window-size=1200,800"]
    if screenshot:
        subprocess.run(base + [f"--screenshot={screenshot}", url], capture_output=True, timeout=60)
    result = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


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
