"""quant.graph.qdq, target "onnxruntime": the CPU deployment form over the same plan as TensorRT's.

Correctness of layout, not timing: the form runs, stays close to the TensorRT form's outputs,
has the parameters it promises (u8 activations, s8 per-channel weights, int32 biases, folded
ReLUs) and ONNX Runtime actually fuses its Conv / Gemm / MatMul into integer kernels (counted in
the optimized graph ORT writes out).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.backends.cpu import resolve_cpu, weight_type_for
from quant.errors import UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq, plan_qdq, quantize_weight
from tests.models import (
    ALL_BUILDERS,
    conv_bn_relu_cnn,
    make_model,
    mlp,
    random_feed,
    run_model,
    transformer_block,
)

INTEGER_OPS = {
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "QGemm",
}
FLOAT_OPS = {"Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm"}


def _amax(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    tensors = calibration_tensors(model)
    outs = run_model(model, feed, tensors)
    return {t: float(np.abs(outs[t]).max()) for t in tensors}


def _both(
    model: onnx.ModelProto, batch: int = 4
) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    clean = cleanup(model)
    feed = random_feed(clean, batch=batch)
    amax = _amax(clean, feed)
    trt = insert_qdq(clean, amax).model
    ort_form = insert_qdq(clean, amax, target="onnxruntime", weight_type=HOST_WEIGHTS).model
    return trt, ort_form, feed


# The deployment form is built for the CPU that runs it (quant build --target onnxruntime --cpu
# auto): signed weights where ORT's integer kernels are exact (VNNI, ARM), unsigned ones on x86
# without VNNI, whose u8 x s8 kernels saturate. Run fused, it must then match the TensorRT form
# (computed exactly) on every CPU.
HOST_WEIGHTS = weight_type_for(resolve_cpu("auto"))


def optimized_ops(model: onnx.ModelProto, tmp_path: Path) -> Counter[str]:
    """Op types of the graph ONNX Runtime actually runs (CPU provider, extended optimizations)."""
    path = tmp_path / "optimized.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _by_output(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def small_resnet(seed: int = 7) -> onnx.ModelProto:
    """Stem Conv-Relu-MaxPool, a bottleneck with a 1x1 downsample and residual Add-Relu, a plain
    block (identity skip), global average pool and a Gemm head: every fusion ResNet-50 needs."""
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def w(name: str, shape: tuple[int, ...]) -> str:
        fan_in = int(np.prod(shape[1:]))
        inits.append(
            numpy_helper.from_array(
                (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32), name
            )
        )
        return name

    def b(name: str, n: int) -> str:
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(n)).astype(np.float32), name))
        return name

    def conv(x: str, out: str, cin: int, cout: int, k: int, stride: int = 1) -> str:
        nodes.append(
            helper.make_node(
                "Conv",
                [x, w(f"{out}.w", (cout, cin, k, k)), b(f"{out}.b", cout)],
                [out],
                name=out,
                pads=[k // 2] * 4,
                strides=[stride, stride],
            )
        )
        return out

    def relu(x: str, out: str) -> str:
        nodes.append(helper.make_node("Relu", [x], [out], name=out))
        return out

    x = relu(conv("input", "stem", 3, 8, 3, 2), "stem_relu")
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]))
    y = relu(conv("pool", "b1c1", 8, 4, 1), "b1r1")
    y = relu(conv(y, "b1c2", 4, 4, 3), "b1r2")
    y = conv(y, "b1c3", 4, 16, 1)
    skip = conv("pool", "b1down", 8, 16, 1)
    nodes.append(helper.make_node("Add", [y, skip], ["b1add"], name="b1add"))
    x = relu("b1add", "b1out")
    y = relu(conv(x, "b2c1", 16, 4, 1), "b2r1")
    y = relu(conv(y, "b2c2", 4, 4, 3), "b2r2")
    y = conv(y, "b2c3", 4, 16, 1)
    nodes.append(helper.make_node("Add", [y, x], ["b2add"], name="b2add"))
    x = relu("b2add", "b2out")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flat", axis=1))
    nodes.append(
        helper.make_node(
            "Gemm", ["flat", w("fc.w", (10, 16)), b("fc.b", 10)], ["logits"], name="fc", transB=1
        )
    )
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    return make_model(nodes, inputs, outputs, inits, name="small_resnet")


# --- it runs and stays close to the TensorRT form ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_ort_form_runs_and_matches_tensorrt_form(name: str) -> None:
    trt, ort_form, feed = _both(ALL_BUILDERS[name]())
    onnx.checker.check_model(ort_form, full_check=True)
    assert [o.name for o in ort_form.graph.output] == [o.name for o in trt.graph.output]
    a, b = run_model(trt, feed), run_model(ort_form, feed, int8="fused")
    for key in a:
        assert a[key].shape == b[key].shape
        assert _cosine(a[key], b[key]) > 0.999, key
        scale = float(np.abs(a[key]).max()) or 1.0
        assert float(np.abs(a[key] - b[key]).max()) <= 0.05 * scale, key


def test_small_resnet_matches_tensorrt_form() -> None:
    trt, ort_form, feed = _both(small_resnet(), batch=3)
    a, b = run_model(trt, feed)["logits"], run_model(ort_form, feed, int8="fused")["logits"]
    assert _cosine(a, b) > 0.999
    assert np.array_equal(a.argmax(1), b.argmax(1)) or _cosine(a, b) > 0.9999


def test_tensorrt_form_is_unchanged_by_the_target_argument() -> None:
    clean = cleanup(conv_bn_relu_cnn())
    amax = _amax(clean, random_feed(clean))
    default = insert_qdq(clean, amax).model
    explicit = insert_qdq(clean, amax, target="tensorrt").model
    assert default.SerializeToString() == explicit.SerializeToString()
    assert all(
        n.op_type != "QuantizeLinear" or _init(default, n.input[2]).dtype == np.int8
        for n in default.graph.node
    )


def test_input_model_is_not_modified() -> None:
    clean = cleanup(small_resnet())
    before = clean.SerializeToString()
    insert_qdq(clean, _amax(clean, random_feed(clean)), target="onnxruntime")
    assert clean.SerializeToString() == before


# --- ONNX Runtime fuses every Conv / Gemm / MatMul -------------------------------------------------


def test_small_resnet_every_conv_and_gemm_is_fused(tmp_path: Path) -> None:
    _, ort_form, _ = _both(small_resnet())
    ops = optimized_ops(ort_form, tmp_path)
    assert ops["QLinearConv"] == 8 and ops["QGemm"] == 1
    assert ops["QLinearAdd"] == 2  # residual Add + folded ReLU
    assert not FLOAT_OPS & set(ops), ops
    assert ops["Relu"] == 0  # folded into the uint8 Q (zero point 0)


def test_tensorrt_form_is_not_fused_on_cpu(tmp_path: Path) -> None:
    """Why the second form exists: ORT leaves DQ -> Conv (float) when the Conv output has no Q."""
    trt, _, _ = _both(small_resnet())
    ops = optimized_ops(trt, tmp_path)
    assert ops["Conv"] + ops["FusedConv"] > 0


def test_mlp_gemms_and_matmul_fused(tmp_path: Path) -> None:
    _, ort_form, _ = _both(mlp())
    ops = optimized_ops(ort_form, tmp_path)
    assert sum(ops[k] for k in INTEGER_OPS) == 3 and not FLOAT_OPS & set(ops), ops


def test_transformer_matmuls_fused(tmp_path: Path) -> None:
    _, ort_form, _ = _both(transformer_block())
    ops = optimized_ops(ort_form, tmp_path)
    # q/k/v/out projections and both activation x activation MatMuls
    assert sum(ops[k] for k in INTEGER_OPS) == 6 and not FLOAT_OPS & set(ops), ops
    assert ops["QLinearMatMul"] >= 2


# --- the parameters it promises --------------------------------------------------------------------


def test_activation_weight_and_bias_parameters() -> None:
    clean = cleanup(small_resnet())
    amax = _amax(clean, random_feed(clean))
    model = insert_qdq(clean, amax, target="onnxruntime").model
    made = _by_output(model)
    # >= 0 by construction: ReLU outputs and what MaxPool / GlobalAveragePool / Flatten make of them
    nonneg = {"stem_relu", "pool", "b1r1", "b1r2", "b1out", "b2r1", "b2r2", "b2out", "gap", "flat"}
    # the stem's ReLU output only feeds a MaxPool: its Q takes the range of the pool's output
    # (the next quantized activation), with which the TensorRT form quantizes after the pool
    range_of = {"stem_relu": "pool"}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        zero = _init(model, node.input[2])
        assert zero.dtype == np.uint8  # every activation is uint8
        tensor = next(
            n.output[0]
            for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0]
        )
        base = tensor if tensor in amax else tensor.removesuffix("_DequantizeLinear_Output")
        assert _init(model, node.input[1]) == np.float32(amax[range_of.get(base, base)] / 127.0), base
        assert int(zero) == (0 if base in nonneg else 128), base
    # the folded ReLU's output is now written by the DQ, under its own name
    assert made["b1r1"].op_type == "DequantizeLinear"
    assert "b1r1" not in {o for n in model.graph.node if n.op_type == "Relu" for o in n.output}
    # weights: the TensorRT form's int8 per-channel values
    conv = made["b1c2_float"] if "b1c2_float" in made else made["b1c2"]
    wq = _init(model, next(n for n in model.graph.node if n.output[0] == conv.input[1]).input[0])
    expected_q, expected_scale = quantize_weight(_init(clean, "b1c2.w"), 0)
    np.testing.assert_array_equal(wq, expected_q)
    # bias: int32 at input scale x weight scale
    bias_dq = next(n for n in model.graph.node if n.output[0] == conv.input[2])
    assert bias_dq.op_type == "DequantizeLinear"
    qb, sb = _init(model, bias_dq.input[0]), _init(model, bias_dq.input[1])
    assert qb.dtype == np.int32
    x_scale = np.float32(amax["b1r1"] / 127.0)
    np.testing.assert_allclose(
        sb, (x_scale * expected_scale.astype(np.float64)).astype(np.float32), rtol=1e-6
    )
    np.testing.assert_allclose(qb * sb.astype(np.float64), _init(clean, "b1c2.b"), atol=float(sb.max()))


def test_graph_output_stays_float_and_keeps_its_name() -> None:
    clean = cleanup(conv_bn_relu_cnn())
    model = insert_qdq(clean, _amax(clean, random_feed(clean)), target="onnxruntime").model
    made = _by_output(model)
    assert made["logits"].op_type == "Gemm"  # QGemm gives float logits: no Q on a graph output


def _conv_clip(hi: float) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.5).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.5).astype(np.float32), "w3"),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(hi, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["clip"], name="clip"),
        helper.make_node("Conv", ["clip", "w2", "b2"], ["c2"], name="c2"),
        helper.make_node("Conv", ["c2", "w3"], ["output"], name="c3"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 6, 6])]
    return make_model(nodes, inputs, outputs, inits, name="conv_clip")


@pytest.mark.parametrize("hi", [100.0, 0.5])
def test_clip_is_folded_with_the_grid_its_range_allows(hi: float, tmp_path: Path) -> None:
    """Clip(0, hi) goes into the uint8 Q: with TensorRT's scale amax/127 when 255 of those steps stay
    within hi, else with hi/255 (the Q then saturates exactly where the Clip clamps)."""
    clean = cleanup(_conv_clip(hi))
    feed = random_feed(clean, batch=2)
    amax = _amax(clean, feed)
    model = insert_qdq(clean, amax, target="onnxruntime", weight_type=HOST_WEIGHTS).model
    assert not any(n.op_type == "Clip" for n in model.graph.node)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "c1")
    expected = (
        np.float32(amax["clip"] / 127.0) if 255 * amax["clip"] / 127.0 <= hi else np.float32(hi / 255.0)
    )
    assert _init(model, q.input[1]) == expected and int(_init(model, q.input[2])) == 0
    # c2's int32 bias uses the folded Clip's scale (else ORT would not fuse it); c3 writes a graph
    # output, which gets no Q, so it runs in float
    assert optimized_ops(model, tmp_path)["QLinearConv"] == 2
    fp32 = run_model(clean, feed)["output"]
    ref = run_model(insert_qdq(clean, amax).model, feed)["output"]
    got = run_model(model, feed, int8="fused")["output"]
    assert _cosine(ref, got) > 0.999 and _cosine(fp32, got) > 0.999


def test_clip_with_a_negative_lower_bound_is_not_folded() -> None:
    model = _conv_clip(1.0)
    for t in model.graph.initializer:
        if t.name == "lo":
            t.CopyFrom(numpy_helper.from_array(np.array(-1.0, np.float32), "lo"))
    clean = cleanup(model)
    out = insert_qdq(clean, _amax(clean, random_feed(clean)), target="onnxruntime").model
    assert any(n.op_type == "Clip" for n in out.graph.node)


def test_missing_output_range_leaves_conv_unfused_but_correct(tmp_path: Path) -> None:
    """Without a range for the stem's output, its ReLU's or the pool after it (scope "qdq" caches
    lack tensors that no quantized op reads, and here the pool's range is gone too), the stem Conv
    cannot get the output Q ORT's fusion needs, and the two Convs reading the pool stay float as
    in the TensorRT form; the rest is still fused and the outputs agree."""
    clean = cleanup(small_resnet())
    feed = random_feed(clean)
    amax = _amax(clean, feed)
    for t in ("stem", "stem_relu", "pool"):
        amax.pop(t)
    plan = plan_qdq(clean, amax)
    assert "pool" not in plan.activations
    model = insert_qdq(clean, amax, target="onnxruntime").model
    ops = optimized_ops(model, tmp_path)
    assert ops["QLinearConv"] == 5
    ref = run_model(insert_qdq(clean, amax).model, feed)["logits"]
    assert _cosine(ref, run_model(model, feed)["logits"]) > 0.999


def test_relu_before_a_pool_takes_the_range_after_it() -> None:
    """The LeNet-like pattern Conv -> ReLU -> MaxPool -> Conv: quantizing the ReLU output with the
    pool output's range adds no error over the TensorRT form (max commutes with rounding), where
    the ReLU's own (entropy) range might clip hard."""
    clean = cleanup(small_resnet())
    feed = random_feed(clean)
    amax = _amax(clean, feed)
    amax["stem_relu"] = amax["stem_relu"] / 8  # a tight range of its own must not be used
    model = insert_qdq(clean, amax, target="onnxruntime").model
    got = run_model(model, feed, ["pool"])["pool"]
    ref = run_model(insert_qdq(clean, amax).model, feed, ["pool_DequantizeLinear_Output"])
    np.testing.assert_allclose(got, ref["pool_DequantizeLinear_Output"], atol=amax["pool"] / 127.0 * 1.01)


def test_exclusions_apply_to_both_forms(tmp_path: Path) -> None:
    clean = cleanup(small_resnet())
    amax = _amax(clean, random_feed(clean))
    res = insert_qdq(clean, amax, target="onnxruntime", exclude=["fc"])
    assert "flat" not in res.quantized_tensors and res.skipped["flat"] == "excluded"
    ops = optimized_ops(res.model, tmp_path)
    assert ops["QGemm"] == 0 and ops["QLinearConv"] == 8


def test_unsigned_weights_are_the_same_grid_and_still_fuse(tmp_path: Path) -> None:
    """weight_type="uint8" (x86 without VNNI) stores q + 128 with zero point 128: the dequantized
    weights are those of the signed form bit for bit, and ORT still fuses every Conv and Gemm."""
    clean = cleanup(small_resnet())
    amax = _amax(clean, random_feed(clean))
    signed = insert_qdq(clean, amax, target="onnxruntime").model
    unsigned = insert_qdq(clean, amax, target="onnxruntime", weight_type="uint8").model
    by_name = {t.name: numpy_helper.to_array(t) for t in unsigned.graph.initializer}
    checked = 0
    for node in signed.graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith(".w_quantized"):
            continue
        q8, s8, z8 = (_init(signed, i) for i in node.input)
        qu, su, zu = (by_name[i] for i in node.input)
        assert q8.dtype == np.int8 and qu.dtype == np.uint8 and zu.dtype == np.uint8
        assert np.all(zu == 128) and np.all(z8 == 0)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [-1 if i == axis else 1 for i in range(q8.ndim)]
        np.testing.assert_array_equal(
            (qu.astype(np.int32) - 128) * su.reshape(shape), q8.astype(np.int32) * s8.reshape(shape)
        )
        checked += 1
    assert checked == 9
    ops_signed, ops_unsigned = optimized_ops(signed, tmp_path), optimized_ops(unsigned, tmp_path)
    assert ops_unsigned["QLinearConv"] == ops_signed["QLinearConv"] == 8
    assert ops_unsigned["QGemm"] == ops_signed["QGemm"] == 1


def test_tensorrt_form_refuses_unsigned_weights() -> None:
    clean = cleanup(conv_bn_relu_cnn())
    with pytest.raises(UsageError, match="TensorRT takes int8 weights only"):
        insert_qdq(clean, _amax(clean, random_feed(clean)), weight_type="uint8")
