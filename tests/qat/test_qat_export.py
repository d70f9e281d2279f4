"""quant.qat.export: PyTorch fake-quant model -> Q/DQ ONNX that ONNX Runtime runs the same way."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from qat_fixtures import blobs, small_cnn  # noqa: E402
from torch import nn  # noqa: E402

from quant.errors import CalibrationError, ModelError  # noqa: E402
from quant.graph.inspect import precision_view  # noqa: E402
from quant.qat.calibrate import calibrate_model  # noqa: E402
from quant.qat.export import export_float_onnx, export_onnx, onnx_tensor_names  # noqa: E402
from quant.qat.onnx_post import check_qdq  # noqa: E402
from quant.qat.swap import quantize_model, quantizers  # noqa: E402
from tests.models import exact_int8_options  # noqa: E402

pytestmark = pytest.mark.torch


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), exact_int8_options(), providers=["CPUExecutionProvider"])


def _calibrated_cnn() -> tuple[Any, np.ndarray]:
    x, _ = blobs(64, seed=3)
    q: Any = quantize_model(small_cnn())
    calibrate_model(q, [torch.from_numpy(x[i:i + 16]) for i in range(0, 64, 16)], method="entropy")
    return q, x


def _dq_outputs_by_quantizer(model: onnx.ModelProto, q: nn.Module, names: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """The DequantizeLinear output of each activation quantizer (matched by input tensor and scale)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out: dict[str, str] = {}
    for qname, quantizer in quantizers(q).items():
        scale = float(quantizer.amax) / 127
        for node in model.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] in names[qname] and \
                    abs(float(inits[node.input[1]]) - scale) <= 1e-6 * scale:
                dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0])
                out[qname] = dq.output[0]
    return out


def test_round_trip_onnx_runtime_matches_pytorch_fake_quant_within_one_step() -> None:
    """Every quantized activation agrees within one quantization step (a rounding tie broken the
    other way, rarely); the logits within what one step at the last layer's input can move."""
    q, x_cal = _calibrated_cnn()
    x = torch.from_numpy(blobs(32, seed=7)[0])
    exported = export_onnx(q, x[:2], output_names=["logits"])
    names = onnx_tensor_names(q, x[:2], output_names=["logits"])
    dq_out = _dq_outputs_by_quantizer(exported, q, names)
    assert set(dq_out) == set(quantizers(q))

    probe = copy.deepcopy(exported)
    for name in dq_out.values():
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = _session(probe)
    results = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()}), strict=True))

    captured: dict[str, np.ndarray] = {}
    hooks = [quantizer.register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o.detach().numpy()))
             for n, quantizer in quantizers(q).items()]
    with torch.no_grad():
        logits = q(x).numpy()
    for h in hooks:
        h.remove()

    for qname, out_name in dq_out.items():
        step = float(quantizers(q)[qname].amax) / 127
        diff = np.abs(results[out_name] - captured[qname])
        assert diff.max() <= step * 1.0001, qname
        assert (diff > step / 2).mean() < 0.02, qname  # off-by-one-step only at rare rounding ties
    fc_step = float(q.fc.input_quantizer.amax) / 127
    bound = fc_step * float(q.fc.weight.detach().abs().sum(1).max()) * 1.001 + 1e-5
    assert np.abs(results["logits"] - logits).max() <= bound
    # and the exported model still classifies like the PyTorch model
    assert (results["logits"].argmax(1) == logits.argmax(1)).mean() >= 0.95


def test_export_follows_the_explicit_quantization_rules() -> None:
    q, _ = _calibrated_cnn()
    model = export_onnx(q, torch.zeros(1, 1, 8, 8), output_names=["logits"])
    ops = [n.op_type for n in model.graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops and "Constant" not in ops
    assert ops.count("QuantizeLinear") == 6  # conv1, conv2, both add inputs, up, fc
    inits = {t.name: t for t in model.graph.initializer}
    by_output = {o: n for n in model.graph.node for o in n.output}
    axes = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
            w_dq = by_output[node.input[1]]
            assert w_dq.op_type == "DequantizeLinear"
            assert inits[w_dq.input[0]].data_type == TensorProto.INT8  # INT8 initializer, no runtime Q
            x_dq = by_output[node.input[0]]
            assert x_dq.op_type == "DequantizeLinear" and by_output[x_dq.input[0]].op_type == "QuantizeLinear"
            axes[node.op_type] = helper.get_attribute_value(w_dq.attribute[0])
            if len(node.input) > 2:
                assert node.input[2] in inits and inits[node.input[2]].data_type == TensorProto.FLOAT  # float bias
        if node.op_type == "Add":
            assert all(by_output[i].op_type == "DequantizeLinear" for i in node.input)
    assert axes == {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any()
    check_qdq(model)
    view = precision_view(model)
    assert view.orphans == ()
    assert view.counts["int8"] == 5  # conv1, conv2, add, up, fc
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_linear_on_3d_input_exports_matmul_with_axis_1_weights() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    q: Any = quantize_model(model)
    x = torch.randn(4, 7, 6)
    calibrate_model(q, [x], method="minmax")
    exported = export_onnx(q, x, output_names=["out"])
    ops = [n.op_type for n in exported.graph.node]
    assert "Transpose" not in ops and ops.count("MatMul") == 2
    inits = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    for n in exported.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 2:
            assert helper.get_attribute_value(n.attribute[0]) == 1
    with torch.no_grad():
        expected = q(x).numpy()
    got = _session(exported).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert precision_view(exported).orphans == ()


def test_export_leaves_the_model_as_it_was() -> None:
    q, _ = _calibrated_cnn()
    q.train()
    export_onnx(q, torch.zeros(1, 1, 8, 8))
    assert q.training
    assert all(m._export_weight_scale is None for m in q.modules() if hasattr(m, "_export_weight_scale"))


def test_export_without_calibration_is_an_error() -> None:
    q: Any = quantize_model(small_cnn())
    with pytest.raises(CalibrationError, match="'conv1.input_quantizer' has no amax"):
        export_onnx(q, torch.zeros(1, 1, 8, 8))


def test_export_of_an_untraceable_model_is_a_model_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("cannot trace me")

    q: Any = quantize_model(Branchy())
    q.fc.input_quantizer.set_amax(1.0)
    with pytest.raises(ModelError, match="torch.onnx.export of the QAT model failed: cannot trace me"):
        export_onnx(q, torch.zeros(1, 2))
    with pytest.raises(ModelError, match="opset 11 has no per-channel"):
        export_onnx(q, torch.zeros(1, 2), opset=11)


def test_float_export_has_no_qdq_and_matches_the_float_model() -> None:
    model: Any = small_cnn()
    x = torch.from_numpy(blobs(4)[0])
    proto = export_float_onnx(quantize_model(model), x, output_names=["logits"])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    with torch.no_grad():
        np.testing.assert_allclose(_session(proto).run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-5)
