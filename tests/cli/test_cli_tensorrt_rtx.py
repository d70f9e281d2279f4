"""``--backend tensorrt-rtx``, ``--check-trt`` and ``quant inspect --trt`` through the CLI, with the
real TensorRT-RTX (no GPU): the embedded demo from its cache, a Q/DQ ONNX model directly, and the
one-line errors (exit codes, nothing half-written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant.backends.tensorrt import tensorrt_rtx_available
from quant.cli.main import main
from quant.demo import demo_model_path

pytestmark = [
    pytest.mark.tensorrt_rtx,
    pytest.mark.skipif(not tensorrt_rtx_available(), reason="TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]'"),
]


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["-q", *args])
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo calibrated by quant on 64 of its calibration digits (minmax: fast)."""
    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    cache = tmp_path_factory.mktemp("demo") / "model.cache"
    api.calibrate(None, DataOptions("demo:calib", max_samples=64), cache=cache,
                  options=CalibrationOptions(method="minmax", scope="qdq"))
    return cache


def test_demo_engine_from_model_and_cache(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "model.engine"
    code, out, err = _run(["build", str(demo_model_path()), "--cache", str(demo_cache), "--backend", "tensorrt-rtx",
                           "-o", str(engine)], capsys)
    assert code == 0, err
    assert "(int8, int8-qdq-from-cache, TensorRT-RTX 1." in out
    side = json.loads((tmp_path / "model.engine.json").read_text())
    assert side["trt_flavor"] == "tensorrt-rtx" and side["trt_version"].startswith("1.")
    assert side["cache"] == str(demo_cache) and side["engine_bytes"] == engine.stat().st_size
    # the demo's batch is its only dynamic dimension: a 1/8/32 profile, said so
    assert any("profile input:1x1x28x28,8x1x28x28,32x1x28x28" in m for m in side["messages"])


def test_check_trt_then_engine_from_the_qdq_onnx(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    qdq = tmp_path / "model.int8.onnx"
    code, out, err = _run(["build", str(demo_model_path()), "--cache", str(demo_cache), "-o", str(qdq), "--check-trt"], capsys)
    assert code == 0, err
    assert "TensorRT-RTX 1." in out and "accepts it: " in out and "5 quantize" in out and "(not written)" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.int8.onnx"]
    engine = tmp_path / "model.engine"
    code, out, err = _run(["build", str(qdq), "--backend", "tensorrt-rtx", "--compute-capability", "sm89,12.0",
                           "--shapes", "input:1x1x28x28,16x1x28x28,64x1x28x28", "-o", str(engine)], capsys)
    assert code == 0, err
    assert "(int8, int8-qdq, TensorRT-RTX" in out and "compute capabilities: 8.9, 12.0" in out
    side = json.loads((tmp_path / "model.engine.json").read_text())
    assert side["compute_capabilities"] == ["8.9", "12.0"] and side["mode"] == "int8-qdq"

    code, out, err = _run(["inspect", str(qdq), "--trt"], capsys)
    assert code == 0, err
    assert "TensorRT-RTX 1." in out and "QUANTIZE" in out and "quantize layers  5: input_QuantizeLinear" in out


def test_errors_are_one_line_and_write_nothing(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = str(demo_model_path())
    engine = str(tmp_path / "m.engine")
    cases = [
        (["build", model, "--backend", "tensorrt-rtx", "--cache", str(demo_cache), "--compute-capability", "9.0",
          "-o", engine], 2, "'9.0' is not one TensorRT-RTX builds for"),
        (["build", model, "--backend", "tensorrt-rtx", "--cache", str(demo_cache), "--compute-capability", "current,8.9",
          "-o", engine], 2, "current stands alone"),
        (["build", model, "--backend", "tensorrt-rtx", "--cache", str(demo_cache), "--data", "demo:calib",
          "-o", engine], 2, "does not have; drop --data"),
        (["build", model, "--backend", "tensorrt-rtx", "-o", engine], 2, "has no INT8 calibrators: run 'quant calibrate"),
    ]
    # A Q/DQ model with a non-zero zero point: TensorRT's parser refuses it, naming the node.
    qdq = tmp_path / "bad.int8.onnx"
    code, _out, err = _run(["build", model, "--cache", str(demo_cache), "-o", str(qdq)], capsys)
    assert code == 0, err
    bad = onnx.load(str(qdq))
    for init in bad.graph.initializer:
        if init.name == "input_zero_point":
            init.CopyFrom(numpy_helper.from_array(np.array(5, np.int8), init.name))
    onnx.save(bad, str(qdq))
    cases.append((["build", str(qdq), "--backend", "tensorrt-rtx", "-o", engine], 1,
                  "node 'input_QuantizeLinear' (QuantizeLinear): Assertion failed: shiftIsAllZeros(zeroPoint): "
                  "Non-zero zero point is not supported"))
    cases.append((["inspect", str(qdq), "--trt"], 1, "Non-zero zero point is not supported"))
    for args, want_code, want in cases:
        code, _out, err = _run(args, capsys)
        lines = err.strip().splitlines()
        assert code == want_code, (args, err)
        assert len(lines) == 1 and want in lines[0], (args, err)
        assert not Path(engine).exists() and not Path(engine + ".json").exists()
