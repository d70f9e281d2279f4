"""Calibration fast paths against the straightforward computation.

- int32 bin indices and the exact growth of a range whose edge value was seen (StatsAccumulator)
  vs ``np.histogram`` at the final range;
- per-sign histograms (SignedStatsAccumulator, bin_signed_chunk) vs collecting ``x`` and
  ``max(x, 0)`` directly;
- derived statistics (ReLU / reshaping outputs computed from their input's) vs fetching them;
- staged execution (plan_stages) vs one session; the threaded reducer vs reducing inline.
"""

from __future__ import annotations

import importlib

import numpy as np
import onnx
import pytest
from calib_fixtures import ArrayDataset, conv_relu_conv, matmul_model
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from quant.backends.onnxruntime import OrtRunner
from quant.calibrators import stats as stats_mod
from quant.calibrators.stats import (
    SignedStatsAccumulator,
    StatsAccumulator,
    StatsCollector,
    _Scratch,
    bin_abs_chunk,
    bin_signed_chunk,
    pow2_ceil,
)
from quant.calibrators.streaming import plan_stages, stage_model, tensor_bytes
from quant.errors import CalibrationError, UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors
from tests.models import conv_bn_relu_cnn, random_feed, residual_block, run_model, transformer_block

calibrate_mod = importlib.import_module("quant.calibrators.calibrate")


def _reference(x: np.ndarray, num_bins: int) -> tuple[float, np.ndarray]:
    """The |x| histogram at the final range, by np.histogram in float64 of the float32 values."""
    a = np.abs(x.astype(np.float32)).astype(np.float64).ravel()
    absmax = float(a.max()) if a.size else 0.0
    hist_range = pow2_ceil(absmax) if absmax > 0 else 0.0
    if hist_range == 0.0:
        counts = np.zeros(num_bins, np.int64)
        counts[0] = a.size
        return 0.0, counts
    counts, _ = np.histogram(a, bins=num_bins, range=(0.0, hist_range))
    return hist_range, counts


def _same(a: object, b: object) -> None:
    assert a == b, (a, b)


# --- kernels -----------------------------------------------------------------------------------


def test_bin_abs_chunk_int32_indices_match_np_histogram() -> None:
    rng = np.random.default_rng(0)
    x = np.clip(rng.standard_normal(50_000) * 3, -3.9, 3.9).astype(np.float32)
    x[7] = 4.0  # exactly the range: the last bin
    scratch = _Scratch()
    got = bin_abs_chunk(x, 2048 / 4.0, 2048, scratch.abs_buf, scratch.idx_buf)
    assert scratch.idx_buf.dtype == np.int32
    np.testing.assert_array_equal(got, _reference(x, 2048)[1])


@pytest.mark.parametrize(
    ("pos_range", "neg_range"), [(4.0, 4.0), (4.0, 0.5), (0.25, 8.0), (2.0**10, 1.0), (1.0, 0.0), (0.0, 2.0)]
)
def test_bin_signed_chunk_matches_each_side(pos_range: float, neg_range: float) -> None:
    rng = np.random.default_rng(1)
    pos = rng.random(3000) * pos_range
    neg = -rng.random(3000) * neg_range
    x = np.concatenate([pos, neg, [0.0, pos_range, -neg_range]]).astype(np.float32)
    scratch = _Scratch()
    p, q = bin_signed_chunk(x, pos_range, neg_range, 256, scratch.abs_buf, scratch.idx_buf)
    assert p.sum() + q.sum() == x.size
    # merged: the |x| histogram at the larger range; ReLU: the non-negative side at its own range
    hist_range = max(pos_range, neg_range)
    merged = stats_mod._folded(
        stats_mod._grow_ext(p, pos_range, hist_range) + stats_mod._grow_ext(q, neg_range, hist_range)
    )
    np.testing.assert_array_equal(merged, _reference(x, 256)[1])
    relu = stats_mod._folded(p)
    relu[0] += q.sum()
    np.testing.assert_array_equal(relu, _reference(np.maximum(x, 0), 256)[1])


# --- accumulators ------------------------------------------------------------------------------


def test_growth_after_an_exact_power_of_two_maximum_is_exact() -> None:
    """A batch whose maximum is exactly the range (1.0) then a larger one: the 1.0 must end in the
    bin binning at the final range gives it, not in the old last bin merged down."""
    first = np.array([1.0, 0.5, -0.25], np.float32)
    second = np.array([3.0, -1.5], np.float32)
    acc = StatsAccumulator("t", 128)
    acc.update(first)
    assert acc.hist_range == 1.0 and acc.counts[127] == 1
    acc.update(second)
    hist_range, expected = _reference(np.concatenate([first, second]), 128)
    assert acc.hist_range == hist_range == 4.0
    np.testing.assert_array_equal(acc.counts, expected)


_batch = st.tuples(
    st.integers(0, 700),  # elements
    st.floats(-12, 12),  # log2 of the positive scale
    st.integers(-8, 8),  # negative scale = positive scale * 2**this (far apart: the fallback)
    st.sampled_from(["mixed", "positive", "negative", "zeros", "edges"]),
    st.sampled_from([np.float32, np.float32, np.float64, np.float16]),
)


def _make(spec: tuple[int, float, int, str, type], rng: np.random.Generator) -> np.ndarray:
    n, log_pos, shift, kind, dtype = spec
    pscale = 2.0**log_pos
    nscale = pscale * 2.0**shift
    x = rng.standard_normal(n)
    x = np.where(x > 0, x * pscale, x * nscale)
    if kind == "positive":
        x = np.abs(x)
    elif kind == "negative":
        x = -np.abs(x)
    elif kind == "zeros":
        x[: n // 2] = 0.0
    elif kind == "edges" and n:
        x[0] = pow2_ceil(abs(float(x[0])) or 1.0) * np.sign(x[0] or 1.0)  # exactly a power of two
    if dtype == np.float16:
        x = np.clip(x, -6e4, 6e4)
    return x.astype(dtype)


@settings(max_examples=60, deadline=None)
@given(st.lists(_batch, min_size=1, max_size=4), st.integers(0, 2**16), st.sampled_from([128, 2048]))
def test_signed_accumulator_equals_direct_collection(batches: list, seed: int, num_bins: int) -> None:
    rng = np.random.default_rng(seed)
    signed = SignedStatsAccumulator("t", num_bins)
    plain = StatsAccumulator("t", num_bins)
    relu = StatsAccumulator("r", num_bins)
    arrays = []
    for spec in batches:
        x = _make(spec, rng)
        arrays.append(x)
        signed.update(x)
        plain.update(x)
        relu.update(np.maximum(x, 0))
    _same(signed.snapshot(), plain.snapshot())
    _same(signed.relu_snapshot(), relu.snapshot())
    both = np.concatenate([a.astype(np.float32) for a in arrays])
    if both.size:
        hist_range, expected = _reference(both, num_bins)
        assert plain.hist_range == hist_range
        np.testing.assert_array_equal(plain.counts, expected)


def test_signed_accumulator_over_many_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "_CHUNK", 1000)
    rng = np.random.default_rng(5)
    signed, plain, relu = (
        SignedStatsAccumulator("t", 256),
        StatsAccumulator("t", 256),
        StatsAccumulator("r", 256),
    )
    for scale in (0.01, 3.0, 0.5, 200.0):
        x = (rng.standard_normal(5_500) * scale).astype(np.float32)
        x[rng.integers(0, x.size)] *= 40.0  # a later chunk grows one side's range
        for acc, arr in ((signed, x), (plain, x), (relu, np.maximum(x, 0))):
            acc.update(arr)
    _same(signed.snapshot(), plain.snapshot())
    _same(signed.relu_snapshot(), relu.snapshot())


def test_signed_accumulator_errors_leave_it_unchanged() -> None:
    acc = SignedStatsAccumulator("conv1_out", 128)
    acc.update(np.array([1.0, -2.0], np.float32))
    before = (acc.snapshot(), acc.relu_snapshot())
    with pytest.raises(CalibrationError, match="tensor 'conv1_out' has NaN values in calibration batch 4"):
        acc.update(np.array([1.0, np.nan], np.float32), batch_index=4)
    assert (acc.snapshot(), acc.relu_snapshot()) == before
    empty = SignedStatsAccumulator("e", 128)
    assert empty.relu_snapshot().count == 0 and empty.relu_snapshot().min is None


# --- derived statistics, stages, overlap ------------------------------------------------------


def _images(n: int = 10, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset({"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)})


def test_plan_derives_relu_and_reshapes() -> None:
    model = cleanup(transformer_block())
    names = calibration_tensors(model)
    plan = calibrate_mod._plan(model, names)
    assert plan.derived["k_t"] == ("k", False)  # Transpose: the same values
    assert set(plan.fetch) | set(plan.derived) == set(names)
    relu_model = conv_relu_conv()
    plan = calibrate_mod._plan(relu_model, ["conv1_out", "relu_out", "y"])
    assert plan.derived == {"relu_out": ("conv1_out", True)} and plan.signed == {"conv1_out"}
    # a ReLU whose input is not calibrated is fetched itself
    assert calibrate_mod._plan(relu_model, ["relu_out", "y"]).fetch == ("relu_out", "y")


def test_derived_statistics_equal_fetched_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    model = cleanup(conv_bn_relu_cnn())
    tensors = calibration_tensors(model)
    rng = np.random.default_rng(2)
    data = ArrayDataset({"input": rng.standard_normal((7, 3, 16, 16)).astype(np.float32)})
    derived, n = calibrate_mod.collect_statistics(model, data, tensors, batch_size=3)
    monkeypatch.setattr(calibrate_mod, "_SAME_VALUES_OPS", frozenset())
    monkeypatch.setattr(
        calibrate_mod, "_plan", lambda m, names: calibrate_mod._Plan(tuple(names), {}, frozenset())
    )
    fetched, _ = calibrate_mod.collect_statistics(model, data, tensors, batch_size=3)
    assert n == 7 and list(derived.stats()) == list(fetched.stats()) == tensors
    assert derived.stats() == fetched.stats()


def test_statistics_match_a_plain_ort_run() -> None:
    """Stages, derived tensors and the threaded reducer against one ORT session + StatsCollector."""
    model = cleanup(residual_block())
    tensors = calibration_tensors(model)
    feed = random_feed(model, batch=4, seed=3)
    got, _ = calibrate_mod.collect_statistics(model, ArrayDataset(feed), tensors, batch_size=4)
    outs = run_model(model, feed, tensors)
    ref = StatsCollector()
    for t in tensors:
        ref.collect(t, outs[t])
    for t in tensors:
        a, b = got.stats()[t], ref.stats()[t]
        assert a.count == b.count and a.hist_range == b.hist_range
        assert a.absmax == pytest.approx(b.absmax, rel=1e-5)
        # a float rounding difference between two ORT sessions may move an element by a bin
        assert int(np.abs(a.counts - b.counts).sum()) <= max(4, a.count // 1000)


def _chain(depth: int = 6) -> onnx.ModelProto:
    """MatMul/Add/Relu chain with a skip and a graph output in the middle: many cut points."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    for i in range(depth):
        w = f"w{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.4).astype(np.float32), w))
        nodes.append(helper.make_node("MatMul", [x, w], [f"mm{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("Add", ["r1", x], ["y"], name="skip"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16]),
            helper.make_tensor_value_info("r2", TensorProto.FLOAT, ["N", 16]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return cleanup(model)


def test_plan_stages_cover_every_tensor_once() -> None:
    model = _chain()
    fetch = [f"mm{i}" for i in range(6)] + ["y"]
    sizes = tensor_bytes(model, 4)
    assert sizes["mm0"] == 4 * 16 * 4
    stages = plan_stages(model, fetch, batch_size=4, max_bytes=2 * 4 * 16 * 4)
    assert len(stages) >= 3
    reduced = [t for s in stages for t in s.reduce]
    assert sorted(reduced) == sorted(fetch)
    available = {"x"}
    for s in stages:
        assert set(s.inputs) <= available, (s.inputs, available)
        available |= set(s.outputs)
        available -= set(s.release)
    assert "r1" in {t for s in stages for t in s.outputs}  # read by the last stage's Add
    whole = plan_stages(model, fetch, batch_size=4, max_bytes=None)
    assert len(whole) == 1 and whole[0].nodes is None


def test_stages_compute_what_the_model_computes() -> None:
    model = _chain()
    fetch = [f"mm{i}" for i in range(6)] + ["y"]
    feed = {"x": np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)}
    values: dict[str, object] = dict(feed)
    got: dict[str, np.ndarray] = {}
    for stage in plan_stages(model, fetch, batch_size=5, max_bytes=16 * 5 * 4):
        with OrtRunner(stage_model(model, stage)) as runner:
            out = runner.infer_values({t: values[t] for t in stage.inputs}, stage.outputs)
        for t in stage.reduce:
            got[t] = np.array(out[t].numpy())
        values.update(out)
        for t in stage.release:
            values.pop(t)
    ref = run_model(model, feed, fetch)
    for t in fetch:
        np.testing.assert_array_equal(got[t], ref[t])


def test_staged_and_single_session_statistics_are_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _chain()
    tensors = calibration_tensors(model)
    data = ArrayDataset({"x": np.random.default_rng(4).standard_normal((9, 16)).astype(np.float32)})
    monkeypatch.setattr("quant.calibrators.streaming.DEFAULT_STAGE_BYTES", 64)  # a stage per node or so
    staged, _ = calibrate_mod.collect_statistics(model, data, tensors, batch_size=4)
    monkeypatch.setattr("quant.calibrators.streaming.DEFAULT_STAGE_BYTES", 2**40)
    single, _ = calibrate_mod.collect_statistics(model, data, tensors, batch_size=4)
    assert staged.stats() == single.stats()


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_workers_give_the_statistics_of_one_worker(threads: int) -> None:
    """Several workers (batches on separate threads, per-worker accumulators merged at the end)
    give bit for bit what one worker gives: merging power-of-two histograms is exact."""
    model = conv_relu_conv()
    data = _images(11)
    names = ["x", "conv1_out", "relu_out", "y"]
    assert calibrate_mod._worker_layout(threads)[0] == threads
    several, n1 = calibrate_mod.collect_statistics(model, data, names, batch_size=2, threads=threads)
    one, n2 = calibrate_mod.collect_statistics(model, data, names, batch_size=2, threads=1)
    assert n1 == n2 == 11 and several.stats() == one.stats()


def test_worker_layout() -> None:
    assert calibrate_mod._worker_layout(1) == (1, 1)
    assert calibrate_mod._worker_layout(2) == (2, 1)
    assert calibrate_mod._worker_layout(16) == (calibrate_mod._MAX_WORKERS, 16 // calibrate_mod._MAX_WORKERS)
    with pytest.raises(UsageError, match="--threads"):
        calibrate_mod._worker_layout(0)


@pytest.mark.parametrize("cls", [StatsAccumulator, SignedStatsAccumulator])
def test_absorb_equals_one_accumulator_over_all_batches(cls: type) -> None:
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal(500).astype(np.float32) * s for s in (0.1, 4.0, 1.0, 2.0**3, 0.5)]
    batches.append(np.array([8.0, -16.0, 0.0], np.float32))  # values at range edges
    whole = cls("t", 256)
    for b in batches:
        whole.update(b)
    a, b_ = cls("t", 256), cls("t", 256)
    for i, b in enumerate(batches):
        (a if i % 2 else b_).update(b)
    a.absorb(b_)
    assert a.snapshot() == whole.snapshot()
    assert (a.count, a.min, a.max, a.absmax, a.batches) == (whole.count, whole.min, whole.max, whole.absmax, 6)
    if cls is SignedStatsAccumulator:
        assert a.relu_snapshot() == whole.relu_snapshot()


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_nan_with_workers_names_the_first_bad_batch(threads: int) -> None:
    """Whatever the timing of the workers, the error is the one of the lowest batch index."""
    x = np.ones((16, 6), np.float32)
    x[5, 1] = np.nan  # batch 2 with batch_size 2
    x[13, 0] = np.inf  # batch 6
    model, _ = matmul_model()
    with pytest.raises(CalibrationError, match="tensor 'mm_out' has NaN values in calibration batch 2"):
        calibrate_mod.collect_statistics(model, ArrayDataset({"x": x}), ["mm_out"], batch_size=2, threads=threads)


def test_infer_values_is_a_zero_copy_view_of_infer() -> None:
    model = conv_relu_conv()
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)}
    with OrtRunner(
        model, extra_outputs=["relu_out"], memory_arena="shared", optimization="extended"
    ) as runner:
        values = runner.infer_values(feed, ["relu_out", "y"])
        plain = runner.infer(feed, ["relu_out", "y"])
    for k in plain:
        np.testing.assert_array_equal(values[k].numpy(), plain[k])
