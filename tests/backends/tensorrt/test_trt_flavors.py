"""The two TensorRT flavours (pure logic): capabilities, target compute capabilities, plans,
engine sidecars of TensorRT-RTX engines, quant's own Q/DQ rule, the missing-module message."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from quant.backends.tensorrt.builder import plan_build
from quant.backends.tensorrt.flavors import (
    TENSORRT_RTX,
    capabilities,
    flavor_of,
    import_flavor,
    parse_compute_capabilities,
)
from quant.backends.tensorrt.options import EngineBuildOptions
from quant.backends.tensorrt.qdq_rules import check_qdq_rules, qdq_rule_problems
from quant.backends.tensorrt.sidecar import EngineSidecar, GpuInfo, check_engine_compatible, rtx_runs_on
from quant.errors import BackendUnavailableError, ModelError, UsageError
from tests.models import make_model

RTX = capabilities("tensorrt-rtx", "1.7.1.116")


def test_capabilities_of_each_flavour() -> None:
    t10, t11 = capabilities("tensorrt", "10.3.0"), capabilities("tensorrt", "11.0.0")
    assert t10.has_implicit_int8 and t10.has_precision_flags and not t10.always_strongly_typed
    assert not t11.has_implicit_int8 and t11.always_strongly_typed and not t11.has_compute_capabilities
    assert not RTX.has_implicit_int8 and not RTX.has_precision_flags and RTX.always_strongly_typed
    assert RTX.has_compute_capabilities and RTX.builds_without_gpu and not RTX.has_timing_cache
    assert not RTX.needs_explicit_batch_flag and RTX.describe == "TensorRT-RTX 1.7.1"
    assert flavor_of("tensorrt_rtx") is TENSORRT_RTX
    with pytest.raises(UsageError, match="unknown TensorRT flavour 'tensorrt-llm'"):
        flavor_of("tensorrt-llm")


def test_parse_compute_capabilities() -> None:
    assert parse_compute_capabilities("8.9,12.0") == ("8.9", "12.0")
    assert parse_compute_capabilities(" sm86, SM_120 ") == ("8.6", "12.0")
    assert parse_compute_capabilities("current") == ("current",)
    assert parse_compute_capabilities(None) == parse_compute_capabilities("") == ()
    with pytest.raises(UsageError, match="'9.0' is not one TensorRT-RTX builds for"):
        parse_compute_capabilities("8.9,9.0")
    with pytest.raises(UsageError, match="current stands alone"):
        parse_compute_capabilities("current,8.9")
    with pytest.raises(UsageError, match="names 8.9 twice"):
        parse_compute_capabilities("8.9,sm89")
    with pytest.raises(UsageError):
        EngineBuildOptions(compute_capabilities=("9.0",))
    opts = EngineBuildOptions(compute_capabilities=("8.9", "12.0"))
    assert EngineBuildOptions.from_dict(opts.to_dict()) == opts


def test_rtx_plans_like_tensorrt_11() -> None:
    qdq = plan_build(EngineBuildOptions(), version=RTX, model_has_qdq=True, has_cache=False, has_data=False)
    assert qdq.mode == "int8-qdq" and qdq.strongly_typed and qdq.flags == ()
    cache = plan_build(EngineBuildOptions(), version=RTX, model_has_qdq=False, has_cache=True, has_data=False)
    assert cache.mode == "int8-qdq-from-cache" and cache.transform == "insert-qdq"
    assert "TensorRT-RTX 1.7.1 has no implicit INT8" in cache.messages[0]
    fp16 = plan_build(EngineBuildOptions(precision="fp16"), version=RTX, model_has_qdq=False, has_cache=False, has_data=False)
    assert fp16.mode == "fp16-converted" and fp16.transform == "to-fp16"
    for opts, want in (
        (EngineBuildOptions(calibrator="entropy2"), "TensorRT-RTX 1.7.1 has no INT8 calibrators"),
        (EngineBuildOptions(dynamic_range=True), "TensorRT-RTX 1.7.1 removed ITensor.set_dynamic_range"),
    ):
        with pytest.raises(UsageError, match=want):
            plan_build(opts, version=RTX, model_has_qdq=False, has_cache=True, has_data=False)


def _rtx_sidecar(targets: tuple[str, ...]) -> EngineSidecar:
    return EngineSidecar(
        trt_version="1.7.1.116", gpu=GpuInfo("TensorRT-RTX targets", ",".join(targets) or "default"),
        precision="int8", mode="int8-qdq", model="model.int8.onnx", trt_flavor="tensorrt-rtx",
        compute_capabilities=targets,
    )


def test_rtx_engines_run_on_their_targets() -> None:
    assert rtx_runs_on(_rtx_sidecar(("8.9", "12.0")), "8.9") and not rtx_runs_on(_rtx_sidecar(("8.9",)), "8.6")
    # default targets: where TensorRT-RTX engines run at all; never on 9.0 (H100/H200)
    assert rtx_runs_on(_rtx_sidecar(()), "12.0") and not rtx_runs_on(_rtx_sidecar(()), "9.0")
    ada = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    check_engine_compatible(_rtx_sidecar(("8.9",)), engine="m.engine", trt_version="1.7.1.116", gpu=ada, trt_flavor="tensorrt-rtx")
    h200 = GpuInfo("NVIDIA H200", "9.0")
    with pytest.raises(ModelError) as err:
        check_engine_compatible(_rtx_sidecar(()), engine="m.engine", trt_version="1.7.1.116", gpu=h200, trt_flavor="tensorrt-rtx")
    msg = str(err.value)
    assert "compute capabilities TensorRT-RTX's default set (this machine has NVIDIA H200 (sm_90))" in msg
    assert "--backend tensorrt-rtx --compute-capability 9.0" in msg
    with pytest.raises(ModelError, match=r"built for TensorRT-RTX \(this is TensorRT\)"):
        check_engine_compatible(_rtx_sidecar(("8.9",)), engine="m.engine", trt_version="10.3.0", gpu=ada)
    with pytest.raises(ModelError, match=r"TensorRT-RTX 1.7.1.116 \(this machine has 1.8.0\)"):
        check_engine_compatible(_rtx_sidecar(("8.9",)), engine="m.engine", trt_version="1.8.0", gpu=ada, trt_flavor="tensorrt-rtx")


def test_version_1_sidecar_reads_as_a_tensorrt_engine() -> None:
    doc = _rtx_sidecar(("8.9",)).to_dict()
    assert doc["schema_version"] == 2 and doc["trt_flavor"] == "tensorrt-rtx"
    for key in ("trt_flavor", "compute_capabilities", "engine_bytes", "build_seconds"):
        del doc[key]
    doc["schema_version"] = 1
    old = EngineSidecar.from_dict(doc)
    assert old.trt_flavor == "tensorrt" and old.compute_capabilities == ()


def _qdq_act(scale: np.ndarray, axis: int | None) -> onnx.ModelProto:
    attrs = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="q_in", **attrs),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"], name="dq_in", **attrs),
    ]
    inits = [numpy_helper.from_array(scale.astype(np.float32), "s"),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), "z")]
    return make_model(nodes, [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                      [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 4, 4])], inits)


def test_qdq_rule_per_tensor_activations() -> None:
    assert list(qdq_rule_problems(_qdq_act(np.array(0.1), None))) == []
    bad = _qdq_act(np.array([0.1, 0.2, 0.3]), 1)
    problems = list(qdq_rule_problems(bad))
    assert problems[0].startswith("node 'q_in' (QuantizeLinear): activation 'input' has 3 scales (per-channel, axis 1)")
    with pytest.raises(ModelError, match=r"'m.onnx' is not a Q/DQ model TensorRT-RTX builds as INT8: node 'q_in'.*\(and 1 more\)"):
        check_qdq_rules(bad, source="m.onnx", trt="TensorRT-RTX")
    # Weights may be per-channel: a DQ on an initializer is not an activation.
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.int8), "w")
    ws = numpy_helper.from_array(np.full(3, 0.1, np.float32), "ws")
    wz = numpy_helper.from_array(np.zeros(3, np.int8), "wz")
    weight = make_model(
        [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"], name="dq_w", axis=0),
         helper.make_node("Conv", ["input", "wf"], ["output"], name="conv")],
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 4, 4])], [w, ws, wz])
    assert list(qdq_rule_problems(weight)) == []


def test_missing_tensorrt_rtx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # makes `import tensorrt_rtx` raise ImportError
    with pytest.raises(BackendUnavailableError) as err:
        import_flavor("tensorrt-rtx")
    assert str(err.value) == (
        "TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]' (no GPU needed to build engines)"
    )
