"""quant.qat.onnx_loader: small ONNX CNNs rebuilt as PyTorch modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from quant.errors import ModelError  # noqa: E402
from quant.qat.calibrate import calibrate_model, load_amax  # noqa: E402
from quant.qat.export import export_onnx  # noqa: E402
from quant.qat.modules import Add, QuantAdd, QuantConv2d, QuantLinear  # noqa: E402
from quant.qat.onnx_loader import quantizer_tensor_names, torch_module_from_onnx  # noqa: E402
from quant.qat.swap import quantize_model  # noqa: E402
from tests.models import conv_bn_relu_cnn, make_model, mlp, random_feed, residual_block, transformer_block  # noqa: E402

pytestmark = pytest.mark.torch


def _ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feed)]


@pytest.mark.parametrize("builder", [conv_bn_relu_cnn, residual_block, mlp])
def test_rebuilt_module_computes_what_onnx_runtime_computes(builder: Callable[[], onnx.ModelProto]) -> None:
    model = builder()
    feed = random_feed(model, batch=3)
    tm: Any = torch_module_from_onnx(model)
    with torch.no_grad():
        got = tm(*(torch.from_numpy(v) for v in feed.values()))
    np.testing.assert_allclose(got.numpy(), _ort(model, feed)[0], rtol=1e-4, atol=1e-4)


def test_demo_model_rebuilds_with_module_names_and_tensor_names() -> None:
    from quant.demo import demo_model_path

    proto = onnx.load(demo_model_path())
    tm: Any = torch_module_from_onnx(proto)
    assert {"conv1", "conv2", "fc1", "fc2", "fc3", "bn1", "bn2"} <= {n for n, _ in tm.named_children()}
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        np.testing.assert_allclose(tm(x).numpy(), _ort(proto, {"input": x.numpy()})[0], rtol=1e-4, atol=1e-4)
    names = quantizer_tensor_names(tm)
    assert names["conv1.input_quantizer"] == ("input",)
    assert names["conv2.input_quantizer"] == ("pool1_out",)
    assert names["fc1.input_quantizer"] == ("flatten_out",)
    q: Any = quantize_model(tm)
    assert isinstance(q.conv1, QuantConv2d) and isinstance(q.fc3, QuantLinear)
    assert quantizer_tensor_names(q) == names


def test_residual_add_becomes_a_quantized_add_matched_to_both_tensors() -> None:
    model = residual_block()
    tm: Any = torch_module_from_onnx(model)
    adds = [n for n, m in tm.named_children() if type(m) is Add]
    assert len(adds) == 1
    q: Any = quantize_model(tm)
    assert isinstance(getattr(q, adds[0]), QuantAdd)
    names = quantizer_tensor_names(q)
    add_inputs = next(n.input for n in model.graph.node if n.op_type == "Add")
    assert names[f"{adds[0]}.input_quantizer"] == (add_inputs[0],)
    assert names[f"{adds[0]}.other_quantizer"] == (add_inputs[1],)
    # every quantizer gets its amax from a cache keyed by the ONNX tensor names
    cache = {t: 1.0 + i for i, t in enumerate(sorted({v[0] for v in names.values()}))}
    init = load_amax(q, cache, names)
    assert init.unmatched == ()
    feed = random_feed(model, batch=2)
    exported = export_onnx(q, torch.from_numpy(feed["input"]), output_names=["output"])
    assert [n.op_type for n in exported.graph.node].count("QuantizeLinear") == len(names)


def test_asymmetric_conv_pads_and_gemm_alpha_beta() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    g = rng.normal(size=(5, 12)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[0, 1, 1, 0], strides=[2, 2], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "g", "gb"], ["output"], alpha=0.5, beta=2.0, transB=0, name="gemm"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g.T.copy(), "g"),
         numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "gb")],
    )
    x = rng.normal(size=(2, 2, 4, 4)).astype(np.float32)
    tm: Any = torch_module_from_onnx(model)
    with torch.no_grad():
        np.testing.assert_allclose(tm(torch.from_numpy(x)).numpy(), _ort(model, {"input": x})[0], rtol=1e-4, atol=1e-4)
    q: Any = quantize_model(tm)
    calibrate_model(q, [torch.from_numpy(x)], method="minmax")
    assert quantizer_tensor_names(q)["conv.input_quantizer"] == ("input",)  # the pad runs before the quantizer


def test_unsupported_op_names_the_node_and_the_way_out() -> None:
    with pytest.raises(ModelError, match=r"\(LayerNormalization\) is not supported .* --model module:function"):
        torch_module_from_onnx(transformer_block())


def test_non_constant_weight_is_refused() -> None:
    nodes = [helper.make_node("MatMul", ["input", "input2"], ["output"], name="mm")]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("input2", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
        [],
    )
    with pytest.raises(ModelError, match="node 'mm' \\(MatMul\\): input 'input2' must be a constant"):
        torch_module_from_onnx(model)


def test_quantizer_tensor_names_needs_a_rebuilt_model() -> None:
    with pytest.raises(ModelError, match="needs a model built by torch_module_from_onnx"):
        quantizer_tensor_names(torch.nn.Linear(2, 2))
