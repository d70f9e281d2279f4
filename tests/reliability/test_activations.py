"""Activations that cannot be calibrated: NaN / inf reaching a calibrated tensor fails naming the
tensor and the batch; a tensor that is all zeros has no range (documented behaviour: it is left
out of the cache and stays float in the Q/DQ model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.cache.trt import parse_trt_cache
from tests.reliability.helpers import (
    assert_fails_cleanly,
    log_model,
    run_cli,
    save,
    snapshot,
    zero_branch_model,
)

Capsys = pytest.CaptureFixture[str]


def _positive(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 4), dtype=np.float32) + 0.5


@pytest.fixture
def log_setup(tmp_path: Path, capsys: Capsys) -> tuple[Path, Path]:
    """The Log model and a previous good calibration of it in ``out``."""
    model = save(log_model(), tmp_path / "log.onnx")
    good = tmp_path / "good.npy"
    np.save(good, _positive(20))
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(capsys, "calibrate", model, "--data", good, "--cache", out / "log.cache", "--batch-size", "4")
    assert result.code == 0, result.err
    return model, out


@pytest.mark.parametrize(
    ("value", "tensor", "what"),
    [(-1.0, "log_out", "NaN"), (0.0, "log_out", "inf"), (np.nan, "input", "NaN"), (np.inf, "input", "inf")],
    ids=["log-of-negative", "log-of-zero", "nan-in-data", "inf-in-data"],
)
def test_non_finite_activation_names_tensor_and_batch(
    capsys: Capsys, tmp_path: Path, log_setup: tuple[Path, Path], value: float, tensor: str, what: str
) -> None:
    model, out = log_setup
    data = _positive(20)
    data[13, 2] = value  # sample 13 is in batch 3 (batches of 4, counted from 0)
    bad = tmp_path / "bad.npy"
    np.save(bad, data)
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", bad, "--cache", out / "log.cache", "--batch-size", "4")
    line = assert_fails_cleanly(result, code=1, names=[f"tensor '{tensor}'", "batch 3"], before=before, roots=(out,))
    assert what.lower() in line.lower()


def test_all_zero_tensor_stays_float_end_to_end(capsys: Capsys, tmp_path: Path) -> None:
    """amax 0 means "no range": the tensor is listed in the sidecar's no_range, left out of the
    TensorRT cache (TensorRT then has no scale for it and keeps it in higher precision), gets no
    Q/DQ in the built model, and the model still evaluates. No minimal fake range is invented."""
    model = save(zero_branch_model(), tmp_path / "zero.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    cache = tmp_path / "zero.cache"
    result = run_cli(capsys, "calibrate", model, "--data", data, "--cache", cache, quiet=False)
    assert result.code == 0, result.err
    assert "all zeros" in result.err and "'zero_out'" in result.err  # logged, not an error

    parsed = parse_trt_cache(cache.read_text(), source=str(cache))
    zero = {"zero_out", "zero_relu", "zero_mm"}
    assert not zero & set(parsed.amax) and not zero & set(parsed.zero_scale_names)
    assert {"input", "mm_out", "relu_out", "output"} <= set(parsed.amax)
    side = json.loads(Path(str(cache) + ".json").read_text())
    assert set(side["calibration"]["no_range"]) == zero

    int8 = tmp_path / "zero.int8.onnx"
    result = run_cli(capsys, "build", model, "--cache", cache, "-o", int8)
    assert result.code == 0, result.err
    assert "zero_relu: no range in cache" in result.out
    m = onnx.load(str(int8))
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert "relu_out" in quantized and not zero & quantized

    result = run_cli(capsys, "eval", model, "--data", data, "--cache", cache, "--precisions", "fp32,int8",
                     "--report", tmp_path / "report.json")
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["calibration"]["amax"]  # the report summarises the ranges it used


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_all_zero_tensor_with_every_method(capsys: Capsys, tmp_path: Path, method: str) -> None:
    model = save(zero_branch_model(), tmp_path / "zero.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32))
    cache = tmp_path / "zero.cache"
    result = run_cli(capsys, "calibrate", model, "--data", data, "--cache", cache, "--method", method)
    assert result.code == 0, result.err
    side = json.loads(Path(str(cache) + ".json").read_text())
    assert set(side["calibration"]["no_range"]) == {"zero_out", "zero_relu", "zero_mm"}
    assert "zero_relu" not in cache.read_text()
