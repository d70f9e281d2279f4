"""Calibration from ORT's blocked (NCHWc) tensors against calibration from NCHW tensors.

A histogram, a minimum and a maximum do not depend on the order of the values, so both paths give
the same statistics bit for bit where ORT runs the same kernels (Conv, Relu, Add: the residual
blocks below), and statistics equal up to float rounding where the whole-graph optimization makes
ORT pick another kernel (GlobalAveragePool on blocked input). The blocked path must be taken where
ORT uses NCHWc (x86 with AVX2 or AVX-512), and left where it cannot be (padding channels, no Conv,
ORT refusing).
"""

from __future__ import annotations

import importlib
import platform
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from calib_fixtures import ArrayDataset
from onnx import helper, numpy_helper

from quant.calibrators import blocked as blocked_mod
from quant.calibrators.blocked import blocked_graph, blocked_qdq_model
from quant.errors import CalibrationError, ModelError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors
from tests.models import residual_block, transformer_block

calibrate_mod = importlib.import_module("quant.calibrators.calibrate")


def _nchwc_cpu() -> bool:
    """ORT's CPU kernels use NCHWc on x86 with AVX2 or AVX-512."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags or " avx512f" in flags


needs_nchwc = pytest.mark.skipif(not _nchwc_cpu(), reason="ORT uses the NCHWc layout only on x86 with AVX2")


def _model(channels: int) -> onnx.ModelProto:
    return cleanup(residual_block(channels=channels, size=8))


def _data(n: int = 10) -> ArrayDataset:
    x = np.random.default_rng(3).standard_normal((n, 3, 8, 8)).astype(np.float32)
    return ArrayDataset({"input": x})


def _fetch(model: onnx.ModelProto) -> list[str]:
    plan = calibrate_mod._plan(model, calibration_tensors(model, "all"))
    return [t for t in plan.fetch if t != "input"]


@pytest.mark.parametrize("channels", [16, 24])
@pytest.mark.parametrize("budget", [64 * 2**10, 2**40])  # a stage every few nodes; one stage
def test_blocked_and_plain_statistics_are_identical(
    monkeypatch: pytest.MonkeyPatch, channels: int, budget: int
) -> None:
    model = _model(channels)
    tensors = calibration_tensors(model, "all")
    monkeypatch.setattr("quant.calibrators.streaming.DEFAULT_STAGE_BYTES", budget)
    monkeypatch.setattr(calibrate_mod, "_BLOCKED", True)
    blocked, n1 = calibrate_mod.collect_statistics(model, _data(), tensors, batch_size=4)
    monkeypatch.setattr(calibrate_mod, "_BLOCKED", False)
    plain, n2 = calibrate_mod.collect_statistics(model, _data(), tensors, batch_size=4)
    assert n1 == n2 == 10
    assert blocked.stats() == plain.stats()


def _with_head(model: onnx.ModelProto, classes: int = 5) -> onnx.ModelProto:
    """``model`` (output "output", 16 channels) followed by GlobalAveragePool, Flatten and Gemm."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(7)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(rng.standard_normal((classes, 16)).astype(np.float32), "head.weight"),
            numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "head.bias"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("GlobalAveragePool", ["output"], ["pooled"], name="gap"),
            helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], name="head", transB=1),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes]))
    return cleanup(out)


def test_blocked_statistics_agree_where_ort_picks_another_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optimizing the whole graph can make ORT run an op with another kernel than the per-stage
    optimization of the plain path does (GlobalAveragePool on blocked input): the statistics then
    agree up to float rounding, which moves an amax in the 7th digit and a value across a bin
    edge at most now and then."""
    model = _with_head(residual_block(channels=16, size=8))
    tensors = calibration_tensors(model, "all")
    data = _data(16)
    monkeypatch.setattr(calibrate_mod, "_BLOCKED", True)
    blocked, _ = calibrate_mod.collect_statistics(model, data, tensors, batch_size=4)
    monkeypatch.setattr(calibrate_mod, "_BLOCKED", False)
    plain, _ = calibrate_mod.collect_statistics(model, data, tensors, batch_size=4)
    a, b = blocked.stats(), plain.stats()
    assert set(a) == set(b) == set(tensors)
    for t in tensors:
        assert a[t].count == b[t].count and a[t].hist_range == b[t].hist_range, t
        assert a[t].absmax == pytest.approx(b[t].absmax, rel=1e-5), t
        assert a[t].min == pytest.approx(b[t].min, rel=1e-5, abs=1e-6), t
        moved = int(np.abs(a[t].counts - b[t].counts).sum())
        assert moved <= max(2, a[t].count // 500), (t, moved)


@needs_nchwc
def test_blocked_layout_is_used_where_ort_reorders(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(16)
    fetch = _fetch(model)
    graph = blocked_graph(model, fetch, batch_size=4, name="m")
    assert graph is not None and graph.bypassed >= 3  # the three Conv outputs and the Add, at least
    assert set(graph.fetch) == set(fetch)
    for t, src in graph.fetch.items():
        if src != t:
            assert graph.channels[src] == 16 and graph.sizes[src] == 4 * 16 * 8 * 8 * 4
    # cut into several stages: blocked tensors cross stage boundaries, and the budget sees their size
    with calibrate_mod._StagedRunner(model, fetch, batch_size=4, threads=1, name="m", max_bytes=2 * 4096 * 4) as runner:
        assert runner.layout.startswith("blocked") and len(runner._stages) > 1
        feed = {"input": np.zeros((4, 3, 8, 8), np.float32)}
        names = [t for out in runner.run(feed) for t in out]
    assert sorted(names) == sorted(fetch)


@needs_nchwc
def test_padded_channels_are_not_taken_blocked() -> None:
    """24 channels are padded to 32 with AVX-512's block of 16: those tensors stay reordered."""
    model = _model(24)
    assert blocked_graph(model, _fetch(model), batch_size=4, name="m") is None


@needs_nchwc
def test_a_padded_blocked_tensor_is_caught_at_run_time() -> None:
    model = _model(16)
    with calibrate_mod._StagedRunner(model, _fetch(model), batch_size=4, threads=1, name="m") as runner:
        runner._channels = {t: c + 1 for t, c in runner._channels.items()}
        with pytest.raises(CalibrationError, match="blocked tensor .* bug in quant"):
            for _ in runner.run({"input": np.zeros((4, 3, 8, 8), np.float32)}):
                pass


def test_models_without_conv_are_not_optimized(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no ORT optimization pass for a model without Conv")

    monkeypatch.setattr("quant.backends.onnxruntime.save_optimized", refuse)
    model = cleanup(transformer_block())
    assert blocked_graph(model, _fetch(model), batch_size=2, name="m") is None


def test_ort_refusing_the_optimization_falls_back_to_the_plain_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelError("model 'm': ORT says no")

    monkeypatch.setattr("quant.backends.onnxruntime.save_optimized", refuse)
    monkeypatch.setattr(blocked_mod, "_worth_trying", lambda model: True)
    model = _model(16)
    fetch = _fetch(model)
    assert blocked_graph(model, fetch, batch_size=4, name="m") is None
    with calibrate_mod._StagedRunner(model, fetch, batch_size=4, threads=1, name="m") as runner:
        assert runner.layout == "plain"
        out = [t for o in runner.run({"input": np.zeros((4, 3, 8, 8), np.float32)}) for t in o]
    assert sorted(out) == sorted(fetch)


def test_optimization_input_carries_outputs_and_weights_apart() -> None:
    """ORT's optimization pass gets the graph with the calibrated tensors as outputs and the large
    weights as arrays (stubs with external data in the graph); the model itself is untouched."""
    model = _model(16)
    before = model.SerializeToString()
    data, weights = blocked_mod._optimization_input(model, ["stem_out", "output"])
    assert model.SerializeToString() == before
    shell = onnx.load_from_string(data)
    assert [o.name for o in shell.graph.output] == ["output", "stem_out"]  # no output twice
    assert shell.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert len(shell.graph.node) == len(model.graph.node) and shell.graph.name == model.graph.name
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(weights) and set(weights) < set(original)
    for t in shell.graph.initializer:
        if t.name in weights:
            assert t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data")
            np.testing.assert_array_equal(weights[t.name], original[t.name])
            assert weights[t.name].nbytes >= blocked_mod._EXTERNAL_MIN_BYTES
        else:  # small tensors stay in the graph
            np.testing.assert_array_equal(numpy_helper.to_array(t), original[t.name])
    assert len(shell.graph.initializer) == len(model.graph.initializer)
    assert len(data) < len(before) // 4


def test_an_optimized_graph_out_of_order_is_not_used() -> None:
    model = _model(16)
    assert blocked_mod._topological(model.graph)
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    assert not blocked_mod._topological(model.graph)


def test_weights_that_do_not_fit_orts_file_are_refused(tmp_path: Path) -> None:
    """A stub whose external data lies outside the file ORT wrote is an error (and calibration
    then cuts the original graph), never a read past the mapped file."""
    path = tmp_path / "weights.bin"
    np.arange(6, dtype=np.float32).tofile(path)
    graph = onnx.GraphProto()
    stub = graph.initializer.add()
    stub.name, stub.data_type, stub.data_location = "w", onnx.TensorProto.FLOAT, onnx.TensorProto.EXTERNAL
    stub.dims.extend([2, 3])
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", "24")):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    np.testing.assert_array_equal(blocked_mod._map_weights(graph, path)["w"], np.arange(6).reshape(2, 3))
    stub.external_data[1].value = "8"  # 8 + 24 bytes > the file's 24
    with pytest.raises(ValueError, match="'w' does not fit"):
        blocked_mod._map_weights(graph, path)


# --- the scorer's Q/DQ graph (quant.calibrators.blocked.blocked_qdq_model) -----------------------


def _qdq(model: onnx.ModelProto) -> Any:
    """The auto scorer's Q/DQ model of ``model`` (activation scales as graph inputs)."""
    from quant.calibrators.auto import scale_input_model

    return scale_input_model(model, {t: 4.0 for t in calibration_tensors(model, "qdq")})


@needs_nchwc
@pytest.mark.parametrize("head", [False, True])
def test_blocked_qdq_graph_computes_the_same_bits(head: bool) -> None:
    """Q/DQ, Relu and the residual Add moved onto ORT's blocked tensors: fewer reorders, and every
    output identical to the plain session's, bit for bit, for any scales."""
    from quant.backends.onnxruntime import OrtRunner

    model = _with_head(_model(16)) if head else _model(16)
    sim = _qdq(model)
    got = blocked_qdq_model(sim.model, name="m")
    assert got is not None and 3 <= got.removed <= got.reorders
    ops = Counter(n.op_type for n in got.model.graph.node)
    assert ops["ReorderInput"] + ops["ReorderOutput"] == got.reorders - got.removed
    assert ops["QuantizeLinear"] == len(sim.quantized)  # each activation still quantized once
    rng = np.random.default_rng(11)
    with (
        OrtRunner(sim.model, int8="exact", threads=1) as plain,
        OrtRunner(got.model, int8="exact", threads=1, optimization="none", initializers=got.weights) as fast,
    ):
        for _ in range(3):
            feed = {"input": rng.standard_normal((4, 3, 8, 8)).astype(np.float32)}
            feed.update({n: np.array(np.float32(rng.uniform(0.2, 6.0) / 127)) for n in sim.scale_inputs.values()})
            want, out = plain.infer(feed), fast.infer(feed)
            assert set(out) == set(want)
            for name in want:
                np.testing.assert_array_equal(out[name], want[name])


@needs_nchwc
def test_blocked_qdq_graph_leaves_padded_channels_alone() -> None:
    """24 channels are padded to 32 with AVX-512's block: nothing is moved, the plain graph stays."""
    assert blocked_qdq_model(_qdq(_model(24)).model, name="m") is None


def test_blocked_qdq_graph_needs_orts_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocked_mod, "_worth_trying", lambda model: False)
    assert blocked_qdq_model(_qdq(_model(16)).model, name="m") is None

    def refuse(*args: object, **kwargs: object) -> None:
        raise ModelError("ORT refused")

    monkeypatch.setattr(blocked_mod, "_worth_trying", lambda model: True)
    monkeypatch.setattr("quant.backends.onnxruntime.save_optimized", refuse)
    assert blocked_qdq_model(_qdq(_model(16)).model, name="m") is None


def _nchwc(op: str, inputs: list[str], output: str, **attrs: int) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], domain=blocked_mod.NCHWC_DOMAIN, **attrs)


def _elementwise_graph(*, y_shape: tuple[int, ...], scale_shape: list[int], channels: int = 16,
                       channels_last: int = 0) -> onnx.GraphProto:
    """xb, yb (blocked) -> ReorderOutput -> x, y -> Add -> Q -> DQ -> ReorderInput -> Conv."""
    from onnx import TensorProto

    c = channels
    nodes = [
        _nchwc("ReorderOutput", ["xb"], "x", channels=c, channels_last=channels_last),
        _nchwc("ReorderOutput", ["yb"], "y", channels=c),
        helper.make_node("Add", ["x", "y"], ["z"]),
        helper.make_node("QuantizeLinear", ["z", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        _nchwc("ReorderInput", ["d"], "db"),
        _nchwc("Conv", ["db", "w"], "out"),
    ]
    shape = ["N", c, 4, 4]
    return helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("xb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("yb", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, scale_shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros((c, c, 1, 1), np.float32), "w"),
         numpy_helper.from_array(np.array(0, np.int8), "zp")],
        value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
                    helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape[1:]])],
    )


def test_elementwise_nodes_move_onto_blocked_tensors() -> None:
    graph = _elementwise_graph(y_shape=("N", 16, 4, 4), scale_shape=[])
    assert blocked_mod._bypass_reorders(graph, blocked_mod._static_shapes(graph)) == 3
    ops = [(n.op_type, list(n.input)) for n in graph.node]
    assert ops == [("Add", ["xb", "yb"]), ("QuantizeLinear", ["z__nchwc", "s", "zp"]),
                   ("DequantizeLinear", ["q__nchwc", "s", "zp"]), ("Conv", ["d__nchwc", "w"])]


@pytest.mark.parametrize(
    "kwargs, removed",
    [
        ({"y_shape": ("N", 16, 1, 1), "scale_shape": []}, 0),  # a broadcasting Add pairs other elements
        ({"y_shape": ("N", 16, 4, 4), "scale_shape": [], "channels": 24}, 0),  # padding channels
        ({"y_shape": ("N", 16, 4, 4), "scale_shape": [], "channels_last": 1}, 0),  # not NCHWc
    ],
)
def test_elementwise_nodes_stay_where_the_blocked_order_would_change_them(kwargs: dict, removed: int) -> None:
    graph = _elementwise_graph(**kwargs)
    before = [(n.op_type, list(n.input)) for n in graph.node]
    assert blocked_mod._bypass_reorders(graph, blocked_mod._static_shapes(graph)) == removed
    assert [(n.op_type, list(n.input)) for n in graph.node] == before


def test_a_per_channel_quantizer_stays_on_nchw() -> None:
    """A per-channel scale follows the channel axis: that QuantizeLinear and what follows keep their
    NCHW input (the Add before them still moves, its result reordered once)."""
    graph = _elementwise_graph(y_shape=("N", 16, 4, 4), scale_shape=[16])
    assert blocked_mod._bypass_reorders(graph, blocked_mod._static_shapes(graph)) == 1  # 2 reorders in -> 1
    ops = [(n.op_type, list(n.input)) for n in graph.node]
    assert ops == [("Add", ["xb", "yb"]), ("ReorderOutput", ["z__nchwc"]), ("QuantizeLinear", ["z", "s", "zp"]),
                   ("DequantizeLinear", ["q", "s", "zp"]), ("ReorderInput", ["d"]), ("Conv", ["db", "w"])]


@needs_nchwc
def test_the_auto_scorer_scores_on_the_blocked_graph_as_on_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """OutputScorer takes the blocked Q/DQ graph where ORT reorders, and its per-sample signal and
    error are those of the plain session, bit for bit; a blocked graph ORT refuses falls back."""
    from quant.calibrators import auto

    model = _with_head(_model(16))
    x = np.random.default_rng(4).standard_normal((8, 3, 8, 8)).astype(np.float32)
    feeds = [{"input": x[:4]}, {"input": x[4:]}]
    tensors = calibration_tensors(model, "qdq")
    base = {t: 4.0 for t in tensors}
    trial = {t: 1.0 + 0.5 * i for i, t in enumerate(tensors)}
    got = {}
    for blocked in (True, False):
        monkeypatch.setattr(auto, "BLOCKED_SCORING", blocked)
        with auto.OutputScorer(model, base, feeds, threads=1) as scorer:
            assert scorer.layout.startswith("blocked (") if blocked else scorer.layout == "plain"
            got[blocked] = scorer.per_sample({t: trial[t] for t in scorer.quantized})
    for a, b in zip(got[True][:2], got[False][:2], strict=True):
        np.testing.assert_array_equal(a, b)
    broken = blocked_qdq_model(_qdq(model).model, name="m")
    assert broken is not None
    del broken.model.graph.node[0].input[:]  # ORT refuses a node without its inputs
    monkeypatch.setattr(auto, "BLOCKED_SCORING", True)
    monkeypatch.setattr("quant.calibrators.blocked.blocked_qdq_model", lambda model, name: broken)
    with auto.OutputScorer(model, base, feeds, threads=1) as scorer:
        assert scorer.layout == "plain"
        signal, noise, _ = scorer.per_sample({t: trial[t] for t in scorer.quantized})
    np.testing.assert_array_equal(signal, got[False][0])
    np.testing.assert_array_equal(noise, got[False][1])


@needs_nchwc
def test_a_blocked_graph_failing_at_run_time_hands_over_to_the_plain_session(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from quant.calibrators import auto

    model = _with_head(_model(16))
    x = np.random.default_rng(4).standard_normal((8, 3, 8, 8)).astype(np.float32)
    feeds = [{"input": x[:4]}, {"input": x[4:]}]
    base = {t: 4.0 for t in calibration_tensors(model, "qdq")}
    monkeypatch.setattr(auto, "BLOCKED_SCORING", False)
    with auto.OutputScorer(model, base, feeds, threads=2) as scorer:
        want = scorer.per_sample({t: 2.0 for t in scorer.quantized})
    monkeypatch.setattr(auto, "BLOCKED_SCORING", True)
    with auto.OutputScorer(model, base, feeds, threads=2) as scorer:
        assert scorer.layout.startswith("blocked")

        def broken(feed: object) -> None:
            raise ModelError("model 'auto calibration scorer' failed in ONNX Runtime: shape mismatch")

        monkeypatch.setattr(scorer._runner, "infer", broken)
        with caplog.at_level("WARNING", logger="quant.calibrators.auto"):
            got = scorer.per_sample({t: 2.0 for t in scorer.quantized})
        assert scorer.layout == "plain (the blocked graph failed)"
        assert "blocked Q/DQ graph failed" in caplog.text and len(scorer._retired) == 1
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
