"""Interrupted and concurrent runs, with real subprocesses and real signals.

Contract (docs/RELIABILITY.md): Ctrl-C (SIGINT, exit 130) or SIGTERM (exit 143) at any point
leaves every previous output byte-identical, or replaced by a complete new one, and no temporary
file behind. The cache, its sidecar and its statistics are one set: never a mix of two runs.
SIGKILL cannot run cleanup: it may leave hidden ``.quant-tmp-<pid>-...`` files, which nothing
reads and the next quant write into that folder removes (their process is gone); outputs are
still complete files. Two processes writing the same cache leave one complete, consistent set.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from quant.cache.io import read_cache
from quant.errors import CacheError
from tests.reliability.helpers import run_cli, snapshot, temp_leftovers

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="POSIX signals, and /proc to tell which file an fsync is for"
)

HARNESS = Path(__file__).with_name("interrupt_harness.py")
REPO = Path(__file__).resolve().parents[2]
SET = ("model.cache", "model.cache.json", "model.cache.stats.npz")


def _env(**harness: object) -> dict[str, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({f"HARNESS_{k.upper()}": str(v) for k, v in harness.items()})
    return env


def _start(args: list[str | Path], **harness: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HARNESS), "-q", *map(str, args)],
        env=_env(**harness), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(args: list[str | Path], **harness: object) -> subprocess.CompletedProcess[str]:
    proc = _start(args, **harness)
    out, err = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path.name}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.02)


def _stderr_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _assert_interrupted(proc: subprocess.CompletedProcess[str], code: int, word: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = _stderr_lines(proc.stderr)
    assert len(lines) == 1 and lines[0] == f"quant: {word}; no half-written file was left behind", proc.stderr


def _assert_consistent_set(cache: Path) -> dict:
    """Cache, sidecar and statistics of one and the same calibration."""
    from quant.calibrators.stats_io import load_stats

    loaded = read_cache(cache, require_sidecar=True)  # hash and every amax checked
    calib = loaded.sidecar["calibration"]  # type: ignore[index]
    algorithm = {"minmax": "MinMaxCalibration"}.get(calib["method"], "EntropyCalibration2")
    assert loaded.parsed.algorithm == algorithm
    _stats, meta = load_stats(Path(str(cache) + ".stats.npz"))
    assert meta["num_samples"] == calib["num_samples"]
    return calib


@pytest.fixture
def big_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, np.random.default_rng(0).random((400, 1, 28, 28), dtype=np.float32))
    return path


def _calibrate_args(model: Path, data: Path | str, cache: Path, *extra: str) -> list[str | Path]:
    return ["calibrate", model, "--data", data, "--cache", cache, "--force", *extra]


# --------------------------------------------------------------------------------------------
# A signal from outside while the model runs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGKILL, -9, None)],
    ids=["SIGINT", "SIGTERM", "SIGKILL"],
)
def test_signal_during_calibration(
    demo_cache: Path, demo_model: Path, big_data: Path, tmp_path: Path,
    sig: signal.Signals, code: int, word: str | None,
) -> None:
    out = demo_cache.parent
    before = snapshot(out)
    marker = tmp_path / "calibrating"
    proc = _start(_calibrate_args(demo_model, big_data, demo_cache, "--method", "minmax"),
                  mode="slow-data", marker=marker)
    _wait_for(marker, proc)
    proc.send_signal(sig)
    out_text, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out_text, err)
    if word is None:
        assert proc.returncode == code
    else:
        _assert_interrupted(result, code, word)
    assert snapshot(out) == before  # nothing was being written yet: untouched, no temporary files
    _assert_consistent_set(demo_cache)


def test_sigint_to_plain_quant_process(demo_cache: Path, demo_model: Path, big_data: Path) -> None:
    """No hook at all: `python -m quant calibrate`, Ctrl-C as soon as it has loaded the model.
    Wherever it lands, the set is the previous one or a complete new one, with no temporary file."""
    out = demo_cache.parent
    before = snapshot(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "quant", "calibrate", str(demo_model), "--data", str(big_data),
         "--cache", str(demo_cache), "--force", "--method", "minmax"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first log line comes once the model is loaded and cleaned
    assert first.startswith("quant: "), first
    proc.send_signal(signal.SIGINT)
    _out, _err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 130), _err
    assert not temp_leftovers(out)
    calib = _assert_consistent_set(demo_cache)
    if proc.returncode == 130:
        assert snapshot(out) == before or calib["method"] == "minmax"
    else:
        assert calib["method"] == "minmax"


# --------------------------------------------------------------------------------------------
# A signal at the exact moment of writing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2], ids=["sidecar"])
def test_sigint_while_writing_the_set(demo_cache: Path, demo_model: Path, n: int) -> None:
    """Ctrl-C when the n-th file of the set is complete but not yet renamed: none is replaced."""
    out = demo_cache.parent
    before = snapshot(out)
    proc = _run(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax"),
                mode="sigint-at-fsync", n=n, dir=out)
    _assert_interrupted(proc, 130, "interrupted")
    assert snapshot(out) == before
    assert _assert_consistent_set(demo_cache)["method"] == "entropy"


@pytest.mark.parametrize("n", [2], ids=["sidecar"])
def test_sigint_during_the_renames_is_held_back(demo_cache: Path, demo_model: Path, n: int) -> None:
    """Ctrl-C in the middle of the renames: they all finish first (a complete new set), then the
    interrupt is honoured."""
    out = demo_cache.parent
    proc = _run(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax"),
                mode="sigint-at-replace", n=n, dir=out)
    _assert_interrupted(proc, 130, "interrupted")
    assert not temp_leftovers(out)
    assert _assert_consistent_set(demo_cache)["method"] == "minmax"


def test_sigkill_while_writing_leaves_only_hidden_temporaries(
    capsys: pytest.CaptureFixture[str], demo_cache: Path, demo_model: Path
) -> None:
    """SIGKILL as the second of the three temporary files is flushed: outputs untouched, the two
    hidden temporaries remain, nothing mistakes them for outputs, and the next write removes them."""
    out = demo_cache.parent
    before = snapshot(out)
    proc = _run(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax"),
                mode="sigkill-at-fsync", n=2, dir=out)
    assert proc.returncode == -signal.SIGKILL
    left = temp_leftovers(out)
    assert len(left) == 2 and all(p.name.startswith(".quant-tmp-") and p.name.endswith(".tmp") for p in left)
    assert {n: b for n, b in snapshot(out).items() if not Path(n).name.startswith(".quant-tmp-")} == before
    assert _assert_consistent_set(demo_cache)["method"] == "entropy"  # the temporaries are ignored
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", out / "model.int8.onnx")
    assert result.code == 0, result.err
    assert not temp_leftovers(out)  # that write cleaned up after the dead process
    result = run_cli(capsys, *_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax"))
    assert result.code == 0, result.err
    assert _assert_consistent_set(demo_cache)["method"] == "minmax"


def test_sigkill_between_renames_is_detected_and_repaired(
    capsys: pytest.CaptureFixture[str], demo_cache: Path, demo_model: Path
) -> None:
    """The one window no software can close: SIGKILL after the sidecar's rename and before the
    cache's. The mix is refused loudly (never used), and the next `quant calibrate` repairs it."""
    out = demo_cache.parent
    proc = _run(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax"),
                mode="sigkill-at-replace", n=3, dir=out)
    assert proc.returncode == -signal.SIGKILL
    with pytest.raises(CacheError, match="does not match cache"):
        read_cache(demo_cache)
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", out / "model.int8.onnx")
    assert result.code == 1 and "does not match cache" in result.err
    assert not (out / "model.int8.onnx").exists()
    result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", demo_cache, "--method", "minmax")
    assert result.code == 0, result.err
    _assert_consistent_set(demo_cache)


# --------------------------------------------------------------------------------------------
# build and report
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sigint-at-fsync", "sigkill-at-fsync"])
def test_interrupted_build_keeps_previous_model(
    capsys: pytest.CaptureFixture[str], demo_cache: Path, demo_model: Path, mode: str
) -> None:
    out = demo_cache.parent
    model_out = out / "model.int8.onnx"
    model_out.write_bytes(b"previous model")
    before = snapshot(out)
    proc = _run(["build", demo_model, "--cache", demo_cache, "-o", model_out], mode=mode, n=1, dir=out)
    if mode.startswith("sigint"):
        _assert_interrupted(proc, 130, "interrupted")
        assert snapshot(out) == before
    else:
        assert proc.returncode == -signal.SIGKILL
        assert model_out.read_bytes() == b"previous model"
        assert len(temp_leftovers(out)) == 1
        result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", model_out)
        assert result.code == 0, result.err
        assert not temp_leftovers(out)


def test_interrupted_report_keeps_previous_html(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, demo_model: Path
) -> None:
    result = run_cli(capsys, "eval", demo_model, "--data", "demo:eval", "--max-samples", "64", "--precisions", "fp32",
                     "--report", tmp_path / "report.json")
    assert result.code == 0, result.err
    html = tmp_path / "report.html"
    html.write_text("<html>previous</html>")
    before = snapshot(tmp_path)
    proc = _run(["report", tmp_path / "report.json", "-o", html], mode="sigint-at-fsync", n=1, dir=tmp_path)
    _assert_interrupted(proc, 130, "interrupted")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# Two writers
# --------------------------------------------------------------------------------------------


def test_two_processes_writing_the_same_cache(demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    """Two calibrations of different methods and sample counts commit at the same moment, each
    rename slowed down: the result is one complete set (cache, sidecar, statistics of one run)."""
    out = demo_cache.parent
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    common: dict[str, object] = {"mode": "slow-commit", "dir": out, "barrier_dir": barrier, "barrier_count": 2}
    # Unlocked, these schedules would interleave as: a.stats 0.0, b.stats 0.05, a.sidecar 0.1,
    # b.sidecar 0.3, b.cache 0.35, a.cache 0.5 -> b's sidecar with a's cache.
    a = _start(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "minmax", "--max-samples", "100"),
               pauses="0,0.1,0.4", **common)
    b = _start(_calibrate_args(demo_model, "demo:calib", demo_cache, "--method", "percentile", "--max-samples", "200"),
               pauses="0.05,0.25,0.05", **common)
    for proc in (a, b):
        _out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    calib = _assert_consistent_set(demo_cache)
    assert (calib["method"], calib["num_samples"]) in {("minmax", 100), ("percentile", 200)}
    assert not temp_leftovers(out)
    side = json.loads(Path(str(demo_cache) + ".json").read_text())
    assert side["calibration"]["method"] == calib["method"]


def test_stale_temporaries_of_live_processes_are_kept(tmp_path: Path) -> None:
    """Cleanup removes only temporaries whose process is gone: a live writer's file is left alone."""
    from quant._io import atomic_write, remove_stale_temps

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        dead_pid = int(dead.stdout)
        live = tmp_path / f".quant-tmp-{sleeper.pid}-0123abcd-x.cache.tmp"
        gone = tmp_path / f".quant-tmp-{dead_pid}-89abcdef-x.cache.tmp"
        foreign = tmp_path / ".quant-tmp-notapid-x.tmp"
        for p in (live, gone, foreign):
            p.write_text("partial")
        assert remove_stale_temps(tmp_path) == [gone]
        assert live.exists() and foreign.exists() and not gone.exists()
        gone.write_text("partial")
        atomic_write(tmp_path / "other.txt", "x")  # any write into the folder cleans up
        assert not gone.exists() and live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    shutil.rmtree(tmp_path, ignore_errors=True)
