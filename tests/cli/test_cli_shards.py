"""quant eval --shard / --shards, quant merge-reports, and Ctrl-C during a Ray run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import run_main as run
from tests.models import mlp_eval_files

SAMPLES = 30


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return mlp_eval_files(tmp_path_factory.mktemp("cli_shards"), samples=SAMPLES, seed=11)


def _eval_args(files: tuple[Path, Path, Path]) -> list[str]:
    model, data, cache = files
    return ["eval", str(model), "--data", str(data), "--cache", str(cache), "--precisions", "fp32,int8",
            "--batch-size", "4", "--threads", "1"]


def _metrics(path: Path) -> list[tuple[object, ...]]:
    doc = json.loads(path.read_text())
    rows = []
    for p in doc["evaluation"]["precisions"]:
        c = p["classification"]
        rows.append((p["name"], c["top1_correct"], c["top5_correct"], c["agree_count"], c["num_samples"]))
        for f in p["fidelity"]:
            rows.append(tuple(f[k] for k in ("sqnr_db", "cosine", "mean_rel_error", "max_abs_error", "num_samples")))
    return rows


def _same(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) and isinstance(y, float):
                if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                    return False
            elif x != y:
                return False
    return len(a) == len(b)


def test_shard_reports_merge_to_the_unsharded_report(files: tuple[Path, Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole.json"
    code, _, err = run([*_eval_args(files), "--report", str(whole)], capsys)
    assert code == 0, err
    parts = []
    for k in (1, 2, 3):
        part = tmp_path / f"part{k}.json"
        code, _, err = run([*_eval_args(files), "--shard", f"{k}/3", "--report", str(part)], capsys)
        assert code == 0, err
        parts.append(part)
    merged = tmp_path / "merged.json"
    code, out, err = run(["merge-reports", str(parts[2]), str(parts[0]), str(parts[1]), "-o", str(merged)], capsys)
    assert code == 0, err
    assert f"merged 3 shard reports (evaluation, {SAMPLES} samples)" in out
    assert _same(_metrics(merged), _metrics(whole))
    # --shards N with the local executor: the same numbers in one command.
    local = tmp_path / "local.json"
    code, _, err = run([*_eval_args(files), "--shards", "2", "--report", str(local)], capsys)
    assert code == 0, err
    assert _same(_metrics(local), _metrics(whole))


def test_merge_reports_refuses_a_foreign_shard_in_one_line(files: tuple[Path, Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    assert run([*_eval_args(files), "--shard", "1/2", "--report", str(a)], capsys)[0] == 0
    assert run([*_eval_args(files)[:-6], "--precisions", "fp32", "--batch-size", "4", "--shard", "2/2",
                "--report", str(b)], capsys)[0] == 0
    out = tmp_path / "m.json"
    code, _, err = run(["merge-reports", str(a), str(b), "-o", str(out)], capsys)
    assert code == 1 and "another precision set" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run([*_eval_args(files), "--shard", "3/2"], capsys)
    assert code == 2 and "--shard must be K/N" in err
    code, _, err = run([*_eval_args(files), "--executor", "ray"], capsys)
    assert code == 2 and "need --shards N" in err


def test_ctrl_c_cancels_the_ray_tasks_and_writes_no_report(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'quant[ray]')")
    model, _, cache = files
    # Enough samples that the shard tasks are still running when Ctrl-C comes.
    big = tmp_path / "big.npz"
    rng = np.random.default_rng(0)
    np.savez(big, input=rng.standard_normal((400_000, 16)).astype(np.float32))
    report = tmp_path / "report.json"
    env = {**os.environ, "RAY_NUM_CPUS": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "quant", "eval", str(model), "--data", str(big), "--cache", str(cache),
         "--precisions", "fp32,int8", "--batch-size", "1", "--shards", "2", "--executor", "ray",
         "--report", str(report), "--verbose"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    time.sleep(15)  # Ray starts (seconds on 2 cores) and the tasks begin
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.json") or p.suffix == ".tmp"]


def test_sensitivity_layer_shard_reports_merge_to_the_unsharded_ranking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_sensitivity import write_outlier_files

    model, data, cache = write_outlier_files(tmp_path)
    base = ["sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--max-samples", "32",
            "--metric", "sqnr", "--exact", "--json"]
    code, out, err = run(base, capsys)
    assert code == 0, err
    whole = json.loads(out)
    parts = []
    for k in (2, 1):
        part = tmp_path / f"s{k}.json"
        code, _, err = run([*base, "--shard", f"{k}/2", "--report", str(part)], capsys)
        assert code == 0, err
        parts.append(part)
    merged = tmp_path / "merged.json"
    code, out, err = run(["merge-reports", *map(str, parts), "-o", str(merged)], capsys)
    assert code == 0, err
    section = json.loads(merged.read_text())["extra"]["sensitivity"]
    assert [x["name"] for x in section["layers"]] == [x["name"] for x in whole["layers"]]
    assert [x["score"] for x in section["layers"]] == [x["score"] for x in whole["layers"]]
