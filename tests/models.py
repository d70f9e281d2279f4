"""Small ONNX models built in code for the tests of every quant module.

Each builder returns a checked ``onnx.ModelProto`` (opset 17, IR version 8, so every ONNX Runtime
in range runs it) whose input is called ``"input"`` with a dynamic batch dimension ``"N"`` unless
stated otherwise. Weights are deterministic (seeded) float32 initializers. Keep these builders
cheap: they are called from many tests.

Builders:
- :func:`conv_bn_relu_cnn` -- Conv -> BatchNormalization -> Relu -> MaxPool -> Conv -> Relu ->
  GlobalAveragePool -> Flatten -> Gemm, output ``"logits"`` (N, 10).
- :func:`residual_block` -- Conv -> Relu -> Conv, then ``Add(conv, skip)`` -> Relu, output ``"output"``.
- :func:`identity_weights_cnn` -- two Convs whose weights reach them through Identity nodes (as in
  PyTorch exports), one with a BatchNormalization, output ``"output"``.
- :func:`mlp` -- MatMul (constant B) + Add bias -> Relu -> Gemm (transB=1) -> Relu -> Gemm
  (transB=0), input ``"input"`` (N, 16), output ``"output"`` (N, 4).
- :func:`two_input_two_output` -- inputs ``"input"`` (N, 8) and ``"input2"`` (N, 8); outputs
  ``"sum_out"`` and ``"prod_out"``.
- :func:`transformer_block` -- LayerNormalization, Q/K/V MatMuls, MatMul(Q, K^T), Softmax,
  MatMul(attn, V), output projection, residual Add, input ``"input"`` (N, 6, 16).
- :func:`shared_input_convs` -- one activation feeding two Convs (shared Q/DQ tests).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

__all__ = [
    "ALL_BUILDERS",
    "IR_VERSION",
    "OPSET",
    "conv_bn_relu_cnn",
    "exact_int8_options",
    "mlp_eval_files",
    "identity_weights_cnn",
    "make_model",
    "mlp",
    "random_feed",
    "run_model",
    "residual_block",
    "shared_input_convs",
    "transformer_block",
    "two_input_two_output",
]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _weights(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    *,
    name: str = "test_model",
    opset: int = OPSET,
) -> onnx.ModelProto:
    """Assemble and check a model (default domain at ``opset``, IR version 8)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="quant-tests",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _bn_params(rng: np.random.Generator, prefix: str, channels: int) -> list[onnx.TensorProto]:
    return [
        _init(f"{prefix}.scale", (1.0 + 0.2 * rng.standard_normal(channels)).astype(np.float32)),
        _init(f"{prefix}.bias", (0.1 * rng.standard_normal(channels)).astype(np.float32)),
        _init(f"{prefix}.mean", (0.1 * rng.standard_normal(channels)).astype(np.float32)),
        _init(f"{prefix}.var", (0.5 + rng.random(channels)).astype(np.float32)),
    ]


def conv_bn_relu_cnn(*, height: int = 16, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """Conv-BN-Relu CNN classifier: input (N, 3, H, W), output "logits" (N, 10)."""
    rng = _rng(seed)
    inits = [
        _init("conv1.weight", _weights(rng, (8, 3, 3, 3))),
        _init("conv1.bias", _weights(rng, (8,), 0.1)),
        *_bn_params(rng, "bn1", 8),
        _init("conv2.weight", _weights(rng, (16, 8, 3, 3), 0.2)),
        _init("conv2.bias", _weights(rng, (16,), 0.1)),
        _init("fc.weight", _weights(rng, (10, 16), 0.3)),
        _init("fc.bias", _weights(rng, (10,), 0.1)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "BatchNormalization",
            ["conv1_out", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"],
            ["bn1_out"],
            name="bn1",
            epsilon=1e-5,
        ),
        helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"),
        helper.make_node(
            "MaxPool", ["relu1_out"], ["pool1_out"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Conv",
            ["pool1_out", "conv2.weight", "conv2.bias"],
            ["conv2_out"],
            name="conv2",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["relu2_out"], ["gap_out"], name="gap"),
        helper.make_node("Flatten", ["gap_out"], ["flat_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, height, width])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    return make_model(nodes, inputs, outputs, inits, name="conv_bn_relu_cnn")


def residual_block(*, channels: int = 8, size: int = 8, seed: int = 1) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Add(skip) -> Relu; input (N, C, S, S), output "output".

    The stem Conv output ``"stem_out"`` (after Relu: ``"stem_relu"``) feeds both the branch Conv and
    the residual Add, so the Add has two activation inputs (``"conv2_out"`` and ``"stem_relu"``).
    """
    rng = _rng(seed)
    c = channels
    inits = [
        _init("stem.weight", _weights(rng, (c, 3, 3, 3))),
        _init("stem.bias", _weights(rng, (c,), 0.1)),
        _init("conv1.weight", _weights(rng, (c, c, 3, 3), 0.2)),
        _init("conv1.bias", _weights(rng, (c,), 0.1)),
        _init("conv2.weight", _weights(rng, (c, c, 3, 3), 0.2)),
        _init("conv2.bias", _weights(rng, (c,), 0.1)),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["input", "stem.weight", "stem.bias"], ["stem_out"], name="stem", pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["stem_out"], ["stem_relu"], name="stem_relu"),
        helper.make_node(
            "Conv",
            ["stem_relu", "conv1.weight", "conv1.bias"],
            ["conv1_out"],
            name="conv1",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"], name="relu1"),
        helper.make_node(
            "Conv",
            ["relu1_out", "conv2.weight", "conv2.bias"],
            ["conv2_out"],
            name="conv2",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Add", ["conv2_out", "stem_relu"], ["add_out"], name="residual_add"),
        helper.make_node("Relu", ["add_out"], ["output"], name="relu_out"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", c, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="residual_block")


def identity_weights_cnn(*, size: int = 8, seed: int = 2) -> onnx.ModelProto:
    """Two Convs whose weights (and one bias) arrive through Identity nodes, as in PyTorch exports.

    ``conv1`` is followed by a BatchNormalization (``"bn_out"``); ``conv2`` is fed through an
    Identity chain of length two. Input (N, 3, S, S), output "output" (N, 6, S, S).
    """
    rng = _rng(seed)
    inits = [
        _init("onnx::Conv_w1", _weights(rng, (4, 3, 3, 3))),
        _init("onnx::Conv_b1", _weights(rng, (4,), 0.1)),
        *_bn_params(rng, "bn", 4),
        _init("onnx::Conv_w2", _weights(rng, (6, 4, 1, 1))),
    ]
    nodes = [
        helper.make_node("Identity", ["onnx::Conv_w1"], ["conv1.weight"], name="Identity_0"),
        helper.make_node("Identity", ["onnx::Conv_b1"], ["conv1.bias"], name="Identity_1"),
        helper.make_node("Identity", ["onnx::Conv_w2"], ["w2_a"], name="Identity_2"),
        helper.make_node("Identity", ["w2_a"], ["conv2.weight"], name="Identity_3"),
        helper.make_node(
            "Conv", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1", pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "BatchNormalization",
            ["conv1_out", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
            ["bn_out"],
            name="bn",
        ),
        helper.make_node("Relu", ["bn_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "conv2.weight"], ["output"], name="conv2"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 6, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="identity_weights_cnn")


def mlp(*, features: int = 16, hidden: int = 32, classes: int = 4, seed: int = 3) -> onnx.ModelProto:
    """MatMul(x, W) + b -> Relu -> Gemm(transB=1) -> Relu -> Gemm(transB=0); input (N, F), output "output"."""
    rng = _rng(seed)
    inits = [
        _init("fc1.weight", _weights(rng, (features, hidden))),  # (in, out): MatMul constant B
        _init("fc1.bias", _weights(rng, (hidden,), 0.1)),
        _init("fc2.weight", _weights(rng, (hidden, hidden), 0.2)),  # (out, in): transB=1
        _init("fc2.bias", _weights(rng, (hidden,), 0.1)),
        _init("fc3.weight", _weights(rng, (hidden, classes), 0.2)),  # (in, out): transB=0
        _init("fc3.bias", _weights(rng, (classes,), 0.1)),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "fc1.weight"], ["fc1_mm"], name="fc1_matmul"),
        helper.make_node("Add", ["fc1_mm", "fc1.bias"], ["fc1_out"], name="fc1_add"),
        helper.make_node("Relu", ["fc1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Gemm", ["relu1_out", "fc2.weight", "fc2.bias"], ["fc2_out"], name="fc2", transB=1),
        helper.make_node("Relu", ["fc2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("Gemm", ["relu2_out", "fc3.weight", "fc3.bias"], ["output"], name="fc3"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])]
    return make_model(nodes, inputs, outputs, inits, name="mlp")


def two_input_two_output(*, features: int = 8, seed: int = 4) -> onnx.ModelProto:
    """Inputs "input" and "input2" (N, F); outputs "sum_out" = Relu(x W1 + y W2) and "prod_out" = x * y."""
    rng = _rng(seed)
    inits = [
        _init("w1", _weights(rng, (features, features))),
        _init("w2", _weights(rng, (features, features))),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["mm1_out"], name="mm1"),
        helper.make_node("MatMul", ["input2", "w2"], ["mm2_out"], name="mm2"),
        helper.make_node("Add", ["mm1_out", "mm2_out"], ["add_out"], name="add"),
        helper.make_node("Relu", ["add_out"], ["sum_out"], name="relu"),
        helper.make_node("Mul", ["input", "input2"], ["prod_out"], name="mul"),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features]),
        helper.make_tensor_value_info("input2", TensorProto.FLOAT, ["N", features]),
    ]
    outputs = [
        helper.make_tensor_value_info("sum_out", TensorProto.FLOAT, ["N", features]),
        helper.make_tensor_value_info("prod_out", TensorProto.FLOAT, ["N", features]),
    ]
    return make_model(nodes, inputs, outputs, inits, name="two_input_two_output")


def transformer_block(*, seq: int = 6, dim: int = 16, seed: int = 5) -> onnx.ModelProto:
    """Single-head attention block: LayerNorm -> Q/K/V MatMuls -> softmax(Q K^T / sqrt(d)) V -> proj -> +x.

    Input "input" (N, seq, dim), output "output" (N, seq, dim). Has activation-activation MatMuls
    (``"scores"`` and ``"context"``), a Softmax, a LayerNormalization and a residual Add.
    """
    rng = _rng(seed)
    inits = [
        _init("ln.scale", (1.0 + 0.1 * rng.standard_normal(dim)).astype(np.float32)),
        _init("ln.bias", (0.1 * rng.standard_normal(dim)).astype(np.float32)),
        _init("wq", _weights(rng, (dim, dim), 0.25)),
        _init("wk", _weights(rng, (dim, dim), 0.25)),
        _init("wv", _weights(rng, (dim, dim), 0.25)),
        _init("wo", _weights(rng, (dim, dim), 0.25)),
        _init("bo", _weights(rng, (dim,), 0.1)),
        _init("inv_sqrt_d", np.array(1.0 / np.sqrt(dim), dtype=np.float32)),
    ]
    nodes = [
        helper.make_node(
            "LayerNormalization",
            ["input", "ln.scale", "ln.bias"],
            ["ln_out"],
            name="ln",
            axis=-1,
            epsilon=1e-5,
        ),
        helper.make_node("MatMul", ["ln_out", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["ln_out", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["ln_out", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["k_t"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores_raw"], name="qk_matmul"),
        helper.make_node("Mul", ["scores_raw", "inv_sqrt_d"], ["scores"], name="scale"),
        helper.make_node("Softmax", ["scores"], ["attn"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["context"], name="av_matmul"),
        helper.make_node("MatMul", ["context", "wo"], ["proj_mm"], name="out_proj"),
        helper.make_node("Add", ["proj_mm", "bo"], ["proj_out"], name="out_proj_bias"),
        helper.make_node("Add", ["proj_out", "input"], ["output"], name="residual_add"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", seq, dim])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", seq, dim])]
    return make_model(nodes, inputs, outputs, inits, name="transformer_block")


def shared_input_convs(*, size: int = 8, seed: int = 6) -> onnx.ModelProto:
    """One activation ("relu_out") feeds two Convs and a non-quantizable MaxPool; outputs concatenated."""
    rng = _rng(seed)
    inits = [
        _init("stem.weight", _weights(rng, (4, 3, 3, 3))),
        _init("a.weight", _weights(rng, (4, 4, 1, 1))),
        _init("b.weight", _weights(rng, (4, 4, 3, 3), 0.2)),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "stem.weight"], ["stem_out"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["stem_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "a.weight"], ["a_out"], name="conv_a"),
        helper.make_node("Conv", ["relu_out", "b.weight"], ["b_out"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node(
            "MaxPool",
            ["relu_out"],
            ["pool_out"],
            name="pool",
            kernel_shape=[3, 3],
            strides=[1, 1],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Concat", ["a_out", "b_out", "pool_out"], ["output"], name="concat", axis=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 12, size, size])]
    return make_model(nodes, inputs, outputs, inits, name="shared_input_convs")


ALL_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_bn_relu_cnn": conv_bn_relu_cnn,
    "residual_block": residual_block,
    "identity_weights_cnn": identity_weights_cnn,
    "mlp": mlp,
    "two_input_two_output": two_input_two_output,
    "transformer_block": transformer_block,
    "shared_input_convs": shared_input_convs,
}


def random_feed(model: onnx.ModelProto, *, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """A float32 feed for every real graph input (dynamic dims become ``batch``)."""
    rng = _rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feed: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feed[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def exact_int8_options() -> Any:
    """ONNX Runtime session options that compute Q/DQ as float maths (TensorRT's arithmetic, the
    same on every CPU), for tests that open their own InferenceSession."""
    import onnxruntime as ort

    from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

    opts = ort.SessionOptions()
    for key, value in EXACT_INT8_SESSION_CONFIG.items():
        opts.add_session_config_entry(key, value)
    return opts


def run_model(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    extra_outputs: tuple[str, ...] | list[str] = (),
    *,
    int8: str = "exact",
) -> dict[str, np.ndarray]:
    """Run ``model`` in ONNX Runtime (CPU, one thread); outputs by name, ``extra_outputs`` included.

    ``int8="exact"`` (default) computes Q/DQ as float maths, TensorRT's arithmetic on every CPU;
    ``"fused"`` lets ORT fuse them into its integer kernels, which depend on the CPU (see
    quant/backends/cpu.py): only for the ONNX Runtime deployment form built for this CPU."""
    import onnxruntime as ort

    from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in extra_outputs:
        if name not in present:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if int8 == "exact":
        for key, value in EXACT_INT8_SESSION_CONFIG.items():
            opts.add_session_config_entry(key, value)
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def mlp_eval_files(folder: Path, *, samples: int, seed: int) -> tuple[Path, Path, Path]:
    """The :func:`mlp` classifier (16 features, 6 classes) saved in ``folder``, ``samples`` seeded
    labelled samples as ``val.npz`` and a quant cache calibrated on them: (model, data, cache)."""
    from quant import api
    from quant.config import DataOptions

    model = folder / "mlp.onnx"
    onnx.save(mlp(features=16, hidden=32, classes=6), str(model))
    rng = np.random.default_rng(seed)
    data = folder / "val.npz"
    np.savez(data, input=rng.standard_normal((samples, 16)).astype(np.float32), labels=rng.integers(0, 6, samples))
    cache = folder / "mlp.cache"
    api.calibrate(model, DataOptions(str(data)), cache=cache)
    return model, data, cache
