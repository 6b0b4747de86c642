"""The body of scripts/flake-hunt (run through it: it sets up the database and the build)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOG_SECONDS = 6 * 3600  # each hog stops by itself even if this script is killed


def start_hogs(count: int) -> list[subprocess.Popen]:
    # Each hog also stops when this script is gone (its parent changes).
    code = (f"import os, time\nparent = os.getppid()\nend = time.monotonic() + {HOG_SECONDS}\n"
            "while time.monotonic() < end and os.getppid() == parent:\n    for _ in range(100000):\n        pass\n")
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def junit_results(path: Path) -> dict[str, bool]:
    """test id -> passed, from one JUnit XML file (skips count as passed only if none were required)."""
    results: dict[str, bool] = {}
    if not path.exists():
        return results
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        failed = any(child.tag in ("failure", "error") for child in case)
        results[name] = not failed
    return results


def main() -> int:
    # SIGTERM ends the hunt like Ctrl-C: the hogs are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description="runs the multi-process suites N times under a CPU hog")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--swift", action="store_true")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    if args.rounds < 1 or args.hogs < 0:
        parser.error("--rounds must be >= 1 and --hogs >= 0")
    out = Path(os.environ.get("LEASEHOLD_FLAKE_DIR", "/tmp/leasehold-flake"))
    out.mkdir(parents=True, exist_ok=True)

    runs: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    hogs = start_hogs(args.hogs)
    began = time.monotonic()
    try:
        for round_number in range(1, args.rounds + 1):
            print(f"== round {round_number}/{args.rounds} ({args.hogs} hogs)", flush=True)
            files = []
            xml = out / f"pytest-{round_number}.xml"
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                            *(args.pytest_args or [str(ROOT / "tests-python")])], cwd=ROOT)
            files.append(xml)
            if args.swift:
                swift_xml = out / f"swift-{round_number}.xml"
                subprocess.run(["swift", "test", "--skip-build", "--xunit-output", str(swift_xml)], cwd=ROOT)
                files += [swift_xml, swift_xml.with_name(swift_xml.stem + "-swift-testing.xml")]
            for path in files:
                for name, passed in junit_results(path).items():
                    runs[name] += 1
                    failures[name] += 0 if passed else 1
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()

    minutes = (time.monotonic() - began) / 60
    lines = [f"Flake hunt: {args.rounds} rounds, {args.hogs} CPU hogs, {minutes:.1f} min", "",
             "| test | runs | failures |", "|---|---|---|"]
    for name in sorted(runs, key=lambda n: (-failures[n], n)):
        lines.append(f"| `{name}` | {runs[name]} | {failures[name]} |")
    total = sum(failures.values())
    lines += ["", f"{len(runs)} tests, {sum(runs.values())} runs, {total} failures"]
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if not runs:
        print("no test results were recorded", file=sys.stderr)
        return 1
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
