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
from pathlib import Path

import numpy as np
import onnx
import pytest
from calib_fixtures import ArrayDataset
from onnx import numpy_helper

from quant.calibrators import blocked as blocked_mod
from quant.calibrators.blocked import blocked_graph
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
