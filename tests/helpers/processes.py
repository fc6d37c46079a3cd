"""Interrupting a command-line run at a chosen point, for the resume tests."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def kill_after_rows(argv: list[str], env: dict[str, str], out: Path, rows: int,
                    timeout: float) -> subprocess.Popen:
    """Start ``argv``, wait until the JSON-lines file ``out`` holds ``rows`` lines (or the
    process ends, or ``timeout`` seconds pass), then SIGKILL it and wait; returns the process
    (its stderr piped, for the caller's message)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= rows:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc
