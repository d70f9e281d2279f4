"""Foreign caches through `quant build --cache` and `quant inspect`: every TensorRT variant
(colons in names, short hex, zero scales, TensorRT-internal names, both header version styles,
the three-number legacy header) and ONNX Runtime's three calibration tables; stale quant caches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.cache.trt import hex_to_scale
from tests.cli_helpers import run_main
from tests.models import make_model

# Names as TensorFlow and PyTorch exporters write them: colons, slashes, bare numbers.
TENSORS = ["input:0", "conv1/BiasAdd:0", "relu1:0", "191", "output"]
QDQ_INPUTS = ["input:0", "relu1:0"]  # what INT8 needs: the inputs of the two Convs
HEX = {
    "input:0": "3c010204",  # amax 1.0
    "conv1/BiasAdd:0": "3d237c3a",
    "relu1:0": "3d0a0a0a",
    "191": "3d4ccccd",
    "output": "3c23d70a",
}


def colon_model(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "conv1.weight"),
        numpy_helper.from_array((rng.standard_normal((4,)) * 0.1).astype(np.float32), "conv1.bias"),
        numpy_helper.from_array((rng.standard_normal((2, 4, 3, 3)) * 0.3).astype(np.float32), "conv2.weight"),
    ]
    nodes = [
        helper.make_node("Conv", ["input:0", "conv1.weight", "conv1.bias"], ["conv1/BiasAdd:0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1/BiasAdd:0"], ["relu1:0"]),
        helper.make_node("Conv", ["relu1:0", "conv2.weight"], ["191"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["191"], ["output"]),
    ]
    inputs = [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, ["N", 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 8, 8])]
    return make_model(nodes, inputs, outputs, inits, name="colon_model")


def trt_text(header: str, entries: dict[str, str], newline: str = "\n") -> str:
    return newline.join([header, *(f"{k}: {v}" for k, v in entries.items())]) + newline


INTERNAL = {"(Unnamed Layer* 3) [Shuffle]_output": "3c010a14", "(Unnamed Layer* 7) [Constant]_output": "3d000000"}

# name -> (file text, format, TensorRT version text, missing (of what INT8 needs), unknown, internal)
TRT_VARIANTS: dict[str, tuple[str, str, str | None, list[str], int, int]] = {
    "trt8-colons": (trt_text("TRT-8600-EntropyCalibration2", HEX), "tensorrt", "8.6.0", [], 0, 0),
    "trt10-minmax": (trt_text("TRT-100300-MinMaxCalibration", HEX), "tensorrt", "10.3.0", [], 0, 0),
    "trt7-entropy1": (trt_text("TRT-7203-EntropyCalibration", HEX), "tensorrt", "7.2.3", [], 0, 0),
    "short-hex-and-zero": (
        trt_text("TRT-8600-EntropyCalibration2", {**HEX, "relu1:0": "0", "191": "a3d7"}),
        "tensorrt",
        "8.6.0",
        ["relu1:0"],
        0,
        0,
    ),
    "trt-internal-names": (
        trt_text("TRT-101000-EntropyCalibration2", {**HEX, **INTERNAL}),
        "tensorrt",
        "10.10.0",
        [],
        0,
        2,
    ),
    "unknown-entry": (
        trt_text("TRT-8600-EntropyCalibration2", {**HEX, "onnx::MatMul_398_output": "3c010a14"}),
        "tensorrt",
        "8.6.0",
        [],
        1,
        0,
    ),
    "legacy-header": (trt_text("1 0.5 2048", HEX), "tensorrt-legacy", None, [], 0, 0),
    "crlf-no-final-newline": (
        trt_text("TRT-8600-EntropyCalibration2", HEX, newline="\r\n").rstrip("\r\n"),
        "tensorrt",
        "8.6.0",
        [],
        0,
        0,
    ),
}

ORT_RANGES = {"input:0": 1.0, "conv1/BiasAdd:0": 5.0, "relu1:0": 4.25, "191": 6.5, "output": 1.25}


def error_line(err: str) -> str:
    """The one error line (info logging may precede it on stderr)."""
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]




@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(colon_model(), path)
    return path


def write_ort_tables(folder: Path, ranges: dict[str, float]) -> dict[str, Path]:
    """calibration.json / .cache / .flatbuffers written by ONNX Runtime's own writer."""
    pytest.importorskip("onnxruntime.quantization")
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    folder.mkdir(exist_ok=True)
    data = {
        n: TensorData(lowest=np.array(-a, dtype=np.float32), highest=np.array(a, dtype=np.float32))
        for n, a in ranges.items()
    }
    write_calibration_table(TensorsData(CalibrationMethod.MinMax, data), dir=str(folder))
    return {ext: folder / f"calibration.{ext}" for ext in ("json", "cache", "flatbuffers")}


def qdq_scales(path: Path) -> dict[str, float]:
    """Activation tensor -> scale of the QuantizeLinear on it in a built model."""
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node if n.op_type == "Constant"
    }
    out: dict[str, float] = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in TENSORS:
            scale = inits.get(n.input[1], consts.get(n.input[1]))
            assert scale is not None
            out[n.input[0]] = float(np.asarray(scale).reshape(-1)[0])
    return out


def save_npz(path: Path, seed: int) -> None:
    arrays: dict[str, Any] = {"input:0": np.random.default_rng(seed).standard_normal((8, 3, 8, 8)).astype(np.float32)}
    np.savez(path, **arrays)


def build(model: Path, cache: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    return run_main(["build", str(model), "--cache", str(cache), "-o", str(model.parent / "out.onnx"), *extra], capsys)


# --------------------------------------------------------------------------------------------
# TensorRT caches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(TRT_VARIANTS))
def test_build_with_tensorrt_cache(model: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    text, _fmt, _version, missing, unknown, internal = TRT_VARIANTS[variant]
    cache = model.parent / f"{variant}.cache"
    cache.write_bytes(text.encode())
    code, out, err = build(model, cache, capsys)
    assert code == 0, err
    assert f"quantized activations: {len(QDQ_INPUTS) - len(missing)}" in out
    if missing:
        assert f"tensors without a range in the cache: {len(missing)} (first: {missing[0]})" in out
    else:
        assert "without a range" not in out
    if unknown or internal:
        assert (
            f"{unknown + internal} cache entries are not tensors of model 'm.onnx' "
            f"({internal} TensorRT-internal, {unknown} unknown)" in err
        )
    else:
        assert "not tensors of model" not in err
    scales = qdq_scales(model.parent / "out.onnx")
    assert set(scales) == set(QDQ_INPUTS) - set(missing)
    for name, scale in scales.items():  # the cache's scale is used as is
        assert scale == pytest.approx(hex_to_scale(HEX[name]), rel=1e-6)


def test_zero_scale_is_no_range_and_strict_fails(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = TRT_VARIANTS["short-hex-and-zero"][0]
    cache = model.parent / "zero.cache"
    cache.write_text(text)
    code, _out, err = build(model, cache, capsys, "--strict")
    assert code == 1
    line = error_line(err)
    assert "no range for 1 tensors that INT8 needs (first: 'relu1:0')" in line
    assert "--strict" in line
    assert not (model.parent / "out.onnx").exists()


def test_strict_accepts_complete_foreign_cache(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = model.parent / "full.cache"
    cache.write_text(TRT_VARIANTS["trt-internal-names"][0])
    code, _out, err = build(model, cache, capsys, "--strict")
    assert code == 0, err


def test_cache_of_another_model_fails(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = model.parent / "other.cache"
    cache.write_text(trt_text("TRT-8600-EntropyCalibration2", {f"layer{i}": "3c010a14" for i in range(6)} | {"191": "3c010a14"}))
    code, _out, err = build(model, cache, capsys)
    assert code == 1
    assert "was it made for another model?" in error_line(err)


@pytest.mark.parametrize("variant", list(TRT_VARIANTS))
def test_inspect_tensorrt_cache(model: Path, capsys: pytest.CaptureFixture[str], variant: str) -> None:
    text, fmt, version, _missing, _unknown, _internal = TRT_VARIANTS[variant]
    cache = model.parent / f"{variant}.cache"
    cache.write_bytes(text.encode())
    code, out, err = run_main(["inspect", str(cache), "--sort", "amax", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["cache"]["format"] == fmt
    assert info["cache"]["trt_version_text"] == version
    entries = [line for line in text.replace("\r", "").splitlines()[1:] if line]
    assert info["cache"]["tensors"] == len(entries)
    amax = [r["amax"] for r in info["tensors"] if r["amax"] is not None]
    assert amax == sorted(amax, reverse=True)
    assert [r["amax"] for r in info["tensors"]].count(None) == info["cache"]["zero_scale"]
    code, out, err = run_main(["inspect", "cache", str(cache), "--sort", "name"], capsys)
    assert code == 0, err
    if version is not None:
        assert f"TensorRT   {version}" in out
    assert f"algorithm  {info['cache']['algorithm']}" in out
    assert f"tensors    {len(entries)}" in out
    assert "relu1:0" in out


# --------------------------------------------------------------------------------------------
# ONNX Runtime tables
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["json", "cache", "flatbuffers"])
def test_build_and_inspect_onnxruntime_tables(model: Path, capsys: pytest.CaptureFixture[str], ext: str) -> None:
    tables = write_ort_tables(model.parent / "ort", ORT_RANGES)
    code, out, err = build(model, tables[ext], capsys, "--strict")
    assert code == 0, err
    assert "quantized activations: 2" in out
    scales = qdq_scales(model.parent / "out.onnx")
    for name in QDQ_INPUTS:
        assert scales[name] == pytest.approx(ORT_RANGES[name] / 127, rel=1e-6)
    code, out, err = run_main(["inspect", str(tables[ext]), "--sort", "amax", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["cache"]["format"] == {"json": "onnxruntime-json", "cache": "onnxruntime-text", "flatbuffers": "onnxruntime-flatbuffers"}[ext]
    assert info["cache"]["trt_version"] is None and info["cache"]["tensors"] == 5
    assert [r["name"] for r in info["tensors"]] == sorted(ORT_RANGES, key=lambda n: -ORT_RANGES[n])


def test_onnxruntime_table_missing_tensor(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ranges = {k: v for k, v in ORT_RANGES.items() if k != "input:0"} | {"ort_only_tensor": 2.0}
    tables = write_ort_tables(model.parent / "ort", ranges)
    code, out, err = build(model, tables["json"], capsys)
    assert code == 0, err
    assert "tensors without a range in the cache: 1 (first: input:0)" in out
    assert "1 cache entries are not tensors of model 'm.onnx' (0 TensorRT-internal, 1 unknown)" in err
    code, _out, err = build(model, tables["json"], capsys, "--strict")
    assert code == 1 and "first: 'input:0'" in err


def test_build_summary_lists_missing_and_unknown(model: Path) -> None:
    from quant import api
    from quant.config import BuildOptions

    cache = model.parent / "mixed.cache"
    cache.write_text(trt_text("TRT-8600-EntropyCalibration2", {**HEX, "relu1:0": "0", "stray": "3c010a14", **INTERNAL}))
    outcome = api.build(model, output=model.parent / "o.onnx", cache=cache, options=BuildOptions())
    summary = outcome.summary()
    assert summary["cache_missing"] == ["relu1:0"]
    assert summary["cache_unknown"] == ["stray"]
    assert summary["cache_internal"] == list(INTERNAL)


# --------------------------------------------------------------------------------------------
# quant's own caches: staleness at build time, inspect of statistics
# --------------------------------------------------------------------------------------------


def test_build_warns_on_stale_cache_and_strict_fails(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = model.parent / "calib.npz"
    save_npz(data, 0)
    cache = model.parent / "q.cache"
    code, _out, err = run_main(["calibrate", str(model), "--data", str(data), "--cache", str(cache)], capsys)
    assert code == 0, err
    code, _out, err = build(model, cache, capsys)
    assert code == 0 and "stale" not in err
    onnx.save(colon_model(seed=3), model)  # new weights, same graph
    code, _out, err = build(model, cache, capsys)
    assert code == 0
    assert "warning: cache" in err and "is stale: model weights changed" in err
    code, _out, err = build(model, cache, capsys, "--strict")
    assert code == 1
    assert "model weights changed" in error_line(err)


def test_inspect_stats_file(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = model.parent / "calib.npz"
    save_npz(data, 1)
    cache = model.parent / "q.cache"
    assert run_main(["calibrate", str(model), "--data", str(data), "--cache", str(cache)], capsys)[0] == 0
    stats = model.parent / "q.cache.stats.npz"
    code, out, err = run_main(["inspect", str(stats), "--sort", "amax", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["stats"]["num_samples"] == 8 and info["stats"]["tensors"] == len(TENSORS)
    absmax = [r["absmax"] for r in info["tensors"]]
    assert absmax == sorted(absmax, reverse=True)
    code, out, err = run_main(["inspect", "stats", str(stats)], capsys)
    assert code == 0 and "samples    8 (1 data shard(s))" in out and "relu1:0" in out
    code, out, err = run_main(["inspect", str(cache)], capsys)
    assert code == 0 and f"stats      {stats} (8 samples, 5 tensors)" in out


def test_inspect_argument_errors(model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["inspect", "table", str(model)], capsys)
    assert code == 2 and "KIND PATH" in error_line(err)
    code, _out, err = run_main(["inspect", str(model.parent / "none.cache")], capsys)
    assert code == 1 and "no such file" in error_line(err)
    bad = model.parent / "bad.cache"
    bad.write_text("TRT-8600-EntropyCalibration2\ninput:0 3c010a14\n")
    code, _out, err = run_main(["inspect", str(bad)], capsys)
    assert code == 1 and "line 2" in error_line(err)
