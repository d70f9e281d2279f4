"""quant.graph.inspect: per-layer precision and orphan Q/DQ detection."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ReportError
from quant.graph.cleanup import cleanup
from quant.graph.inspect import PrecisionView, precision_view, render_precision_view
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.models import conv_bn_relu_cnn, make_model, random_feed, residual_block, run_model


def _qdq(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
    clean = cleanup(model)
    tensors = calibration_tensors(clean)
    outs = run_model(clean, random_feed(clean), tensors)
    return insert_qdq(clean, {t: float(np.abs(outs[t]).max()) for t in tensors}, exclude=exclude).model


def test_insert_qdq_output_has_no_orphans() -> None:
    view = precision_view(_qdq(residual_block()))
    assert view.orphans == ()
    by_name = {layer.name: layer.precision for layer in view.layers}
    assert by_name == {
        "stem": "int8",
        "stem_relu": "float",
        "conv1": "int8",
        "relu1": "float",
        "conv2": "int8",
        "residual_add": "int8",
        "relu_out": "float",
    }
    assert dict(view.counts) == {"int8": 4, "float": 3}
    text = render_precision_view(view)
    assert "residual_add  Add   int8" in text
    assert "7 layers: int8 4, float 3" in text
    assert "no orphan Q/DQ nodes" in text


def test_excluded_layer_is_float_and_float_model_has_no_int8() -> None:
    view = precision_view(_qdq(conv_bn_relu_cnn(), exclude=("fc",)))
    by_name = {layer.name: layer.precision for layer in view.layers}
    assert by_name["fc"] == "float" and by_name["conv1"] == "int8"
    assert view.orphans == ()
    plain = precision_view(conv_bn_relu_cnn())
    assert plain.counts["int8"] == 0 and plain.counts["float"] == len(plain.layers) == 9


def _orphan_model() -> onnx.ModelProto:
    """x -Q-DQ-> MaxPool (reformat) ; x -Q-> output (no DQ) ; Conv with a float weight after a DQ."""
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q_x"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq_x"),
        helper.make_node("MaxPool", ["xdq"], ["pool"], name="pool", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["pool", "w"], ["conv"], name="conv"),
        helper.make_node("QuantizeLinear", ["conv", "s", "z"], ["conv_q"], name="q_dangling"),
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq2"], name="q2"),
        helper.make_node("DequantizeLinear", ["xq2", "s", "z"], ["xdq2"], name="dq_float_conv"),
        helper.make_node("Conv", ["xdq2", "w"], ["conv2"], name="conv_float_weight"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 2, 3, 3])]
    outputs = [
        helper.make_tensor_value_info("conv_q", TensorProto.INT8, ["N", 2, 3, 3]),
        helper.make_tensor_value_info("conv2", TensorProto.FLOAT, ["N", 2, 3, 3]),
    ]
    return make_model(nodes, inputs, outputs, [w, scale, zero])


def test_orphans_in_a_hand_made_graph() -> None:
    view = precision_view(_orphan_model())
    orphans = {o.name: o for o in view.orphans}
    assert set(orphans) == {"dq_x", "q_dangling", "dq_float_conv"}
    assert orphans["dq_x"].reason == "consumers not running in INT8: 'pool' (MaxPool)"
    assert orphans["dq_x"].tensor == "xdq"
    assert orphans["q_dangling"].op_type == "QuantizeLinear"
    assert orphans["q_dangling"].reason == "not followed by a DequantizeLinear"
    assert orphans["dq_float_conv"].reason == "consumers not running in INT8: 'conv_float_weight' (Conv)"
    assert {layer.name: layer.precision for layer in view.layers} == {
        "pool": "float",
        "conv": "float",
        "conv_float_weight": "float",  # its weight is float: TensorRT runs it in float
    }
    text = render_precision_view(view)
    assert "3 orphan Q/DQ nodes (TensorRT inserts reformat layers):" in text
    assert "  dq_x (DequantizeLinear) on 'xdq': consumers not running in INT8: 'pool' (MaxPool)" in text


def test_precision_view_dict_roundtrip_and_errors() -> None:
    view = precision_view(_orphan_model())
    d = view.to_dict()
    assert d["counts"] == {"int8": 0, "float": 3}
    again = PrecisionView.from_dict(d)
    assert again == view
    assert again.to_dict() == d
    with pytest.raises(ReportError, match="expected an object with a 'layers' list"):
        PrecisionView.from_dict({"layers": 3})
    with pytest.raises(ReportError, match=r"needs name, op_type and precision \(int8 or float\)"):
        PrecisionView.from_dict({"layers": [{"name": "a", "op_type": "Conv", "precision": "int4"}]})
    with pytest.raises(ReportError, match="needs name, op_type, tensor and reason"):
        PrecisionView.from_dict({"layers": [], "orphans": [{"name": "x"}]})
    with pytest.raises(ReportError, match="'orphans' must be a list"):
        PrecisionView.from_dict({"layers": [], "orphans": {}})
