"""Outputs that cannot be written: a read-only location, a file where a folder is expected, a
full disk (a file-size limit), an output path equal to an input. One line, exit 1 (2 for what
click rejects before running), previous files intact, no temporary files left."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.helpers import assert_fails_cleanly, run_cli, snapshot, temp_leftovers

Capsys = pytest.CaptureFixture[str]
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# Not writable
# --------------------------------------------------------------------------------------------


def _sysfs_refuses_files() -> bool:
    """sysfs refuses new files even to root (EACCES): a read-only place root cannot bypass."""
    probe = Path("/sys") / f"quant-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
    except OSError:
        return Path("/sys").is_dir()
    probe.unlink()
    return False


@pytest.mark.skipif(not _sysfs_refuses_files(), reason="needs a Linux /sys that refuses new files")
def test_output_directory_not_writable_even_for_root(capsys: Capsys, demo_cache: Path, demo_model: Path) -> None:
    before = snapshot(demo_cache.parent)
    result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", "/sys/quant.cache")
    assert_fails_cleanly(result, code=1, names=["/sys/quant.cache", "permission denied"], before=before,
                         roots=(demo_cache.parent,))
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", "/sys/model.int8.onnx")
    assert_fails_cleanly(result, code=1, names=["/sys/model.int8.onnx", "permission denied"])
    result = run_cli(capsys, "run", "--out", "/sys/quant-run")
    assert_fails_cleanly(result, code=1, names=["/sys/quant-run", "cannot create output directory"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root ignores directory permissions; the /sys test covers the read-only case")
def test_output_directory_read_only_for_a_user(capsys: Capsys, demo_cache: Path, demo_model: Path) -> None:
    out = demo_cache.parent
    before = snapshot(out)
    out.chmod(0o555)
    try:
        result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", demo_cache, "--force")
        assert_fails_cleanly(result, code=1, names=[str(out), "permission denied"], before=before, roots=(out,))
    finally:
        out.chmod(0o755)


def test_file_where_a_directory_is_expected(capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("I am a file")
    before = snapshot(tmp_path)
    result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", blocker / "m.cache")
    assert_fails_cleanly(result, code=1, names=["not_a_dir", "is a file, not a directory"], before=before,
                         roots=(tmp_path,))
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", blocker / "sub" / "m.int8.onnx")
    assert_fails_cleanly(result, code=1, names=["not_a_dir"], before=before, roots=(tmp_path,))
    result = run_cli(capsys, "run", "--out", blocker)
    assert_fails_cleanly(result, code=2, names=["--out", "not_a_dir", "is a file"], before=before, roots=(tmp_path,))
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", tmp_path)
    assert_fails_cleanly(result, code=2, names=["-o", "is a directory"], before=before, roots=(tmp_path,))


def test_missing_output_directory(capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    before = snapshot(tmp_path)
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", tmp_path / "nope" / "m.int8.onnx")
    assert_fails_cleanly(result, code=1, names=["nope", "does not exist", "create it first"], before=before,
                         roots=(tmp_path,))


# --------------------------------------------------------------------------------------------
# Disk full: a file-size limit (RLIMIT_FSIZE) makes writes past it fail with EFBIG
# --------------------------------------------------------------------------------------------


def _quant_with_file_limit(limit: int, *args: str | Path) -> subprocess.CompletedProcess[str]:
    resource = pytest.importorskip("resource")  # POSIX only

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "quant", "-q", *map(str, args)],
        preexec_fn=limit_files, capture_output=True, text=True, timeout=120, check=False, cwd=REPO, env=env,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("quant: error: "), proc.stderr
    return lines[0]


def test_disk_full_while_building(demo_cache: Path, demo_model: Path) -> None:
    """The INT8 model (~130 kB) does not fit under a 40 kB limit: the previous model stays."""
    out = demo_cache.parent
    previous = out / "model.int8.onnx"
    previous.write_bytes(b"previous model bytes")
    before = snapshot(out)
    proc = _quant_with_file_limit(40_000, "build", demo_model, "--cache", demo_cache, "-o", previous)
    line = _one_error_line(proc)
    assert "model.int8.onnx" in line and "file size limit exceeded" in line
    assert snapshot(out) == before
    assert not temp_leftovers(out)


def test_disk_full_while_calibrating(demo_cache: Path, demo_model: Path) -> None:
    """The statistics file (~23 kB) does not fit under 4 kB: none of the three files is replaced."""
    out = demo_cache.parent
    before = snapshot(out)
    proc = _quant_with_file_limit(4_000, "calibrate", demo_model, "--data", "demo:calib", "--cache", demo_cache,
                                  "--force", "--method", "minmax")
    line = _one_error_line(proc)
    assert "model.cache" in line and "file size limit exceeded" in line
    assert snapshot(out) == before
    assert not temp_leftovers(out)


def test_disk_full_while_writing_a_report(tmp_path: Path, demo_model: Path) -> None:
    from quant.report.schema import load_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "quant", "-q", "eval", str(demo_model), "--data", "demo:eval",
                           "--max-samples", "64", "--precisions", "fp32", "--report", str(run_dir / "report.json")],
                          capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    (run_dir / "report.html").write_text("<html>previous report</html>")
    before = snapshot(run_dir)
    proc = _quant_with_file_limit(2_000, "report", run_dir / "report.json", "-o", run_dir / "report.html")
    line = _one_error_line(proc)
    assert "report.html" in line and "file size limit exceeded" in line
    assert snapshot(run_dir) == before
    load_report(run_dir / "report.json")


# --------------------------------------------------------------------------------------------
# Output equal to an input
# --------------------------------------------------------------------------------------------


def test_output_equal_to_an_input(capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(demo_model, model)
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    cache = demo_cache
    side = Path(str(cache) + ".json")
    report = tmp_path / "report.json"
    result = run_cli(capsys, "eval", model, "--data", data, "--precisions", "fp32", "--report", report)
    assert result.code == 0, result.err
    roots = (tmp_path,)
    before = snapshot(*roots)
    rows: list[tuple[list[str | Path], str]] = [
        (["calibrate", model, "--data", data, "--cache", model], "model.onnx"),
        (["calibrate", model, "--data", data, "--cache", data], "data.npy"),
        (["build", model, "--cache", cache, "-o", model], "model.onnx"),
        (["build", model, "--cache", cache, "-o", cache], "model.cache"),
        (["build", model, "--cache", cache, "-o", side], "model.cache.json"),
        (["eval", model, "--data", data, "--precisions", "fp32", "--report", data], "data.npy"),
        (["eval", model, "--data", data, "--precisions", "fp32", "--report", model], "model.onnx"),
        (["eval", model, "--data", data, "--cache", cache, "--precisions", "fp32,int8", "--report", cache], "model.cache"),
        (["eval", model, "--data", data, "--cache", cache, "--precisions", "fp32,int8", "--report", side], "model.cache.json"),
        (["report", report, "-o", report], "report.json"),
    ]
    for args, name in rows:
        result = run_cli(capsys, *args)
        line = assert_fails_cleanly(result, code=1, names=[name, "same file as input"], before=before, roots=roots)
        assert "choose another output path" in line


def test_output_equal_to_an_input_through_another_spelling(
    capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./x, a/../x and a symlink all name the same file."""
    model = tmp_path / "model.onnx"
    shutil.copy(demo_model, model)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for output in ("./model.onnx", "sub/../model.onnx", str(link)):
        result = run_cli(capsys, "build", "model.onnx", "--precision", "fp16", "-o", output)
        assert_fails_cleanly(result, code=1, names=["same file as input"], before=before, roots=(tmp_path,))
