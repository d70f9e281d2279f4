"""Per-layer quantization error (quant.eval.layers) on small models built in code."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from eval_fixtures import ArrayDataset
from onnx import TensorProto, helper, numpy_helper

from quant.calibrators.calibrate import collect_statistics
from quant.calibrators.methods import CalibConfig, compute_amax
from quant.errors import DataError, ModelError, ReportError, UsageError
from quant.eval.layers import (
    LOCAL_SUFFIX,
    LayerError,
    layer_errors,
    local_error_model,
    quantized_layers,
    rank_layers,
)
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.models import make_model, residual_block, run_model

FEATURES = 16
HIDDEN = 32
OUTLIER_CHANNEL = 5


def outlier_mlp(*, opset: int = 17) -> onnx.ModelProto:
    """x (N, 16) -> gemm1 -> relu1 -> gemm2 -> relu2 -> gemm3 -> "out" (N, 4).

    gemm1's bias puts an extreme outlier (~500) in channel 5 of ``relu1_out``, and gemm2 ignores
    that channel (its weights there are zero): a per-tensor INT8 range stretched to the outlier
    rounds everything gemm2 uses to zero, so gemm2 is the destructive layer.
    """
    rng = np.random.default_rng(11)
    w1 = (rng.standard_normal((FEATURES, HIDDEN)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    b1[OUTLIER_CHANNEL] = 500.0
    w2 = (rng.standard_normal((HIDDEN, 16)) * 0.3).astype(np.float32)
    w2[OUTLIER_CHANNEL, :] = 0.0
    w3 = (rng.standard_normal((16, 4)) * 0.3).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(16, np.float32), "b2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["gemm1_out"], name="gemm1"),
        helper.make_node("Relu", ["gemm1_out"], ["relu1_out"], name="relu1"),
        helper.make_node("Gemm", ["relu1_out", "w2", "b2"], ["gemm2_out"], name="gemm2"),
        helper.make_node("Relu", ["gemm2_out"], ["relu2_out"], name="relu2"),
        helper.make_node("Gemm", ["relu2_out", "w3", "b3"], ["out"], name="gemm3"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", FEATURES])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])]
    return make_model(nodes, inputs, outputs, inits, name="outlier_mlp", opset=opset)


def _data(shape: tuple[int, ...], n: int = 48, seed: int = 3) -> ArrayDataset:
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return ArrayDataset(x, input_name="input")


def _quantize(model: onnx.ModelProto, data: ArrayDataset, method: str = "minmax") -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(clean FP32 model, Q/DQ model) with ranges calibrated on ``data``."""
    clean = cleanup(model)
    collector, _ = collect_statistics(clean, data, calibration_tensors(clean), batch_size=16, threads=1)
    amax = compute_amax(collector.stats(), CalibConfig(method=method))
    return clean, insert_qdq(clean, amax).model


@pytest.fixture(scope="module")
def mlp_pair() -> tuple[onnx.ModelProto, onnx.ModelProto, ArrayDataset]:
    data = _data((FEATURES,))
    clean, qdq = _quantize(outlier_mlp(), data)
    return clean, qdq, data


def test_quantized_layers_name_each_int8_node_its_output_and_quantized_inputs(mlp_pair) -> None:
    _, qdq, _ = mlp_pair
    layers = quantized_layers(qdq)
    assert [(la.name, la.op_type, la.output, la.inputs) for la in layers] == [
        ("gemm1", "Gemm", "gemm1_out", ("input",)),
        ("gemm2", "Gemm", "gemm2_out", ("relu1_out",)),
        ("gemm3", "Gemm", "out", ("relu2_out",)),
    ]
    assert all(qdq.graph.node[la.index].name == la.name for la in layers)


def test_the_layer_behind_an_extreme_outlier_is_the_worst(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    errors = layer_errors(clean, qdq, data, batch_size=16, threads=1)
    assert [e.layer for e in errors][0] == "gemm2"
    worst = errors[0]
    assert worst.inputs == ("relu1_out",)
    assert worst.local is not None and worst.local_sqnr_db is not None
    others = {e.layer: e for e in errors[1:]}
    # The destroyed layer loses (nearly) all its signal; the healthy ones keep ~40 dB.
    assert worst.local_sqnr_db < 10.0
    assert all(e.local_sqnr_db is not None and e.local_sqnr_db > worst.local_sqnr_db + 15 for e in others.values())
    # Inside the INT8 model gemm3 inherits gemm2's damage: why the ranking uses the local error.
    assert others["gemm3"].sqnr_db is not None and others["gemm3"].sqnr_db < 10.0
    assert others["gemm3"].local_sqnr_db is not None and others["gemm3"].local_sqnr_db > 25.0
    assert [e.position for e in sorted(errors, key=lambda e: e.position)] == [0, 1, 2]
    assert errors == rank_layers(errors)


def test_first_layer_alone_equals_the_layer_in_the_int8_model(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    first = next(e for e in layer_errors(clean, qdq, data, batch_size=16, threads=1) if e.layer == "gemm1")
    # Same input, same Q/DQ: the two measurements agree (up to ORT's float rounding).
    assert first.local is not None and first.local.sqnr_db is not None and first.sqnr_db is not None
    assert abs(first.local.sqnr_db - first.sqnr_db) < 0.5
    assert first.fidelity.num_samples == len(data)


def test_local_error_model_computes_the_quantized_node_on_fp32_inputs(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    layers = quantized_layers(qdq)
    model, local = local_error_model(clean, qdq, layers)
    onnx.checker.check_model(model)
    assert local == {la.output: la.output + LOCAL_SUFFIX for la in layers}
    feed = {"input": data.x[:8]}
    got = run_model(model, feed, [*local.values(), "relu1_out"])
    # gemm1 alone == gemm1 in the Q/DQ model (same input).
    q_gemm1 = run_model(qdq, feed, ["gemm1_out"])["gemm1_out"]
    np.testing.assert_allclose(got[local["gemm1_out"]], q_gemm1, rtol=1e-5, atol=1e-4)
    # gemm2 alone: the FP32 relu1_out through gemm2's Q/DQ (its scale), times the INT8 weights.
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    scale = float(inits["relu1_out_scale"])
    x = np.clip(np.rint(got["relu1_out"] / scale), -128, 127) * scale
    w = inits["w2_quantized"].astype(np.float64) * inits["w2_scale"].astype(np.float64)
    np.testing.assert_allclose(got[local["gemm2_out"]], x @ w, rtol=1e-4, atol=1e-3)
    # The FP32 outputs of the augmented model are untouched.
    np.testing.assert_array_equal(run_model(model, feed)["out"], run_model(clean, feed)["out"])


def test_residual_add_is_a_layer_with_two_quantized_inputs() -> None:
    data = _data((3, 8, 8), n=12)
    clean, qdq = _quantize(residual_block(), data, method="entropy")
    errors = layer_errors(clean, qdq, data, batch_size=4, threads=1)
    add = next(e for e in errors if e.op_type == "Add")
    assert add.layer == "residual_add" and set(add.inputs) == {"conv2_out", "stem_relu"}
    assert add.local is not None and add.local.sqnr_db is not None and add.local.sqnr_db > 15
    assert {e.layer for e in errors} == {"stem", "conv1", "conv2", "residual_add"}


def test_old_opset_reference_is_converted_for_the_local_copies() -> None:
    data = _data((FEATURES,), n=16)
    clean, qdq = _quantize(outlier_mlp(opset=11), data)
    errors = layer_errors(clean, qdq, data, batch_size=8, threads=1)
    assert errors[0].layer == "gemm2"
    assert all(e.local is not None for e in errors)


def test_max_samples_caps_the_data_in_whole_batches(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    errors = layer_errors(clean, qdq, data, batch_size=4, max_samples=10, threads=1)
    assert {e.fidelity.num_samples for e in errors} == {12}
    assert {e.local.num_samples for e in errors if e.local is not None} == {12}


def test_tensors_selects_layers_and_local_can_be_switched_off(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    errors = layer_errors(clean, qdq, data, ["out", "gemm1_out"], batch_size=16, local=False, threads=1)
    assert sorted(e.tensor for e in errors) == ["gemm1_out", "out"]
    assert all(e.local is None for e in errors)
    # Without local errors the ranking falls back to the error in the INT8 model.
    assert errors[0].tensor == "out"


def test_unknown_tensor_is_a_model_error(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    with pytest.raises(ModelError, match=r"tensor 'relu2_out' is not the output of a quantized layer"):
        layer_errors(clean, qdq, data, ["relu2_out"], threads=1)


def test_model_without_int8_layers_is_a_model_error(mlp_pair) -> None:
    clean, _, data = mlp_pair
    with pytest.raises(ModelError, match=r"model 'int8' has no INT8 layer.*calibration cache"):
        layer_errors(clean, clean, data, threads=1)


def test_models_with_unrelated_tensor_names_are_a_model_error(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    other = onnx.ModelProto()
    other.CopyFrom(qdq)
    outs = {o for n in other.graph.node for o in n.output} - {"out"}
    for node in other.graph.node:
        for i, name in enumerate(node.input):
            if name in outs:
                node.input[i] = "x_" + name
        for i, name in enumerate(node.output):
            if name in outs:
                node.output[i] = "x_" + name
    other.graph.output[0].name = "out"
    # Only the graph output keeps its name: one layer is matched, the others are left out.
    errors = layer_errors(clean, other, data, batch_size=16, threads=1)
    assert [e.tensor for e in errors] == ["out"]
    assert errors[0].local is None  # its inputs have no FP32 counterpart
    renamed = onnx.ModelProto()
    renamed.CopyFrom(other)
    for node in renamed.graph.node:
        node.output[:] = ["y_" + o if o == "out" else o for o in node.output]
    renamed.graph.output[0].name = "y_out"
    with pytest.raises(ModelError, match=r"none of the 3 quantized layer outputs .* same model"):
        layer_errors(clean, renamed, data, threads=1)


def test_empty_data_is_a_data_error(mlp_pair) -> None:
    clean, qdq, _ = mlp_pair
    empty = ArrayDataset(np.zeros((0, FEATURES), np.float32), input_name="input")
    with pytest.raises(DataError, match="gave no samples"):
        layer_errors(clean, qdq, empty, threads=1)


def test_data_without_the_model_input_is_a_data_error(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    wrong = ArrayDataset(data.x, input_name="pixels")
    with pytest.raises(DataError, match=r"no input 'input'"):
        layer_errors(clean, qdq, wrong, threads=1)


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_samples": 0}, {"batch_size": True}])
def test_bad_sizes_are_usage_errors(mlp_pair, kwargs) -> None:
    clean, qdq, data = mlp_pair
    with pytest.raises(UsageError, match="positive integer"):
        layer_errors(clean, qdq, data, **kwargs)


def test_layer_error_round_trips_and_rejects_damage(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    errors = layer_errors(clean, qdq, data, batch_size=16, threads=1)
    for e in errors:
        assert LayerError.from_dict(e.to_dict()) == e
    d = errors[0].to_dict()
    d["inputs"] = [1]
    with pytest.raises(ReportError, match=r"'layer.inputs' should be a list of strings"):
        LayerError.from_dict(d)
    d = errors[0].to_dict()
    del d["fidelity"]
    with pytest.raises(ReportError, match=r"fidelity"):
        LayerError.from_dict(d, "extra.layers.items[0]")


def test_ranking_puts_undefined_first_and_exact_last(mlp_pair) -> None:
    clean, qdq, data = mlp_pair
    e = layer_errors(clean, qdq, data, batch_size=16, threads=1)[0]
    exact = LayerError.from_dict({**e.to_dict(), "local": {**e.local.to_dict(), "exact": True, "sqnr_db": None}})  # type: ignore[union-attr]
    undefined = LayerError.from_dict({**e.to_dict(), "local": {**e.local.to_dict(), "sqnr_db": None}})  # type: ignore[union-attr]
    ranked = rank_layers([exact, e, undefined])
    assert ranked == [undefined, e, exact]
    assert math.isinf(exact.rank_key[0])
