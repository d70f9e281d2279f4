"""quant.qat.onnx_post: pure ONNX rewriting of a QAT export (no torch needed)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ModelError
from quant.qat.onnx_post import check_qdq, finalize_qdq
from tests.models import exact_int8_options, make_model

RNG = np.random.default_rng(0)


def _init(name: str, a: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(a), name)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), exact_int8_options(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feed)[0])


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _act_qdq(x: str, out: str, scale_name: str = "a_scale") -> list[onnx.NodeProto]:
    return [
        helper.make_node("Constant", [], [f"{out}_zp"], value=_init("z", np.array(0, np.int8))),
        helper.make_node("QuantizeLinear", [x, scale_name, f"{out}_zp"], [f"{out}_q"]),
        helper.make_node("DequantizeLinear", [f"{out}_q", scale_name, f"{out}_zp"], [out]),
    ]


def gemm_with_weight_quantize() -> onnx.ModelProto:
    """What torch exports: a runtime QuantizeLinear on a float weight, Identity on a scale."""
    w = RNG.normal(size=(3, 4)).astype(np.float32)
    w_scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    nodes = [
        helper.make_node("Identity", ["a_scale_orig"], ["a_scale"]),
        *_act_qdq("input", "x_dq"),
        helper.make_node("Constant", [], ["w_zp"], value=_init("z", np.zeros(3, np.int8))),
        helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["w_q"], axis=0),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Gemm", ["x_dq", "w_dq", "b"], ["output"], transB=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        [_init("a_scale_orig", np.array(0.02, np.float32)), _init("w", w), _init("w_scale", w_scale),
         _init("b", RNG.normal(size=3).astype(np.float32))],
    )


def conv_bn(*, q_values: np.ndarray | None = None, gamma: np.ndarray | None = None) -> onnx.ModelProto:
    """Q/DQ input -> Conv with an INT8 DQ weight -> BatchNormalization."""
    c = 4
    q = q_values if q_values is not None else RNG.integers(-127, 128, size=(c, 2, 3, 3)).astype(np.int8)
    g = gamma if gamma is not None else np.array([1.5, -0.7, 0.3, 2.0], np.float32)
    nodes = [
        *_act_qdq("input", "x_dq"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Conv", ["x_dq", "w_dq", "cb"], ["conv_out"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["conv_out", "g", "beta", "mean", "var"], ["output"], epsilon=1e-5),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", c, 5, 5])],
        [
            _init("a_scale", np.array(0.03, np.float32)),
            _init("w_int8", q),
            _init("w_scale", np.array([0.01, 0.02, 0.005, 0.03], np.float32)),
            _init("w_zp", np.zeros(c, np.int8)),
            _init("cb", RNG.normal(size=c).astype(np.float32)),
            _init("g", g),
            _init("beta", RNG.normal(size=c).astype(np.float32)),
            _init("mean", RNG.normal(size=c).astype(np.float32)),
            _init("var", (RNG.random(c) + 0.5).astype(np.float32)),
        ],
    )


def test_weight_quantize_folds_into_int8_initializer_and_same_outputs() -> None:
    model = gemm_with_weight_quantize()
    out = finalize_qdq(model)
    ops = _ops(out)
    assert "Identity" not in ops and "Constant" not in ops
    assert ops.count("QuantizeLinear") == 1  # only the activation's
    inits = {t.name: t for t in out.graph.initializer}
    (w_dq,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert inits[w_dq.input[0]].data_type == TensorProto.INT8
    assert helper.get_attribute_value(w_dq.attribute[0]) == 0
    assert "w" not in inits  # the float weight is gone
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"input": x}), _run(model, {"input": x}))
    check_qdq(out)


def test_batchnorm_folds_into_quantized_conv_exactly_including_negative_scales() -> None:
    model = conv_bn()
    out = finalize_qdq(model)
    assert "BatchNormalization" not in _ops(out)
    x = RNG.normal(size=(2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(out, {"input": x}), _run(model, {"input": x}), rtol=1e-5, atol=1e-5)
    # INT8 values are unchanged up to the sign of the BatchNorm scale; scales stay positive.
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    (dq,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
             and inits[n.input[0]].ndim == 4]
    q_new, scale_new = inits[dq.input[0]], inits[dq.input[1]]
    q_old = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w_int8"))
    np.testing.assert_array_equal(q_new[1], -q_old[1])  # gamma[1] < 0
    np.testing.assert_array_equal(q_new[0], q_old[0])
    assert np.all(scale_new > 0)
    check_qdq(out)


def test_batchnorm_kept_when_negating_minus_128_would_overflow() -> None:
    q = RNG.integers(-127, 128, size=(4, 2, 3, 3)).astype(np.int8)
    q[1, 0, 0, 0] = -128
    out = finalize_qdq(conv_bn(q_values=q))
    assert "BatchNormalization" in _ops(out)


def test_transpose_after_weight_dq_becomes_transposed_int8_with_permuted_axis() -> None:
    q = RNG.integers(-127, 128, size=(3, 4)).astype(np.int8)
    nodes = [
        *_act_qdq("input", "x_dq"),
        helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zp"], ["w_dq"], axis=0),
        helper.make_node("Transpose", ["w_dq"], ["w_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["x_dq", "w_t"], ["output"]),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 3])],
        [_init("a_scale", np.array(0.05, np.float32)), _init("w_int8", q),
         _init("w_scale", np.array([0.1, 0.2, 0.3], np.float32)), _init("w_zp", np.zeros(3, np.int8))],
    )
    out = finalize_qdq(model)
    assert "Transpose" not in _ops(out)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    (dq,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert inits[dq.input[0]].shape == (4, 3)
    assert helper.get_attribute_value(dq.attribute[0]) == 1
    x = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, {"input": x}), _run(model, {"input": x}))


def test_identity_feeding_a_graph_output_keeps_the_output_name() -> None:
    nodes = [*_act_qdq("input", "x_dq"), helper.make_node("Relu", ["x_dq"], ["r"]),
             helper.make_node("Identity", ["r"], ["output"])]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
        [_init("a_scale", np.array(0.05, np.float32))],
    )
    out = finalize_qdq(model)
    assert "Identity" not in _ops(out)
    assert out.graph.node[-1].output[0] == "output"


def _single(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def test_check_qdq_rejects_orphan_quantize() -> None:
    model = _single(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("Cast", ["q"], ["output"], to=TensorProto.FLOAT)],
        [_init("s", np.array(0.1, np.float32)), _init("z", np.array(0, np.int8))],
    )
    with pytest.raises(ModelError, match="orphaned: its output must feed only DequantizeLinear"):
        check_qdq(model)


def test_check_qdq_rejects_orphan_dequantize_of_a_float_tensor() -> None:
    model = _single(
        [helper.make_node("Cast", ["input"], ["i8"], to=TensorProto.INT8),
         helper.make_node("DequantizeLinear", ["i8", "s", "z"], ["output"])],
        [_init("s", np.array(0.1, np.float32)), _init("z", np.array(0, np.int8))],
    )
    with pytest.raises(ModelError, match="neither a QuantizeLinear output nor an INT8 weight"):
        check_qdq(model)


@pytest.mark.parametrize(
    ("zp", "message"),
    [(np.array(3, np.int8), "zero point must be INT8 0"), (np.array(128, np.uint8), "zero point must be INT8 0")],
)
def test_check_qdq_rejects_asymmetric_or_unsigned_zero_points(zp: np.ndarray, message: str) -> None:
    model = _single(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"])],
        [_init("s", np.array(0.1, np.float32)), _init("z", zp)],
    )
    with pytest.raises(ModelError, match=message):
        check_qdq(model)


def test_check_qdq_rejects_pair_with_different_scales() -> None:
    model = _single(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s2", "z"], ["output"])],
        [_init("s", np.array(0.1, np.float32)), _init("s2", np.array(0.2, np.float32)), _init("z", np.array(0, np.int8))],
    )
    with pytest.raises(ModelError, match="different scales"):
        check_qdq(model)


def test_finalize_refuses_unsigned_zero_point_128() -> None:
    model = _single(
        [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["output"])],
        [_init("s", np.array(0.1, np.float32)), _init("z", np.array(128, np.uint8))],
    )
    with pytest.raises(ModelError, match="unsigned zero point 128"):
        finalize_qdq(model)
