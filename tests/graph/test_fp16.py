"""quant.graph.fp16: float16 models that run in ONNX Runtime and agree with FP32."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quant.errors import ModelError
from quant.graph.cleanup import cleanup
from quant.graph.fp16 import to_fp16
from tests.models import ALL_BUILDERS, make_model, random_feed, residual_block, run_model


def _float_types(model: onnx.ModelProto) -> set[int]:
    return {t.data_type for t in model.graph.initializer}


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_fp16_agrees_with_fp32(name: str) -> None:
    model = cleanup(ALL_BUILDERS[name]())
    before = model.SerializeToString()
    half = to_fp16(model)
    assert model.SerializeToString() == before
    onnx.checker.check_model(half, full_check=True)
    assert TensorProto.FLOAT16 in _float_types(half)
    assert TensorProto.FLOAT not in _float_types(half)
    # Inputs and outputs stay float32 with the same names.
    for a, b in zip(model.graph.input, half.graph.input, strict=True):
        assert (a.name, b.type.tensor_type.elem_type) == (b.name, TensorProto.FLOAT)
    for a, b in zip(model.graph.output, half.graph.output, strict=True):
        assert (a.name, b.type.tensor_type.elem_type) == (b.name, TensorProto.FLOAT)
    feed = random_feed(model, batch=2, seed=3)
    ref, got = run_model(model, feed), run_model(half, feed)
    for out in ref:
        assert got[out].dtype == np.float32
        scale = float(np.abs(ref[out]).max())
        np.testing.assert_allclose(got[out], ref[out], rtol=0, atol=5e-3 * scale, err_msg=out)


def test_uncleaned_residual_block() -> None:
    model = residual_block()
    feed = random_feed(model)
    ref, got = run_model(model, feed)["output"], run_model(to_fp16(model), feed)["output"]
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-3 * float(np.abs(ref).max()))


def _random_normal_model() -> onnx.ModelProto:
    # The converter rewrites RandomNormal's dtype to float16, which ONNX Runtime has no kernel for.
    nodes = [
        helper.make_node("RandomNormal", [], ["noise"], shape=[2, 3], dtype=TensorProto.FLOAT, scale=1e-4),
        helper.make_node("Add", ["input", "noise"], ["output"], name="add"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2, 3])]
    return make_model(nodes, inputs, outputs, [])


def test_node_without_fp16_kernel_stays_float32(caplog: pytest.LogCaptureFixture) -> None:
    model = _random_normal_model()
    with caplog.at_level(logging.WARNING, logger="quant.graph.fp16"):
        half = to_fp16(model)
    assert (
        "node 'RandomNormal_0' has no float16 implementation in ONNX Runtime; kept in float32" in caplog.text
    )
    rn = next(n for n in half.graph.node if n.op_type == "RandomNormal")
    assert next(a.i for a in rn.attribute if a.name == "dtype") == TensorProto.FLOAT
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(run_model(half, {"input": x})["output"], x, atol=1e-2)


def test_explicit_block_list_and_verify_off() -> None:
    model = _random_normal_model()
    unverified = to_fp16(model, verify=False)
    rn = next(n for n in unverified.graph.node if n.op_type == "RandomNormal")
    assert next(a.i for a in rn.attribute if a.name == "dtype") == TensorProto.FLOAT16
    blocked = to_fp16(model, op_block_list=["RandomNormal"])
    rn = next(n for n in blocked.graph.node if n.op_type == "RandomNormal")
    assert next(a.i for a in rn.attribute if a.name == "dtype") == TensorProto.FLOAT


def test_unloadable_result_without_node_name_is_an_error() -> None:
    # A node in a domain ONNX Runtime does not know: the session error names no fixable node.
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["input"], ["output"], domain="com.example")],
        "mystery",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(ModelError, match=r"model 'mystery': the FP16 model does not load in ONNX Runtime"):
        to_fp16(model, node_block_list=["Mystery_0"])


def test_converter_failure_is_a_model_error() -> None:
    model = residual_block()
    # A weight whose data was never loaded: the converter refuses it.
    w = model.graph.initializer[0]
    onnx.external_data_helper.set_external_data(w, location="missing.bin")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    with pytest.raises(ModelError, match=r"model 'residual_block': FP16 conversion failed \(.*\); keep the"):
        to_fp16(model)
