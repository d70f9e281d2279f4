"""quant.graph.cleanup: numerically neutral, names preserved, weights end up as initializers."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.graph import cleanup as cleanup_mod
from quant.graph.cleanup import cleanup
from tests.models import (
    ALL_BUILDERS,
    conv_bn_relu_cnn,
    identity_weights_cnn,
    make_model,
    random_feed,
    run_model,
)

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def _ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def _assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    ra, rb = run_model(a, feed), run_model(b, feed)
    assert ra.keys() == rb.keys()
    for name in ra:
        np.testing.assert_allclose(rb[name], ra[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_cleanup_is_numerically_neutral(name: str) -> None:
    model = ALL_BUILDERS[name]()
    before = model.SerializeToString()
    clean = cleanup(model)
    assert model.SerializeToString() == before, "cleanup must not modify its input"
    onnx.checker.check_model(clean, full_check=True)
    assert [o.name for o in clean.graph.output] == [o.name for o in model.graph.output]
    assert [i.name for i in clean.graph.input] == [i.name for i in model.graph.input]
    _assert_same_outputs(model, clean, random_feed(model, batch=2))


def test_identity_fed_weights_become_initializers() -> None:
    model = identity_weights_cnn()
    clean = cleanup(model)
    assert "Identity" not in _ops(clean)
    assert "BatchNormalization" not in _ops(clean)
    inits = {t.name for t in clean.graph.initializer}
    convs = [n for n in clean.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2
    for conv in convs:
        assert all(i in inits for i in conv.input[1:]), conv.input
    # The PyTorch-visible names survive: the Identity outputs became the initializers.
    assert {"conv1.weight", "conv2.weight"} <= inits
    # conv1 now writes the BatchNormalization's output name.
    assert convs[0].output[0] == "bn_out"
    assert len(clean.graph.initializer) == 3  # w1 (BN-folded), b1 (BN-folded), w2


def test_batchnorm_folded_and_value_info_refreshed() -> None:
    clean = cleanup(conv_bn_relu_cnn())
    assert "BatchNormalization" not in _ops(clean)
    conv1 = next(n for n in clean.graph.node if n.name == "conv1")
    assert conv1.output[0] == "bn1_out"
    vi = {v.name for v in clean.graph.value_info}
    assert "bn1_out" in vi and "conv1_out" not in vi
    assert not any(t.name.startswith("bn1.") for t in clean.graph.initializer)


def _single_conv_bn(*, extra_consumer: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "s"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "m"),
        numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "v"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"], name="bn"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4, 4])]
    if extra_consumer:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4, 4, 4]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 6, 6])]
    return make_model(nodes, inputs, outputs, inits)


def test_batchnorm_without_bias_gets_a_bias() -> None:
    model = _single_conv_bn(extra_consumer=False)
    clean = cleanup(model)
    assert _ops(clean) == Counter({"Conv": 1})
    conv = clean.graph.node[0]
    assert len(conv.input) == 3 and conv.output[0] == "y"
    _assert_same_outputs(model, clean, random_feed(model))


def test_batchnorm_not_folded_when_conv_output_is_shared() -> None:
    model = _single_conv_bn(extra_consumer=True)
    clean = cleanup(model)
    assert _ops(clean)["BatchNormalization"] == 1
    _assert_same_outputs(model, clean, random_feed(model))


def test_batchnorm_folds_into_gemm_and_grouped_conv_transpose() -> None:
    rng = np.random.default_rng(1)

    def arr(*shape: int, positive: bool = False) -> np.ndarray:
        a = rng.random(shape) + 0.5 if positive else rng.standard_normal(shape)
        return a.astype(np.float32)

    def bn_params(prefix: str, c: int) -> list[onnx.TensorProto]:
        return [
            numpy_helper.from_array(arr(c, positive=True), f"{prefix}.gamma"),
            numpy_helper.from_array(arr(c), f"{prefix}.beta"),
            numpy_helper.from_array(arr(c), f"{prefix}.mean"),
            numpy_helper.from_array(arr(c, positive=True), f"{prefix}.var"),
        ]

    def bn(prefix: str, x: str, y: str) -> onnx.NodeProto:
        ins = [x] + [f"{prefix}.{p}" for p in ("gamma", "beta", "mean", "var")]
        return helper.make_node("BatchNormalization", ins, [y], name=f"{prefix}_bn")

    inits = [
        numpy_helper.from_array(arr(4, 3, 3, 3), "ct.weight"),  # group 2: 2 x 3 = 6 output channels
        numpy_helper.from_array(arr(6), "ct.bias"),
        *bn_params("ct", 6),
        numpy_helper.from_array(arr(6 * 7 * 7, 5), "fc.weight"),  # transB = 0
        numpy_helper.from_array(arr(5), "fc.bias"),
        *bn_params("fc", 5),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["input", "ct.weight", "ct.bias"], ["ct"], name="ct", group=2),
        bn("ct", "ct", "ct_bn"),
        helper.make_node("Flatten", ["ct_bn"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["fc"], name="fc", beta=0.5, alpha=2.0),
        bn("fc", "fc", "output"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4, 5, 5])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])]
    model = make_model(nodes, inputs, outputs, inits)
    clean = cleanup(model)
    assert "BatchNormalization" not in _ops(clean)
    gemm = next(n for n in clean.graph.node if n.op_type == "Gemm")
    assert gemm.output[0] == "output"
    assert next(n for n in clean.graph.node if n.op_type == "ConvTranspose").output[0] == "ct_bn"
    _assert_same_outputs(model, clean, random_feed(model, batch=3))


def test_identity_to_graph_output_keeps_the_output_name() -> None:
    nodes = [
        helper.make_node("Relu", ["input"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["output"], name="id"),
        helper.make_node("Identity", ["input"], ["passthrough"], name="id_in"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("passthrough", TensorProto.FLOAT, ["N", 4]),
    ]
    model = make_model(nodes, inputs, outputs, [])
    clean = cleanup(model)
    relu = next(n for n in clean.graph.node if n.op_type == "Relu")
    assert relu.output[0] == "output"
    # A graph input cannot be renamed: that Identity must stay.
    assert [n.name for n in clean.graph.node if n.op_type == "Identity"] == ["id_in"]
    _assert_same_outputs(model, clean, random_feed(model))


def test_dropout_removed_unless_mask_is_used() -> None:
    nodes = [
        helper.make_node("Dropout", ["input"], ["d", "unused_mask"], name="drop"),
        helper.make_node("Relu", ["d"], ["output"], name="relu"),
        helper.make_node("Dropout", ["input"], ["d2", "mask"], name="drop_mask"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])]
    outputs = [
        helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 4]),
    ]
    model = make_model(nodes, inputs, outputs, [])
    clean = cleanup(model)
    assert [n.name for n in clean.graph.node] == ["relu", "drop_mask"]
    assert clean.graph.node[0].input[0] == "input"


def test_weights_listed_as_inputs_become_initializers() -> None:
    model = conv_bn_relu_cnn()
    for t in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    clean = cleanup(model)
    assert [i.name for i in clean.graph.input] == ["input"]
    assert "BatchNormalization" not in _ops(clean)


def test_constants_and_random_ops() -> None:
    shape = numpy_helper.from_array(np.array([4], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))
        ),
        helper.make_node("Mul", ["ones", "two"], ["twos"]),
        helper.make_node("Add", ["input", "twos"], ["a"], name="add"),
        helper.make_node("RandomUniform", [], ["noise"], shape=[4], low=0.0, high=1e-9, name="rand"),
        helper.make_node("Add", ["a", "noise"], ["output"], name="add_noise"),
        helper.make_node("Neg", ["two"], ["unused"], name="dead"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])]
    model = make_model(nodes, inputs, outputs, [shape])
    clean = cleanup(model)
    assert [n.name for n in clean.graph.node] == ["add", "rand", "add_noise"]
    twos = next(t for t in clean.graph.initializer if t.name == "twos")
    np.testing.assert_array_equal(numpy_helper.to_array(twos), np.full(4, 2.0, np.float32))
    assert {t.name for t in clean.graph.initializer} == {"twos"}


def test_huge_non_weight_constants_are_not_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup_mod, "MAX_FOLDED_BYTES", 1024)
    big = numpy_helper.from_array(np.array([64, 64], dtype=np.int64), "big_shape")
    wshape = numpy_helper.from_array(np.array([64, 64], dtype=np.int64), "w_shape")
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["big_shape"],
            ["bias"],
            name="make_bias",
            value=numpy_helper.from_array(np.full(1, 0.5, np.float32)),
        ),
        helper.make_node(
            "ConstantOfShape",
            ["w_shape"],
            ["w"],
            name="make_w",
            value=numpy_helper.from_array(np.full(1, 0.01, np.float32)),
        ),
        helper.make_node("MatMul", ["input", "w"], ["mm"], name="mm"),
        helper.make_node("Add", ["mm", "bias"], ["output"], name="add"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [64, 64])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [64, 64])]
    model = make_model(nodes, inputs, outputs, [big, wshape])
    clean = cleanup(model)
    # 16 KB each: the MatMul weight is folded anyway, the activation-sized bias is not.
    assert [n.name for n in clean.graph.node] == ["make_bias", "mm", "add"]
    assert "w" in {t.name for t in clean.graph.initializer}
    _assert_same_outputs(model, clean, random_feed(model))


def test_light_resnet50_cleans_and_runs() -> None:
    path = os.path.join(LIGHT_DIR, "light_resnet50.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx wheel without backend test data")
    model = onnx.load(path)
    assert _ops(model)["ConstantOfShape"] > 200
    clean = cleanup(model)
    onnx.checker.check_model(clean)
    ops = _ops(clean)
    assert "ConstantOfShape" not in ops and "BatchNormalization" not in ops
    assert ops["Conv"] == 53
    inits = {t.name for t in clean.graph.initializer}
    assert all(n.input[1] in inits for n in clean.graph.node if n.op_type == "Conv")
    assert [i.name for i in clean.graph.input] == ["gpu_0/data_0"]
    feed = {"gpu_0/data_0": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    # The softmax output is flat (all generated weights are equal); compare pre-softmax tensors too.
    probes = [n.output[0] for n in clean.graph.node if n.op_type in ("Gemm", "Sum")][-3:]
    ra, rb = run_model(model, feed, probes), run_model(clean, feed, probes)
    for name in ra:
        np.testing.assert_allclose(rb[name], ra[name], rtol=1e-4, atol=1e-6, err_msg=name)


def test_identity_read_inside_a_subgraph_is_rewired() -> None:
    """An If branch reading an Identity output from the outer scope still finds its tensor."""
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["id_out"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["N", 4])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["id_out"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["N", 4])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("Sigmoid", ["input"], ["s"], name="sig"),
        helper.make_node("Identity", ["s"], ["id_out"], name="id"),
        helper.make_node("If", ["cond"], ["output"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])]
    model = make_model(nodes, inputs, outputs, [cond])
    clean = cleanup(model)
    assert "Identity" not in _ops(clean)
    onnx.checker.check_model(clean, full_check=True)
    _assert_same_outputs(model, clean, random_feed(model))


def test_in_place_cleanup_gives_the_same_model_as_a_copying_one() -> None:
    """prepare_model cleans the model it loaded in place (saving a copy of the weights); the result
    must be what the copying clean-up gives, in a separate object (the compact copy)."""
    copied = cleanup(conv_bn_relu_cnn())
    owned = conv_bn_relu_cnn()
    in_place = cleanup(owned, in_place=True)
    assert in_place is not owned
    assert in_place.SerializeToString() == copied.SerializeToString()


def test_release_free_memory_is_safe_to_call() -> None:
    import sys

    from quant._memory import release_free_memory

    assert release_free_memory() in (True, False)
    if sys.platform.startswith("linux") and os.path.exists("/lib/x86_64-linux-gnu/libc.so.6"):
        assert release_free_memory() is True  # glibc
