"""plan_build: what gets built on each TensorRT version (pure), and has_qdq."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto, helper

from quant.backends.tensorrt.builder import BuildPlan, EngineBuildResult, has_qdq, plan_build
from quant.backends.tensorrt.options import EngineBuildOptions
from quant.backends.tensorrt.sidecar import GpuInfo
from quant.backends.tensorrt.versions import TrtVersion
from quant.errors import UsageError
from tests.models import conv_bn_relu_cnn

V86, V10, V11 = TrtVersion(8, 6, 1), TrtVersion(10, 3, 0), TrtVersion(11, 0, 0)


def plan(version: TrtVersion = V10, *, qdq: bool = False, cache: bool = False, data: bool = False,
         algorithm: str | None = None, **opts: object) -> BuildPlan:
    return plan_build(
        EngineBuildOptions(**opts),  # type: ignore[arg-type]
        version=version,
        model_has_qdq=qdq,
        has_cache=cache,
        has_data=data,
        cache_algorithm=algorithm,
    )


# --------------------------------------------------------------------------------------------
# INT8, TensorRT 8.6-10.x
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V86, V10])
def test_int8_calibrator_with_fp16_fallback(version: TrtVersion) -> None:
    p = plan(version, data=True)
    assert p.mode == "int8-calibrator"
    assert p.flags == ("INT8", "FP16") and not p.strongly_typed and p.transform == "none"
    assert p.calibrator == "entropy2" and not p.uses_cache


def test_int8_without_fp16() -> None:
    assert plan(V10, data=True, allow_fp16=False).flags == ("INT8",)


def test_calibrator_follows_the_cache_header() -> None:
    p = plan(V10, cache=True, algorithm="MinMaxCalibration")
    assert p.calibrator == "minmax" and p.uses_cache
    assert plan(V10, cache=True, algorithm="EntropyCalibration").calibrator == "entropy"
    # Headerless formats (ONNX Runtime) and the legacy calibrator: TensorRT's recommended one.
    assert plan(V10, cache=True, algorithm=None).calibrator == "entropy2"
    assert plan(V10, cache=True, algorithm="LegacyCalibration").calibrator == "entropy2"


def test_explicit_calibrator_wins() -> None:
    assert plan(V10, cache=True, algorithm="MinMaxCalibration", calibrator="entropy2").calibrator == "entropy2"


def test_int8_needs_cache_or_data() -> None:
    with pytest.raises(UsageError, match="needs a calibration cache .*--cache.*--data.*Q/DQ"):
        plan(V10)


def test_dynamic_range() -> None:
    p = plan(V86, cache=True, dynamic_range=True)
    assert p.mode == "int8-dynamic-range" and p.calibrator is None and p.flags == ("INT8", "FP16")
    with_data = plan(V86, cache=True, data=True, dynamic_range=True)
    assert any("data is not used" in m for m in with_data.messages)
    with pytest.raises(UsageError, match="--dynamic-range sets ranges from a cache; pass --cache"):
        plan(V10, data=True, dynamic_range=True)


def test_qdq_model_on_10() -> None:
    p = plan(V10, qdq=True)
    assert p.mode == "int8-qdq" and p.flags == ("INT8", "FP16") and not p.strongly_typed
    assert p.calibrator is None
    p2 = plan(V10, qdq=True, cache=True)
    assert any("cache is ignored" in m for m in p2.messages)


@pytest.mark.parametrize(("opt", "flag"), [({"dynamic_range": True}, "--dynamic-range"), ({"calibrator": "minmax"}, "--calibrator")])
def test_qdq_model_rejects_implicit_options(opt: dict[str, object], flag: str) -> None:
    with pytest.raises(UsageError, match=f"{flag} applies to models without Q/DQ nodes"):
        plan_build(EngineBuildOptions(**opt), version=V10, model_has_qdq=True, has_cache=True, has_data=False)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# INT8, TensorRT 11
# --------------------------------------------------------------------------------------------


def test_qdq_model_on_11_is_strongly_typed() -> None:
    p = plan(V11, qdq=True)
    assert p.mode == "int8-qdq" and p.strongly_typed and p.flags == ()


def test_plain_model_and_cache_on_11_inserts_qdq_first() -> None:
    p = plan(V11, cache=True, data=True)
    assert p.mode == "int8-qdq-from-cache" and p.transform == "insert-qdq" and p.strongly_typed
    assert p.flags == () and p.uses_cache
    assert any("building quant's Q/DQ model from the cache first" in m for m in p.messages)
    assert any("calibration data is not used" in m for m in p.messages)


def test_tensorrt_11_has_no_calibrators() -> None:
    with pytest.raises(UsageError, match=r"TensorRT 11\.0\.0 has no INT8 calibrators: run 'quant calibrate"):
        plan(V11, data=True)
    with pytest.raises(UsageError, match="removed ITensor.set_dynamic_range"):
        plan(V11, cache=True, dynamic_range=True)
    with pytest.raises(UsageError, match="has no INT8 calibrators; drop --calibrator"):
        plan(V11, cache=True, calibrator="minmax")


# --------------------------------------------------------------------------------------------
# FP16 / FP32
# --------------------------------------------------------------------------------------------


def test_fp16() -> None:
    p = plan(V10, precision="fp16")
    assert p.mode == "fp16" and p.flags == ("FP16",) and p.transform == "none"
    p11 = plan(V11, precision="fp16", cache=True)
    assert p11.mode == "fp16-converted" and p11.transform == "to-fp16" and p11.strongly_typed and p11.flags == ()
    assert any("has no FP16 builder flag" in m for m in p11.messages)
    assert any("cache is not used" in m for m in p11.messages)


@pytest.mark.parametrize("version", [V86, V10, V11])
def test_fp32_turns_tf32_off(version: TrtVersion) -> None:
    p = plan(version, precision="fp32")
    assert p.mode == "fp32" and p.flags == () and p.clear_flags == ("TF32",)
    assert p.strongly_typed == (version == V11)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_float_precisions_refuse_qdq_models(precision: str) -> None:
    with pytest.raises(UsageError, match=f"cannot build it as {precision}; use --precision int8"):
        plan(V10, qdq=True, precision=precision)


def test_plan_to_dict() -> None:
    d = plan(V11, cache=True).to_dict()
    assert d["mode"] == "int8-qdq-from-cache" and d["transform"] == "insert-qdq" and d["flags"] == []


# --------------------------------------------------------------------------------------------
# has_qdq, result
# --------------------------------------------------------------------------------------------


def test_has_qdq() -> None:
    assert not has_qdq(conv_bn_relu_cnn())
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [scale, zp],
    )
    assert has_qdq(helper.make_model(graph))
    # A Microsoft-domain QuantizeLinear is not TensorRT's explicit quantization.
    ms = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], domain="com.microsoft")], "ms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [1])], [scale, zp],
    )
    assert not has_qdq(helper.make_model(ms))


def test_result_to_dict(tmp_path: Path) -> None:
    r = EngineBuildResult(
        engine=tmp_path / "m.engine",
        sidecar=tmp_path / "m.engine.json",
        trt_version="10.3.0.26",
        gpu=GpuInfo("NVIDIA H100", "9.0"),
        precision="int8",
        mode="int8-calibrator",
        calibrator="entropy2",
        calibration_batches=0,
        cache=tmp_path / "m.cache",
        cache_reused=True,
    )
    d = r.to_dict()
    assert d["cache_reused"] is True and d["gpu"]["compute_capability"] == "9.0"
    assert d["cache"].endswith("m.cache") and d["cache_written"] is None
