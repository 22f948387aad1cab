"""Starting and waiting for the test's child processes (multi-host tests on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Callable, Sequence

import pytest


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (for the JAX coordinator)."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_all(
  procs: Sequence[subprocess.Popen], tails: Callable[[], str], timeout_s: float, what: str
) -> None:
  """Wait until every process of `procs` exits 0. Fails the test (with `tails()`, the
  processes' last output) as soon as one exits non-zero or `timeout_s` runs out, and
  kills the ones still running, so a collective that one process never enters cannot hang."""
  deadline = time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, 0) for p in procs):
        time.sleep(2)  # let the others write their error too
        pytest.fail(f'{what}: a process failed (exit codes {[p.poll() for p in procs]})\n{tails()}')
      if time.monotonic() > deadline:
        pytest.fail(f'{what}: still running after {timeout_s} s\n{tails()}')
      time.sleep(0.5)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert all(p.returncode == 0 for p in procs), tails()
