"""``--cpu``: the ONNX Runtime INT8 form built for a CPU class, recorded, and reported honestly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant.backends.cpu import host_cpu
from quant.cli.main import main
from quant.demo import demo_model_path
from tests.cli_helpers import run_main as cli


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("cpu") / "demo.cache"
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", str(demo_model_path()), "--data", "demo:calib", "--cache", str(cache)])
    assert exc.value.code in (0, None)
    return cache


def _meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@pytest.mark.parametrize(("cpu", "dtype"), [("avx2", np.uint8), ("vnni", np.int8), ("arm", np.int8)])
def test_build_for_a_cpu_class_stores_its_weight_type_and_metadata(
    cpu: str, dtype: type, demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.int8-ort.onnx"
    code, _, err = cli(["build", str(demo_model_path()), "--cache", str(demo_cache), "--target", "onnxruntime",
                        "--cpu", cpu, "-o", str(out)], capsys)
    assert code == 0, err
    model = onnx.load(str(out))
    assert _meta(model)["quant.cpu_class"] == cpu
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith("_quantized")
               and inits[n.input[0]].ndim >= 2]
    assert len(weights) == 5
    assert {inits[n.input[0]].dtype for n in weights} == {np.dtype(dtype)}


def test_tensorrt_target_ignores_cpu(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.int8.onnx"
    code, _, err = cli(["build", str(demo_model_path()), "--cache", str(demo_cache), "--cpu", "avx2", "-o", str(out)],
                       capsys)
    assert code == 0, err
    model = onnx.load(str(out))
    assert "quant.cpu_class" not in _meta(model)
    assert all(t.data_type != onnx.TensorProto.UINT8 for t in model.graph.initializer)


def test_eval_names_the_arithmetic_and_warns_when_built_for_another_cpu(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    here = host_cpu().int8_class
    other = "avx2" if here != "avx2" else "vnni"
    report = tmp_path / "r.json"
    code, out, err = cli(["eval", str(demo_model_path()), "--data", "demo:eval", "--max-samples", "64",
                          "--cache", str(demo_cache), "--precisions", "fp32,int8,int8-ort", "--cpu", other,
                          "--report", str(report)], capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if "built for cpu class" in line]
    assert len(warning) == 1 and f"'{other}'" in warning[0] and f"'{here}'" in warning[0], err
    env = json.loads(report.read_text())["environment"]
    assert env["cpu_int8_class"] == here
    assert env["cpu_int8_features"] == list(host_cpu().features)
    assert env["int8_arithmetic"]["int8"].startswith("exact")
    assert env["int8_arithmetic"]["int8-ort"].startswith("fused") and f"built for cpu {other}" in env["int8_arithmetic"]["int8-ort"]
    assert "arithmetic:   INT8 arithmetic on" in out
    build = json.loads(report.read_text())["build"]["int8-ort"]
    assert build["cpu"] == other and build["weight_type"] == ("uint8" if other == "avx2" else "int8")


def test_eval_auto_builds_for_this_cpu_without_warning(
    demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = cli(["eval", str(demo_model_path()), "--data", "demo:eval", "--max-samples", "32",
                           "--cache", str(demo_cache), "--precisions", "fp32,int8-ort"], capsys)
    assert code == 0, err
    assert "built for cpu class" not in err


def test_bad_cpu_is_a_usage_error(demo_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(["build", str(demo_model_path()), "--cache", str(demo_cache), "--target", "onnxruntime",
                        "--cpu", "sse", "-o", str(tmp_path / "x.onnx")], capsys)
    assert code == 2 and "--cpu" in err and not (tmp_path / "x.onnx").exists()
