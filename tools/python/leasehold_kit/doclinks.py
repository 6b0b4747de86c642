"""Every path a document names exists: `python -m leasehold_kit.doclinks [FILE...]`.

Checks the Markdown links (relative targets, anchors dropped) and the code spans that name a
path — `Sources/...`, `deploy/...` (from the top, or from the example package a document is in),
or a bare Swift or SQL file name, which must exist somewhere in the tree (bare names of other
kinds may be another project's, as the Python API map's are). Paths the tree makes at run time
(`deploy/drills/reports/`) are the ones `.gitignore` names. Exits 1 listing what is missing. Run by
`scripts/test` over the README, `docs/` and the example's README, so a moved or renamed file
cannot leave the map of files behind.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TOP = ("Sources/", "Tests/", "sql/", "deploy/", "scripts/", "tools/", "tests-python/", "bench/", "docs/",
       "Examples/", ".ci/", "env/")
SUFFIXES = (".swift", ".sql")
DEFAULT = ["README.md", "CHANGELOG.md", "docs", "Examples/document-review/README.md"]

LINK = re.compile(r"\]\(([^)\s]+)\)")
SPAN = re.compile(r"`([^`\s]+)`")


def tracked() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def shown(doc: Path) -> str:
    return str(doc.relative_to(ROOT)) if doc.is_relative_to(ROOT) else str(doc)


def ignored(path: str) -> bool:
    """Whether `.gitignore` names the path (made at run time, so absent from a clean clone)."""
    rules = [r.strip() for r in (ROOT / ".gitignore").read_text().splitlines()]
    return any(r and not r.startswith(("#", "!")) and path.rstrip("/") == r.strip("/") for r in rules)


def missing_in(doc: Path, names: set[str]) -> list[str]:
    text = doc.read_text()
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            problems.append(f"{shown(doc)}: link {target}")
    for span in SPAN.findall(text):
        span = span.rstrip(".,:;")
        if "*" in span or "<" in span or "{" in span or "…" in span or "$" in span:
            continue
        if span.startswith(TOP):
            path = span.split(":")[0].split("#")[0]
            bases = [ROOT] + [p for p in doc.parents if p.parent.name == "Examples"]
            if not any((base / path).exists() for base in bases) and not ignored(path):
                problems.append(f"{shown(doc)}: path {span}")
        elif "/" not in span and span.endswith(SUFFIXES) and re.fullmatch(r"[\w+.-]+", span):
            if span not in names:
                problems.append(f"{shown(doc)}: file {span}")
    return problems


def main(argv: list[str]) -> int:
    names = {Path(f).name for f in tracked()}
    docs: list[Path] = []
    for arg in argv or DEFAULT:
        path = ROOT / arg
        docs.extend(sorted(path.rglob("*.md")) if path.is_dir() else [path])
    problems = [p for doc in docs for p in missing_in(doc, names)]
    for problem in problems:
        print(f"missing: {problem}")
    print(f"doclinks: {len(docs)} documents, {len(problems)} missing paths")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
