"""Partial re-runs for auto's search: the cut, its cached states, and equality with whole runs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quant.backends.onnxruntime import OrtRunner
from quant.calibrators import partial as partial_module
from quant.calibrators.auto import OutputScorer, SearchPlan, candidate_ranges, scale_input_model, search
from quant.calibrators.calibrate import collect_statistics
from quant.calibrators.partial import GraphCuts, PartialRunner
from quant.datasets.base import Batch, DataSummary
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors


class Arrays:
    """An in-memory dataset (the Dataset protocol) of one input, with labels (the sample index)."""

    input_names = ("input",)
    has_labels = True

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int):  # type: ignore[no-untyped-def]
        for i in range(0, len(self), batch_size):
            yield Batch(feed={"input": self.x[i : i + batch_size].copy()},
                        labels=np.arange(i, min(i + batch_size, len(self)), dtype=np.int64))

    def fingerprint(self) -> str:
        return "arrays"

    def summary(self) -> DataSummary:
        return DataSummary(source="memory", kind="npz", num_samples=len(self))


def deep_residual(*, blocks: int = 4, channels: int = 6, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """stem Conv-Relu, ``blocks`` residual blocks (Conv-Relu-Conv-Add-Relu), GlobalAveragePool-Flatten-Gemm
    ("logits"), plus an early side output ("side": the stem's pooled activation), so that a cut
    carries a graph output the clean part makes."""
    rng = np.random.default_rng(seed)
    c = channels
    inits: list[onnx.TensorProto] = []

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> str:
        inits.append(onnx.numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    nodes = [
        helper.make_node("Conv", ["input", w("stem.w", (c, 3, 3, 3)), w("stem.b", (c,), 0.1)], ["stem"], pads=[1] * 4),
        helper.make_node("Relu", ["stem"], ["x0"]),
        helper.make_node("GlobalAveragePool", ["x0"], ["side_pool"]),
        helper.make_node("Flatten", ["side_pool"], ["side"]),
    ]
    x = "x0"
    for b in range(blocks):
        nodes += [
            helper.make_node("Conv", [x, w(f"b{b}.w1", (c, c, 3, 3), 0.2), w(f"b{b}.b1", (c,), 0.1)], [f"b{b}_c1"],
                             pads=[1] * 4),
            helper.make_node("Relu", [f"b{b}_c1"], [f"b{b}_r1"]),
            helper.make_node("Conv", [f"b{b}_r1", w(f"b{b}.w2", (c, c, 3, 3), 0.2), w(f"b{b}.b2", (c,), 0.1)],
                             [f"b{b}_c2"], pads=[1] * 4),
            helper.make_node("Add", [f"b{b}_c2", x], [f"b{b}_sum"]),
            helper.make_node("Relu", [f"b{b}_sum"], [f"x{b + 1}"]),
        ]
        x = f"x{b + 1}"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", w("fc.w", (5, c)), w("fc.b", (5,), 0.1)], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "deep_residual",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", c])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return cleanup(model)


def _setup(samples: int = 12) -> tuple[onnx.ModelProto, dict, list[dict[str, np.ndarray]]]:
    model = deep_residual()
    x = np.random.default_rng(1).standard_normal((samples, 3, 8, 8)).astype(np.float32)
    col, _ = collect_statistics(model, Arrays(x), calibration_tensors(model, scope="qdq"), batch_size=4)
    table = candidate_ranges(col.stats())
    feeds = [{"input": x[i : i + 4]} for i in range(0, samples, 4)]
    feeds[-1] = {"input": x[8:11]}  # a smaller last batch: cut inputs must not fix the batch size
    return model, table, feeds


def _scales(sim, amax: dict) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    return {n: np.array(np.float32(amax[t] / 127.0)) for t, n in sim.scale_inputs.items()}


def test_weights_are_constant_and_never_cut() -> None:
    model, table, _ = _setup()
    sim = scale_input_model(model, table["minmax"])
    cuts = GraphCuts(sim.model, list(sim.scale_inputs.values()))
    weights = {t.name for t in sim.model.graph.initializer}
    assert cuts.const, "the weights' DequantizeLinear nodes read only initializers"
    assert all(all(r in cuts.const_names for r in cuts.reads[i]) for i in cuts.const)
    last = list(sim.quantized)[-3:]
    cut = cuts.cut(cuts.mask([sim.scale_inputs[t] for t in last]))
    assert cut.clean and cut.cut
    assert not set(cut.cut) & (weights | cuts.const_names)  # never a weight, dequantized or not
    assert "side" in cut.carried  # the early output is made by the part that need not run again
    assert not set(cut.key_scales) & {sim.scale_inputs[t] for t in last}
    for i in cut.clean:  # nothing clean depends on a changing scale
        assert not cuts.dep[i] & cut.mask


def test_partial_runs_equal_whole_runs_whatever_changes() -> None:
    model, table, feeds = _setup()
    sim = scale_input_model(model, table["minmax"])
    tensors = list(sim.quantized)
    groups = [tensors[i * len(tensors) // 4 : (i + 1) * len(tensors) // 4] for i in range(4)]
    rng = np.random.default_rng(2)
    labels = list(table)
    choice = {t: "minmax" for t in tensors}
    with OrtRunner(sim.model, int8="exact") as full:
        runner = PartialRunner(sim.model, list(sim.scale_inputs.values()), feeds, full)
        # down the graph as the search goes, then back up (states must not be reused when an
        # earlier group's scales changed), then a group again with nothing changed
        for gi in [0, 1, 2, 3, 1, 3, 2, 2]:
            trial = {**choice, **{t: labels[int(rng.integers(len(labels)))] for t in groups[gi]}}
            amax = {t: table[trial[t]][t] for t in tensors}
            sc = _scales(sim, amax)
            got = runner.run([sc] * len(feeds), [sim.scale_inputs[t] for t in groups[gi]])
            for feed, out in zip(feeds, got, strict=True):
                want = full.infer({**feed, **sc})
                assert set(out) == set(want)
                for name in want:
                    np.testing.assert_allclose(out[name], want[name], rtol=1e-6, atol=1e-6)
            if rng.random() < 0.5:
                choice = trial  # "accepted": the next group's prefix changes
        assert runner.partial_runs > 0
        assert runner.node_runs < 8 * sum(f["input"].shape[0] for f in feeds)  # less than 8 whole runs
        runner.close()


def test_a_cut_too_large_to_keep_runs_the_whole_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model, table, feeds = _setup()
    sim = scale_input_model(model, table["minmax"])
    monkeypatch.setattr(partial_module, "MAX_STATE_BYTES", 16)
    sc = _scales(sim, table["minmax"])
    with OrtRunner(sim.model, int8="exact") as full:
        runner = PartialRunner(sim.model, list(sim.scale_inputs.values()), feeds, full)
        got = runner.run([sc] * len(feeds), [sim.scale_inputs[list(sim.quantized)[-1]]])
        for feed, out in zip(feeds, got, strict=True):
            want = full.infer({**feed, **sc})
            for name in want:
                np.testing.assert_array_equal(out[name], want[name])
        assert runner.partial_runs == 0
        built = runner.sessions_built  # the segment that found the state too large
        runner.run([sc] * len(feeds), [sim.scale_inputs[list(sim.quantized)[-1]]])
        assert runner.partial_runs == 0 and runner.sessions_built == built  # that cut is not tried again
        runner.close()


def test_search_with_partial_runs_finds_what_whole_runs_find() -> None:
    model, table, feeds = _setup()
    # candidates whose ranges differ on 12 samples (there, the high percentiles are the maximum)
    table = {lab: table[lab] for lab in ("entropy", "minmax", "percentile 99.9", "mse")}
    folds = [0] * len(feeds)
    results = []
    for partial in (True, False):
        with OutputScorer(model, table["minmax"], feeds, folds=folds, partial=partial) as scorer:
            assert scorer.partial is partial
            found = search(table, list(scorer.quantized), scorer, plan=SearchPlan(30, 6, 2))
            results.append((found, scorer.partial_runs, scorer.node_passes, scorer.forwards))
    (a, runs_a, passes_a, fwd_a), (b, runs_b, passes_b, fwd_b) = results
    assert a.choice == b.choice and a.best_single == b.best_single and a.evaluations == b.evaluations
    assert a.score.sqnr_db == pytest.approx(b.score.sqnr_db, abs=1e-6)
    for lab in a.scores:
        assert a.scores[lab].sqnr_db == pytest.approx(b.scores[lab].sqnr_db, abs=1e-6)
    assert runs_a > 0 and runs_b == 0
    assert fwd_a == fwd_b  # whole-run count, the budget's unit, is the same
    assert passes_a < passes_b == fwd_b
