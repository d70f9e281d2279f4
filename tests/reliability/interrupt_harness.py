"""Run the real `quant` CLI in this process with a hook that makes interruptions land at an exact
point (used by test_interrupt.py as ``python interrupt_harness.py ARGS...``).

The hook is chosen by environment variables (nothing here changes what quant does otherwise):

- ``HARNESS_MODE``:
  ``slow-data``: every batch of an .npy dataset is delayed 50 ms and ``HARNESS_MARKER`` is
  created before the first one, so a test can send a real signal from outside mid-calibration;
  ``sigint-at-fsync`` / ``sigkill-at-fsync``: the process sends itself SIGINT / SIGKILL at the
  ``HARNESS_N``-th ``os.fsync`` of a file in ``HARNESS_DIR`` (a temporary file is complete and
  about to be renamed); ``sigint-at-replace`` / ``sigkill-at-replace``: the same at the N-th
  ``os.replace`` into ``HARNESS_DIR`` (the commit of a set of files);
  ``slow-commit``: every commit waits until ``HARNESS_BARRIER_COUNT`` processes have reached
  theirs (files ``HARNESS_BARRIER_DIR/<pid>``), then pauses ``HARNESS_PAUSES`` seconds (a comma
  list: before the first rename into ``HARNESS_DIR``, then after each one). Two writers given
  crossing schedules would, without quant's directory lock, end with one's sidecar and the
  other's cache.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _in_dir(path: Any) -> bool:
    target = os.environ.get("HARNESS_DIR", "")
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:  # a file descriptor (os.fsync(fd)): resolve it through /proc
        try:
            p = os.path.realpath(os.readlink(f"/proc/self/fd/{path}"))
        except OSError:
            return False
    return bool(target) and p.startswith(os.path.realpath(target) + os.sep)


def install() -> None:
    mode = os.environ.get("HARNESS_MODE", "")
    n = int(os.environ.get("HARNESS_N", "1"))
    calls = {"count": 0}

    def maybe_signal(path: Any, sig: signal.Signals) -> None:
        if _in_dir(path):
            calls["count"] += 1
            if calls["count"] == n:
                os.kill(os.getpid(), sig)

    if mode == "slow-data":
        from quant.datasets import arrays

        original = arrays.NpyDataset.batches
        marker = Path(os.environ["HARNESS_MARKER"])

        def slow_batches(self: Any, batch_size: int) -> Any:
            for i, batch in enumerate(original(self, batch_size)):
                if i == 0:
                    marker.touch()
                time.sleep(0.05)
                yield batch

        arrays.NpyDataset.batches = slow_batches  # type: ignore[method-assign]
    elif mode.endswith("-at-fsync"):
        sig = signal.SIGINT if mode.startswith("sigint") else signal.SIGKILL
        real_fsync = os.fsync

        def fsync(fd: Any) -> None:
            maybe_signal(fd, sig)
            real_fsync(fd)

        os.fsync = fsync
    elif mode.endswith("-at-replace"):
        sig = signal.SIGINT if mode.startswith("sigint") else signal.SIGKILL
        real_replace = os.replace

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            maybe_signal(dst, sig)
            real_replace(src, dst, **kw)

        os.replace = replace
    elif mode == "slow-commit":
        from quant import _io

        real_commit = _io._commit
        real_replace = os.replace
        barrier = Path(os.environ["HARNESS_BARRIER_DIR"])
        count = int(os.environ["HARNESS_BARRIER_COUNT"])
        pauses = [float(p) for p in os.environ["HARNESS_PAUSES"].split(",")]
        renamed = {"count": 0}

        def commit(pending: Any) -> None:
            (barrier / str(os.getpid())).touch()
            deadline = time.monotonic() + 30
            while len(list(barrier.iterdir())) < count and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(pauses[0])
            real_commit(pending)

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            real_replace(src, dst, **kw)
            if _in_dir(dst):
                renamed["count"] += 1
                if renamed["count"] < len(pauses):
                    time.sleep(pauses[renamed["count"]])

        _io._commit = commit
        os.replace = replace
    elif mode:
        raise SystemExit(f"unknown HARNESS_MODE {mode!r}")


if __name__ == "__main__":
    install()
    from quant.cli.main import main

    main(sys.argv[1:])
