"""quant.graph.qdq: TensorRT-style Q/DQ placement, weights, exclusions, skips and numerics."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ModelError, UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import (
    QdqPlan,
    QdqResult,
    calibration_tensors,
    insert_qdq,
    plan_qdq,
    quantizable_inputs,
    quantize_weight,
)
from tests.models import (
    ALL_BUILDERS,
    conv_bn_relu_cnn,
    identity_weights_cnn,
    make_model,
    mlp,
    random_feed,
    residual_block,
    run_model,
    shared_input_convs,
    transformer_block,
)

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _max_amax(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Max calibration on one batch (enough for placement and numerics tests)."""
    tensors = calibration_tensors(model)
    outs = run_model(model, feed, tensors)
    return {t: float(np.abs(outs[t]).max()) for t in tensors}


def _quantize(
    model: onnx.ModelProto, exclude: list[str] | tuple[str, ...] = ()
) -> tuple[onnx.ModelProto, dict[str, float], QdqResult]:
    """cleanup, max-calibrate on one random batch, insert Q/DQ."""
    clean = cleanup(model)
    amax = _max_amax(clean, random_feed(clean, batch=4))
    return clean, amax, insert_qdq(clean, amax, exclude=exclude)


def _producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _weight_dq(model: onnx.ModelProto, node_name: str) -> onnx.NodeProto:
    dq = _producer(model, _node(model, node_name).input[1])
    assert dq is not None and dq.op_type == "DequantizeLinear"
    return dq


def _axis(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "axis"), None)


# --- placement --------------------------------------------------------------------------------


def test_residual_block_quantizes_both_add_inputs() -> None:
    model = residual_block()
    before = model.SerializeToString()
    clean, amax, result = _quantize(model)
    assert model.SerializeToString() == before
    q = result.model
    onnx.checker.check_model(q, full_check=True)
    add = _node(q, "residual_add")
    for name in add.input:
        dq = _producer(q, name)
        assert dq is not None and dq.op_type == "DequantizeLinear"
    assert set(result.quantized_tensors) == {"input", "stem_relu", "relu1_out", "conv2_out"}
    assert result.quantized_weights == ("stem.weight", "conv1.weight", "conv2.weight")
    assert dict(result.skipped) == {}
    # stem_relu feeds conv1 and the Add: one Q/DQ pair shared by both.
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["QuantizeLinear"] == 4
    assert ops["DequantizeLinear"] == 4 + 3
    assert _node(q, "conv1").input[0] == add.input[1] == "stem_relu_DequantizeLinear_Output"
    # Activation Q/DQ form: float32 scalar scale = amax / 127, int8 zero point 0.
    inits = _inits(q)
    qn = _producer(q, "stem_relu_QuantizeLinear_Output")
    assert qn is not None and qn.input[0] == "stem_relu"
    scale, zero = inits[qn.input[1]], inits[qn.input[2]]
    assert scale.dtype == np.float32 and scale.shape == ()
    assert scale == np.float32(amax["stem_relu"] / 127)
    assert zero.dtype == np.int8 and zero.shape == () and zero == 0
    # The non-quantized consumer (Relu) keeps the float tensor.
    assert _node(q, "relu_out").input[0] == "add_out"


def test_identity_fed_weights_become_per_channel_int8() -> None:
    _, _, result = _quantize(identity_weights_cnn())
    q = result.model
    assert set(result.quantized_weights) == {"conv1.weight", "conv2.weight"}
    inits = _inits(q)
    for conv, channels in (("conv1", 4), ("conv2", 6)):
        dq = _weight_dq(q, conv)
        assert _axis(dq) == 0
        w_q, scale, zero = (inits[i] for i in dq.input)
        assert w_q.dtype == np.int8 and scale.dtype == np.float32 and zero.dtype == np.int8
        assert scale.shape == (channels,) and zero.shape == (channels,) and not zero.any()
        per_channel_max = np.abs(w_q.astype(np.int32)).reshape(channels, -1).max(axis=1)
        np.testing.assert_array_equal(per_channel_max, 127)
    # The float weights are gone, the bias stays float.
    assert "conv1.weight" not in inits and "conv2.weight" not in inits
    conv1 = _node(q, "conv1")
    assert inits[conv1.input[2]].dtype == np.float32


def test_weight_axes_for_matmul_and_gemm() -> None:
    _, _, result = _quantize(mlp())
    q = result.model
    inits = _inits(q)
    # MatMul constant B (in, out): per output column, axis 1.
    dq = _weight_dq(q, "fc1_matmul")
    assert _axis(dq) == 1 and inits[dq.input[1]].shape == (32,)
    # Gemm transB=1 (out, in): axis 0; Gemm transB=0 (in, out): axis 1.
    assert _axis(_weight_dq(q, "fc2")) == 0
    dq3 = _weight_dq(q, "fc3")
    assert _axis(dq3) == 1 and inits[dq3.input[1]].shape == (4,)
    # The MatMul's bias Add is not a residual Add: no Q/DQ on its inputs.
    assert _node(q, "fc1_add").input[0] == "fc1_mm"


def test_conv_transpose_weight_axis_1() -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((3, 5, 2, 2)).astype(np.float32), "ct.weight")
    nodes = [helper.make_node("ConvTranspose", ["input", "ct.weight"], ["output"], name="ct")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5, 5, 5])]
    _, _, result = _quantize(make_model(nodes, inputs, outputs, [w]))
    dq = _weight_dq(result.model, "ct")
    assert _axis(dq) == 1
    assert _inits(result.model)[dq.input[1]].shape == (5,)


def test_shared_qdq_for_two_conv_consumers() -> None:
    _, _, result = _quantize(shared_input_convs())
    q = result.model
    quantizers = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "relu_out"]
    assert len(quantizers) == 1
    a, b = _node(q, "conv_a"), _node(q, "conv_b")
    assert a.input[0] == b.input[0] == "relu_out_DequantizeLinear_Output"
    assert _node(q, "pool").input[0] == "relu_out"  # MaxPool stays float, reads the float tensor


def test_transformer_activation_matmuls() -> None:
    clean = cleanup(transformer_block())
    qi = quantizable_inputs(clean)
    # both inputs of the activation x activation MatMuls; both of the residual Add
    assert {"q", "k_t", "attn", "v", "proj_out", "input"} <= set(qi)
    assert "scores" not in qi  # Softmax input: not a quantized op


# --- exclusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exclude", "float_nodes"),
    [
        (["conv2"], {"conv2"}),
        (["Gemm"], {"fc"}),
        (["conv*"], {"conv1", "conv2"}),
        (["c?nv[2]", "fc"], {"conv2", "fc"}),
    ],
    ids=["name", "op_type", "wildcard", "mixed"],
)
def test_exclusion(exclude: list[str], float_nodes: set[str]) -> None:
    clean, amax, result = _quantize(conv_bn_relu_cnn(), exclude=exclude)
    q = result.model
    for name in ("conv1", "conv2", "fc"):
        node = _node(q, name)
        producer = _producer(q, node.input[0])
        from_dq = producer is not None and producer.op_type == "DequantizeLinear"
        assert from_dq == (name not in float_nodes), name
        assert (node.input[1] in _inits(q)) == (name in float_nodes)  # float weight kept
    expected_inputs = {"conv1": "input", "conv2": "pool1_out", "fc": "flat_out"}
    for name in float_nodes:
        assert result.skipped[expected_inputs[name]] == "excluded"
    assert set(quantizable_inputs(clean, exclude=exclude)) == set(expected_inputs.values()) - {
        expected_inputs[n] for n in float_nodes
    }


def test_exclude_pattern_type_error() -> None:
    with pytest.raises(UsageError, match=r"exclude pattern 3 is not a string"):
        quantizable_inputs(mlp(), exclude=[3])  # type: ignore[list-item]


# --- skipped tensors ----------------------------------------------------------------------------


def test_missing_and_zero_amax_are_skipped_with_reasons() -> None:
    clean = cleanup(residual_block())
    amax: dict[str, float | None] = dict(_max_amax(clean, random_feed(clean)))
    del amax["relu1_out"]
    amax["stem_relu"] = 0.0
    amax["input"] = None
    result = insert_qdq(clean, amax)
    assert result.skipped["relu1_out"] == "no range in cache"
    assert result.skipped["stem_relu"] == "amax is 0"
    assert result.skipped["input"] == "no range in cache"
    # The Add's other input has a range but its partner does not: the Add stays float.
    assert result.skipped["conv2_out"] == (
        "consumer 'residual_add' stays float: input 'stem_relu': amax is 0"
    )
    assert result.skipped["conv2.weight"] == "node 'conv2' stays float: input 'relu1_out': no range in cache"
    assert result.quantized_tensors == () and result.quantized_weights == ()
    assert not any(n.op_type.endswith("QuantizeLinear") for n in result.model.graph.node)
    for bad in (float("nan"), float("inf"), -1.0):
        r = insert_qdq(clean, {**amax, "stem_relu": bad})
        assert r.skipped["stem_relu"] == "amax is not a finite positive number"


def test_unclean_weights_are_reported() -> None:
    model = identity_weights_cnn()  # weights still behind Identity nodes
    amax = _max_amax(model, random_feed(model))
    result = insert_qdq(model, amax)
    assert result.skipped["input"].startswith("consumer 'conv1' stays float: weight 'conv1.weight'")
    assert result.skipped["input"].endswith("run cleanup first")
    assert result.quantized_tensors == ()


def test_float16_inputs_are_skipped() -> None:
    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    nodes = [helper.make_node("MatMul", ["input", "w"], ["output"], name="mm")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 4])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT16, ["N", 4])]
    model = make_model(nodes, inputs, outputs, [w])
    result = insert_qdq(model, {"input": 1.0})
    assert result.skipped["input"] == (
        "consumer 'mm' stays float: weight 'w' is float16, not float32; quantize the FP32 model"
    )


# --- numerics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_qdq_output_close_to_float(name: str) -> None:
    clean = cleanup(ALL_BUILDERS[name]())
    feed = random_feed(clean, batch=4, seed=1)
    amax = _max_amax(clean, feed)
    result = insert_qdq(clean, amax)
    onnx.checker.check_model(result.model, full_check=True)
    assert result.quantized_tensors
    ref, got = run_model(clean, feed), run_model(result.model, feed)
    for out in ref:
        step = float(np.abs(ref[out]).max()) / 127  # one INT8 step of the output's range
        err = float(np.abs(got[out] - ref[out]).max())
        assert err <= 4 * step, f"{name}/{out}: error {err / step:.2f} steps"
        if out != "prod_out":  # x * y is not quantized in the two-output model
            assert err > 0, "nothing was quantized"


def test_quantize_weight_rounding_zero_channel_and_per_tensor() -> None:
    w = np.array([[1.27, -1.27, 0.005, 0.015], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    q, scale = quantize_weight(w, 0)
    assert scale.dtype == np.float32
    np.testing.assert_allclose(scale, [0.01, 1.0], rtol=1e-6)
    # 0.005 / 0.01 = 0.5 -> 0 and 0.015 / 0.01 = 1.5 -> 2 (half to even)
    np.testing.assert_array_equal(q, [[127, -127, 0, 2], [0, 0, 0, 0]])
    q, scale = quantize_weight(w, None)
    assert scale.shape == () and q[0, 0] == 127 and q[0, 1] == -127
    q, scale = quantize_weight(np.array([[2.0, -4.0], [1.0, 8.0]], np.float32), 1)
    np.testing.assert_allclose(scale, [2.0 / 127, 8.0 / 127], rtol=1e-6)
    np.testing.assert_array_equal(q[:, 1], [-64, 127])


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, width=32, allow_nan=False),
    )
)
def test_quantize_weight_error_bound(w: np.ndarray) -> None:
    q, scale = quantize_weight(w, 0)
    assert q.dtype == np.int8 and q.min() >= -127
    recon = q.astype(np.float64) * scale.astype(np.float64)[:, None]
    assert np.all(np.abs(recon - w) <= scale[:, None].astype(np.float64) / 2 * 1.0001 + 1e-12)


def test_nan_weight_is_an_error() -> None:
    model = cleanup(mlp())
    w = next(t for t in model.graph.initializer if t.name == "fc2.weight")
    arr = numpy_helper.to_array(w).copy()
    arr[0, 0] = np.nan
    w.CopyFrom(numpy_helper.from_array(arr, "fc2.weight"))
    amax = {t: 1.0 for t in quantizable_inputs(model)}
    with pytest.raises(ModelError, match="weight 'fc2.weight' has NaN or infinite values; fix the model"):
        insert_qdq(model, amax)


# --- targets, scopes, opsets, names --------------------------------------------------------------


def test_unknown_target_and_scope() -> None:
    with pytest.raises(UsageError, match="Q/DQ target 'tflite' is unknown; choose one of: tensorrt, onnxruntime"):
        insert_qdq(mlp(), {}, target="tflite")
    with pytest.raises(UsageError, match="calibration scope 'some' is unknown; choose 'all' or 'qdq'"):
        calibration_tensors(mlp(), "some")


def test_calibration_tensors_scopes() -> None:
    clean = cleanup(conv_bn_relu_cnn())
    every = calibration_tensors(clean)
    assert every[0] == "input"
    assert every == ["input"] + [n.output[0] for n in clean.graph.node]
    assert not set(every) & {t.name for t in clean.graph.initializer}
    assert (
        calibration_tensors(clean, "qdq") == quantizable_inputs(clean) == ["input", "pool1_out", "flat_out"]
    )

    # Integer tensors (shape computations) have no range to calibrate.
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Relu", ["input"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["output"]),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])]
    assert calibration_tensors(make_model(nodes, inputs, outputs, [])) == ["input", "r", "output"]


def test_plan_is_separate_from_insertion() -> None:
    clean = cleanup(residual_block())
    amax = _max_amax(clean, random_feed(clean))
    plan = plan_qdq(clean, amax, exclude=["conv2"])
    assert isinstance(plan, QdqPlan)
    assert list(plan.activations) == ["input", "stem_relu", "conv2_out"]
    assert [n.name for n in plan.nodes] == ["stem", "conv1", "residual_add"]
    assert [(w.tensor, w.axis) for w in plan.weights] == [("stem.weight", 0), ("conv1.weight", 0)]
    assert plan.skipped == {"relu1_out": "excluded", "conv2.weight": "excluded"}
    assert plan.activations["stem_relu"] == amax["stem_relu"]


def test_old_opset_is_upgraded() -> None:
    model = conv_bn_relu_cnn()
    model.opset_import[0].version = 11
    onnx.checker.check_model(model)
    clean = cleanup(model)
    result = insert_qdq(clean, _max_amax(clean, random_feed(clean)))
    assert result.model.opset_import[0].version == 13
    onnx.checker.check_model(result.model, full_check=True)
    run_model(result.model, random_feed(clean))


def test_opset_conversion_failure_names_the_opset() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("NotARealOp", ["input"], ["h"], name="mystery"),
            helper.make_node("Relu", ["h"], ["output"]),
        ],
        "odd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    with pytest.raises(
        ModelError, match=r"model 'odd': opset 11 cannot be converted to opset 13 .*re-export"
    ):
        insert_qdq(model, {})


def test_new_names_never_collide() -> None:
    model = mlp()
    # Occupy the names insert_qdq would pick for "input".
    taken = ["input_QuantizeLinear_Output", "input_scale"]
    for i, name in enumerate(taken):
        model.graph.node.append(helper.make_node("Relu", ["input"], [name], name=f"extra{i}"))
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 16]))
    clean = cleanup(model)
    result = insert_qdq(clean, _max_amax(clean, random_feed(clean)))
    onnx.checker.check_model(result.model, full_check=True)
    qn = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert qn.output[0] == "input_QuantizeLinear_Output_1" and qn.input[1] == "input_scale_1"
    outs = run_model(result.model, random_feed(clean))
    assert set(taken) <= set(outs)


def test_result_to_dict() -> None:
    _, _, result = _quantize(mlp(), exclude=["fc3"])
    d = result.to_dict()
    assert d == {
        "quantized_tensors": ["input", "relu1_out"],
        "quantized_weights": ["fc1.weight", "fc2.weight"],
        "skipped": {"relu2_out": "excluded", "fc3.weight": "excluded"},
    }


def test_light_resnet50_qdq() -> None:
    path = os.path.join(LIGHT_DIR, "light_resnet50.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx wheel without backend test data")
    clean = cleanup(onnx.load(path))  # opset 9, weights from ConstantOfShape
    feed = {"gpu_0/data_0": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    result = insert_qdq(clean, _max_amax(clean, feed))
    q = result.model
    assert result.model.opset_import[0].version == 13
    assert len(result.quantized_weights) == 54  # 53 Conv + 1 Gemm
    sums = [n for n in q.graph.node if n.op_type == "Sum"]
    assert len(sums) == 16
    for s in sums:  # residual Sums: both inputs quantized
        assert all(_producer(q, i).op_type == "DequantizeLinear" for i in s.input)  # type: ignore[union-attr]
    onnx.checker.check_model(q)
    run_model(q, feed)
