"""Running a README's commands as written: every ```sh block, in order, in one bash, in the
README's folder (so a test checks what a reader types, not a copy of it). The last block is the
README's clean-up: it runs however the others end (an EXIT trap)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def run_commands(readme: Path, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    """Runs the blocks with `set -euo pipefail` (the first failing command fails the run) and
    returns the transcript (stdout and stderr). Raises with the transcript when a command fails."""
    blocks = BLOCK.findall(readme.read_text())
    cleanup = blocks.pop().replace("'", "'\\''")
    script = f"set -euo pipefail\ntrap 'set +e; {cleanup}' EXIT\nset -x\n" + "\n".join(blocks)
    done = subprocess.run(["bash", "-c", script], cwd=readme.parent, capture_output=True, text=True,
                          timeout=timeout, env=env)
    transcript = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{readme} commands failed ({done.returncode}):\n{transcript[-4000:]}")
    return transcript
