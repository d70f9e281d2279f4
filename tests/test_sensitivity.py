"""quant.sensitivity: the switchable model, ranking, fallback, the fallback file, and the API.

The destructive-layer model: fc1 writes a constant 1000 into channel 0 of its output ``h1`` (a
dead channel that fc2 ignores, zero weights), so a min/max range of ``h1`` is about 1000 and INT8
rounds every ordinary value of ``h1`` (a few units) to 0: quantizing fc2's input destroys the
model, while fc1 and fc3 quantize well.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant import api
from quant.backends.onnxruntime import OrtRunner
from quant.config import BuildOptions, DataOptions, FallbackOptions
from quant.datasets.base import Batch, DataSummary
from quant.errors import DataError, ModelError, QuantError, ReportError, UsageError
from quant.graph.cleanup import cleanup
from quant.graph.inspect import precision_view
from quant.graph.qdq import calibration_tensors, insert_qdq
from quant.sensitivity import (
    Budget,
    FallbackResult,
    Measurement,
    SensitivityOptions,
    SensitivityResult,
    build_switchable_model,
    exclude_pattern,
    name_unnamed_nodes,
    rank_layers,
    render_fallback,
    render_sensitivity,
)
from quant.sensitivity.io import fallback_path, read_exclude_file, save_fallback
from quant.sensitivity.measure import (
    BatchStore,
    StoredDataset,
    SwitchableRunner,
    fill_store,
    greedy_fallback,
    measure_sensitivity,
    measure_stored,
)
from quant.sensitivity.results import resolve_metric
from quant.sensitivity.switchable import Layer, plan_segments, suffix_model
from tests.models import (
    conv_bn_relu_cnn,
    make_model,
    mlp,
    random_feed,
    residual_block,
    shared_input_convs,
    transformer_block,
)

NUM_SAMPLES = 256
DESTRUCTIVE = "fc2"


# --- the destructive-layer model and its data ---------------------------------------------------


def outlier_classifier(*, seed: int = 7) -> onnx.ModelProto:
    """fc1 -> Relu -> fc2 -> Relu -> fc3 (logits, 10 classes); h1 channel 0 is a constant 1000."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((32, 16)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w1[0] = 0.0
    b1[0] = 1000.0
    w2 = (rng.standard_normal((32, 32)) * 0.3).astype(np.float32)
    w2[:, 0] = 0.0
    b2 = (rng.standard_normal(32) * 0.1).astype(np.float32)
    w3 = (rng.standard_normal((10, 32)) * 0.3).astype(np.float32)
    b3 = (rng.standard_normal(10) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "fc1.w"), (b1, "fc1.b"), (w2, "fc2.w"), (b2, "fc2.b"), (w3, "fc3.w"), (b3, "fc3.b")]]
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.w", "fc1.b"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["h1"], name="relu1"),
        helper.make_node("Gemm", ["h1", "fc2.w", "fc2.b"], ["fc2_out"], name="fc2", transB=1),
        helper.make_node("Relu", ["fc2_out"], ["h2"], name="relu2"),
        helper.make_node("Gemm", ["h2", "fc3.w", "fc3.b"], ["logits"], name="fc3", transB=1),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
        name="outlier_classifier",
    )


def outlier_data(model: onnx.ModelProto, *, n: int = NUM_SAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs and labels: the FP32 model's own classes (FP32 top-1 = 100 %)."""
    x = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    with OrtRunner(model) as r:
        logits = r.infer({"input": x})["logits"]
    return {"input": x, "labels": logits.argmax(axis=1).astype(np.int64)}


def minmax_amax(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    tensors = [t for t in calibration_tensors(model) if t not in feed]
    with OrtRunner(model, extra_outputs=tensors) as r:
        outs = r.infer(feed)
    return {k: float(np.abs(v).max()) for k, v in {**feed, **outs}.items()}


def write_outlier_files(tmp: Path) -> tuple[Path, Path, Path]:
    """The outlier model, its labelled data (.npz) and a min/max cache written by quant calibrate."""
    from quant.config import CalibrationOptions

    model = outlier_classifier()
    model_path = tmp / "outlier.onnx"
    onnx.save(model, str(model_path))
    data = outlier_data(model)
    data_path = tmp / "data.npz"
    np.savez(data_path, input=data["input"], labels=data["labels"])
    cache = tmp / "outlier.cache"
    api.calibrate(model_path, DataOptions(str(data_path)), cache=cache, options=CalibrationOptions(method="minmax"))
    return model_path, data_path, cache


class ArrayDataset:
    """A tiny in-memory Dataset (the real loaders are tested elsewhere; this keeps unit tests fast)."""

    def __init__(self, feed: dict[str, np.ndarray], labels: np.ndarray | None = None) -> None:
        self._feed = feed
        self._labels = labels

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._feed)

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    def __len__(self) -> int:
        return int(next(iter(self._feed.values())).shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, len(self), batch_size):
            feed = {k: v[i : i + batch_size].copy() for k, v in self._feed.items()}
            labels = None if self._labels is None else self._labels[i : i + batch_size].copy()
            yield Batch(feed, labels)

    def fingerprint(self) -> str:
        return "test"

    def summary(self) -> DataSummary:
        return DataSummary(source="memory", kind="npz", num_samples=len(self))


@pytest.fixture(scope="module")
def outlier() -> tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]]:
    model = name_unnamed_nodes(cleanup(outlier_classifier()))
    data = outlier_data(model)
    return model, data, minmax_amax(model, {"input": data["input"]})


@pytest.fixture(scope="module")
def outlier_sensitivity(
    outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]],
) -> SensitivityResult:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    with SwitchableRunner(sw) as runner:
        return measure_sensitivity(
            runner, ArrayDataset({"input": data["input"]}, data["labels"]), batch_size=32
        )


# --- naming and patterns -------------------------------------------------------------------------


def test_name_unnamed_nodes_names_only_the_unnamed_and_avoids_collisions() -> None:
    model = mlp()
    for n in model.graph.node:
        n.name = ""
    model.graph.node[1].name = "MatMul_0"  # taken: the unnamed MatMul at index 0 must not reuse it
    named = name_unnamed_nodes(model)
    names = [n.name for n in named.graph.node]
    assert all(names) and len(set(names)) == len(names)
    assert names[1] == "MatMul_0" and names[0] == "MatMul_0_1"
    assert model.graph.node[0].name == ""  # input untouched
    assert name_unnamed_nodes(named) is named  # nothing to do: same object


def test_exclude_pattern_matches_the_name_literally() -> None:
    import fnmatch

    assert exclude_pattern("/layer1/conv") == "/layer1/conv"
    for name in ("conv[1]", "a*b", "what?", "[x]*?"):
        pat = exclude_pattern(name)
        assert fnmatch.fnmatchcase(name, pat)
        assert not fnmatch.fnmatchcase(name + "x", pat)
    assert not fnmatch.fnmatchcase("conv1", exclude_pattern("conv[1]"))


# --- the switchable model equals insert_qdq for every configuration --------------------------------


@pytest.mark.parametrize(
    "builder", [conv_bn_relu_cnn, residual_block, mlp, transformer_block, shared_input_convs, outlier_classifier]
)
def test_switchable_model_equals_insert_qdq_for_any_flags(builder: Callable[[], onnx.ModelProto]) -> None:
    model = name_unnamed_nodes(cleanup(builder()))
    feed = random_feed(model, batch=3, seed=1)
    amax = minmax_amax(model, feed)
    sw = build_switchable_model(model, amax)
    n = sw.num_layers
    settings = [sw.all_int8(), sw.all_float()]
    settings += [sw.flags([k]) for k in range(n)] + [~sw.flags([k]) for k in range(n)]
    rng = np.random.default_rng(0)
    settings += [rng.random(n) < 0.5 for _ in range(3)]
    # Graph optimizations off: both models then run the same kernels on the same values.
    with SwitchableRunner(sw, optimization="none") as runner:
        for flags in settings:
            exclude = sw.exclude_for(flags)
            reference = insert_qdq(model, amax, exclude=exclude).model
            with OrtRunner(reference, optimization="none") as r:
                expected = r.infer(feed)
            got = runner.run(feed, flags)
            for name, value in expected.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"{builder.__name__} {flags} {name}")


def test_switchable_all_float_is_the_float_model() -> None:
    model = name_unnamed_nodes(cleanup(residual_block()))
    feed = random_feed(model, batch=2)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    with OrtRunner(model, optimization="none") as r:
        expected = r.infer(feed)
    with SwitchableRunner(sw, optimization="none") as runner:
        got = runner.run(feed, sw.all_float())
    np.testing.assert_array_equal(got["output"], expected["output"])


def test_switchable_respects_base_exclusions() -> None:
    model = name_unnamed_nodes(cleanup(conv_bn_relu_cnn()))
    feed = random_feed(model, batch=2)
    amax = minmax_amax(model, feed)
    sw = build_switchable_model(model, amax, exclude=["fc"])
    assert [layer.name for layer in sw.layers] == ["conv1", "conv2"]
    assert sw.exclude_for(sw.all_int8()) == ("fc",)
    assert sw.exclude_for(sw.flags([1])) == ("fc", "conv1")
    onnx.checker.check_model(sw.model)


def test_ambiguous_node_name_has_no_pattern() -> None:
    model = name_unnamed_nodes(cleanup(mlp()))
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    gemms[0].name = "Gemm"  # also matches every Gemm by op type
    feed = random_feed(model, batch=2)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    layer = sw.layer("Gemm")
    assert layer.pattern is None
    assert all(other.pattern == other.name for other in sw.layers if other is not layer)
    with pytest.raises(UsageError, match="cannot be excluded by name"):
        sw.exclude_for(~sw.flags([layer.index]))
    with pytest.raises(UsageError, match="no quantized layer named 'nope'"):
        sw.layer("nope")
    with pytest.raises(UsageError, match="out of range"):
        sw.flags([99])


def test_no_quantizable_layer_is_a_model_error() -> None:
    model = name_unnamed_nodes(cleanup(mlp()))
    with pytest.raises(ModelError, match="no layer would be quantized"):
        build_switchable_model(model, {})


# --- segments: single-layer configurations from a cut tensor ---------------------------------------


def test_plan_segments_finds_the_cuts_of_a_residual_block() -> None:
    model = name_unnamed_nodes(cleanup(residual_block()))
    feed = random_feed(model, batch=2)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    segments = plan_segments(sw, max_segments=4)
    # stem_relu feeds conv1 and the residual add: the only value crossing from the stem to the block.
    assert [s.cut for s in segments] == ["stem_relu"]
    assert [sw.layers[k].name for k in segments[0].layers] == ["conv1", "conv2", "residual_add"]
    assert 0 < segments[0].fraction < 1
    suffix = suffix_model(sw, segments[0])
    onnx.checker.check_model(suffix)
    assert [v.name for v in suffix.graph.input] == ["stem_relu", sw.flags_input]
    assert plan_segments(sw, max_segments=0) == ()
    # A transformer block's input is read by its last node (the residual add): no cut, no segment.
    block = name_unnamed_nodes(cleanup(transformer_block()))
    feed = random_feed(block, batch=2)
    assert plan_segments(build_switchable_model(block, minmax_amax(block, feed))) == ()


@pytest.mark.parametrize("builder", [conv_bn_relu_cnn, residual_block, mlp, outlier_classifier])
def test_segments_give_the_same_measurements_as_full_passes(builder: Callable[[], onnx.ModelProto]) -> None:
    model = name_unnamed_nodes(cleanup(builder()))
    feed = random_feed(model, batch=6, seed=2)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    results = []
    for segments in (0, 4):
        with SwitchableRunner(sw, optimization="none", segments=segments) as runner:
            assert (len(runner.segments) > 0) == (segments > 0)
            results.append(measure_sensitivity(runner, ArrayDataset(feed), batch_size=3, metric="sqnr"))
    full, segmented = results
    assert segmented.segments > 0 and segmented.work_fraction < 1.0 and full.work_fraction == 1.0
    assert segmented.layers == full.layers and segmented.all_int8 == full.all_int8


def test_segments_survive_a_value_info_that_declares_an_activation_scalar() -> None:
    """A PaddleOCR export declares an activation's shape as () in its value_info; the suffix model
    that reads it must take its rank from shape inference, not from that (ONNX Runtime checks
    feeds against declared shapes)."""
    model = name_unnamed_nodes(cleanup(residual_block()))
    feed = random_feed(model, batch=4, seed=3)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    cut = plan_segments(sw)[0].cut
    lying = onnx.ModelProto()
    lying.CopyFrom(sw.model)
    del lying.graph.value_info[:]
    lying.graph.value_info.append(helper.make_tensor_value_info(cut, TensorProto.FLOAT, []))
    sw_lying = dataclasses.replace(sw, model=lying)
    segments = plan_segments(sw_lying)
    assert segments and segments[0].cut == cut and segments[0].rank == 4
    with SwitchableRunner(sw_lying, optimization="none") as a, SwitchableRunner(sw, optimization="none") as b:
        got = measure_sensitivity(a, ArrayDataset(feed), batch_size=2, metric="sqnr")
        want = measure_sensitivity(b, ArrayDataset(feed), batch_size=2, metric="sqnr")
    assert got.layers == want.layers


# --- ranking (pure) ---------------------------------------------------------------------------------


def _m(top1: float | None = None, agreement: float | None = None, sqnr: float | None = 30.0) -> Measurement:
    return Measurement(num_samples=100, top1=top1, agreement=agreement, sqnr_db=sqnr, exact=sqnr is None)


def test_rank_layers_orders_by_score_then_noise_then_graph_order() -> None:
    layers = [Layer(i, f"l{i}", "Conv", f"l{i}") for i in range(4)]
    ref = _m(top1=90.0, agreement=100.0, sqnr=None)
    all_int8 = _m(top1=80.0, agreement=85.0, sqnr=20.0)
    alone = [_m(90.0, 100.0, 40.0), _m(85.0, 94.0, 25.0), _m(90.0, 100.0, 30.0), _m(91.0, 99.0, 50.0)]
    allbut = [_m(80.0, 85.0, 20.5), _m(88.0, 97.0, 26.0), _m(80.0, 85.0, 20.5), _m(79.0, 85.0, 20.0)]
    ranked = rank_layers(layers, alone, allbut, metric="accuracy", reference=ref, all_int8=all_int8)
    assert [r.name for r in ranked] == ["l1", "l2", "l0", "l3"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    first = ranked[0]
    assert first.damage == pytest.approx(5.0) and first.gain == pytest.approx(8.0) and first.score == pytest.approx(13.0)
    # l3 "improves" top-1 when quantized alone, and worsens it when float alone: noise, score 0.
    last = ranked[-1]
    assert last.damage == pytest.approx(-1.0) and last.gain == pytest.approx(-1.0) and last.score == 0.0
    # l0 and l2 tie on top-1 (score 0); l2's INT8 SQNR is worse: it ranks first.
    agree = rank_layers(layers, alone, allbut, metric="agreement", reference=ref, all_int8=all_int8)
    assert agree[0].name == "l1" and agree[0].damage == pytest.approx(6.0)
    sqnr = rank_layers(layers, alone, allbut, metric="sqnr", reference=ref, all_int8=all_int8)
    assert sqnr[0].name == "l1" and sqnr[0].damage == pytest.approx(10 ** -2.5)


def test_rank_layers_needs_matching_lengths() -> None:
    with pytest.raises(UsageError, match="one 'quantized alone'"):
        rank_layers([Layer(0, "a", "Conv", "a")], [], [], metric="sqnr", reference=_m(), all_int8=_m())


def test_measurement_noise_and_round_trip() -> None:
    assert _m(sqnr=None).noise == 0.0
    assert _m(sqnr=20.0).noise == pytest.approx(0.01)
    undefined = Measurement(num_samples=1, top1=None, agreement=None, sqnr_db=None, exact=False)
    assert undefined.noise == math.inf
    m = _m(top1=91.5, agreement=99.0, sqnr=31.25)
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(ReportError, match="measurement.exact"):
        Measurement.from_dict({**m.to_dict(), "exact": "yes"})


def test_resolve_metric() -> None:
    assert resolve_metric("auto", classifier_output="logits", has_labels=True) == "accuracy"
    assert resolve_metric("auto", classifier_output="logits", has_labels=False) == "agreement"
    assert resolve_metric("auto", classifier_output=None, has_labels=True) == "sqnr"
    assert resolve_metric("sqnr", classifier_output="logits", has_labels=True) == "sqnr"
    with pytest.raises(DataError, match="needs labelled data"):
        resolve_metric("accuracy", classifier_output="logits", has_labels=False)
    with pytest.raises(ModelError, match="needs a classifier output"):
        resolve_metric("agreement", classifier_output=None, has_labels=False)
    with pytest.raises(UsageError, match="--metric must be one of"):
        resolve_metric("f1", classifier_output=None, has_labels=False)
    with pytest.raises(UsageError, match="--metric"):
        SensitivityOptions(metric="top5")


# --- budgets ------------------------------------------------------------------------------------------


def test_budget_checks_and_errors() -> None:
    ref = _m(top1=90.0, agreement=100.0, sqnr=None)
    b = Budget(accuracy_points=0.5)
    assert b.met(_m(89.5, 97.0, 10.0), ref, "accuracy")
    assert not b.met(_m(89.4, 100.0, 40.0), ref, "accuracy")
    assert b.met(_m(80.0, 99.5, 40.0), ref, "agreement")
    s = Budget(min_sqnr_db=25.0)
    assert s.met(_m(sqnr=25.0), ref, None) and s.met(_m(sqnr=None), ref, None)
    assert not s.met(_m(sqnr=24.9), ref, None)
    both = Budget(accuracy_points=1.0, min_sqnr_db=25.0)
    assert not both.met(_m(90.0, 100.0, 20.0), ref, "accuracy")
    assert "1 points of top-1" in both.describe("accuracy") and "25 dB" in both.describe("accuracy")
    assert Budget.from_dict(both.to_dict()) == both
    with pytest.raises(UsageError, match="--accuracy-budget POINTS or --min-sqnr"):
        Budget()
    with pytest.raises(UsageError, match="between 0 and 100"):
        Budget(accuracy_points=-1)
    with pytest.raises(UsageError, match="finite"):
        Budget(min_sqnr_db=math.inf)
    with pytest.raises(ModelError, match="use --min-sqnr"):
        b.classification_metric(classifier_output=None, has_labels=True)
    with pytest.raises(UsageError, match="--accuracy-budget"):
        FallbackOptions(accuracy_budget=101)


# --- measuring: sensitivity and fallback on the destructive-layer model ---------------------------


def test_sensitivity_ranks_the_destructive_layer_first(outlier_sensitivity: SensitivityResult) -> None:
    res = outlier_sensitivity
    assert res.metric == "accuracy" and res.classifier_output == "logits" and res.has_labels
    assert res.num_samples == NUM_SAMPLES
    assert res.reference.top1 == 100.0 and res.reference.exact
    assert res.all_int8_loss > 30.0  # INT8 everywhere is ruined
    assert res.ranking[0] == DESTRUCTIVE
    top = res.layers[0]
    assert top.damage > 30.0 and top.gain > 30.0
    assert all(layer.score < 5.0 for layer in res.layers[1:])
    # Cost: FP32 + all INT8 + 2 per layer, once per sample.
    assert res.configurations == 2 + 2 * 3
    assert res.forward_passes == res.configurations * NUM_SAMPLES
    text = render_sensitivity(res)
    assert text.splitlines()[5].startswith("1     fc2")
    assert "cost: 8 configurations x 256 samples = 2048 forward passes" in text
    again = SensitivityResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again == res


@pytest.mark.parametrize("metric", ["agreement", "sqnr"])
def test_other_metrics_rank_it_first_too(
    outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]], metric: str
) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    with SwitchableRunner(sw) as runner:
        res = measure_sensitivity(
            runner, ArrayDataset({"input": data["input"][:64]}), batch_size=16, metric=metric
        )
    assert res.metric == metric and not res.has_labels
    assert res.ranking[0] == DESTRUCTIVE


def test_sensitivity_data_errors(outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]]) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    with SwitchableRunner(sw) as runner:
        with pytest.raises(DataError, match="no input 'input'"):
            measure_sensitivity(runner, ArrayDataset({"x": data["input"]}), batch_size=8)
        with pytest.raises(DataError, match="yielded no samples"):
            measure_sensitivity(runner, ArrayDataset({"input": data["input"][:0]}), batch_size=8)
        with pytest.raises(DataError, match="needs labelled data"):
            measure_sensitivity(runner, ArrayDataset({"input": data["input"][:8]}), batch_size=8, metric="accuracy")


def test_greedy_fallback_excludes_the_destructive_layer_and_meets_the_budget(
    outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]],
) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    verified: list[tuple[str, ...]] = []

    def verify(exclude: tuple[str, ...]) -> Measurement:
        verified.append(exclude)
        with OrtRunner(insert_qdq(model, amax, exclude=exclude).model) as r:
            return measure_stored(r.infer, store, outputs=["logits"], classifier_output="logits")

    with BatchStore() as store, SwitchableRunner(sw) as runner:
        sens = measure_sensitivity(
            runner, ArrayDataset({"input": data["input"]}, data["labels"]), batch_size=32, store=store
        )
        budget = Budget(accuracy_points=2.0)
        assert not budget.met(sens.all_int8, sens.reference, "accuracy")  # plain INT8 misses it
        result = greedy_fallback(runner, sens, store, budget, verify=verify)
    assert result.met and result.fell_back == (DESTRUCTIVE,) and result.exclude == (DESTRUCTIVE,)
    assert [s.layer for s in result.steps] == [DESTRUCTIVE] and result.steps[0].met
    assert result.steps[0].drop is not None and result.steps[0].drop <= 2.0
    assert verified == [(DESTRUCTIVE,)]
    assert result.verified is not None and budget.met(result.verified, result.reference, "accuracy")
    assert result.forward_passes == 3 * NUM_SAMPLES  # all INT8, one step, one verification
    assert FallbackResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    text = render_fallback(result)
    assert "step 1: fc2 (Gemm) -> float" in text and "budget met" in text


def test_fallback_ranks_on_a_subset_and_checks_the_budget_on_every_sample(
    outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]],
) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    with BatchStore() as store, SwitchableRunner(sw) as runner:
        fill_store(runner, ArrayDataset({"input": data["input"]}, data["labels"]), store, batch_size=32)
        assert store.num_samples == NUM_SAMPLES and store.num_batches == NUM_SAMPLES // 32
        subset = StoredDataset(store, limit=64, source="data.npz")
        assert len(subset) == 64 and subset.has_labels and subset.input_names == ("input",)
        assert subset.summary().source == "data.npz"
        sens = measure_sensitivity(runner, subset, batch_size=32)
        assert sens.num_samples == 64 and sens.ranking[0] == DESTRUCTIVE
        runner.release_segments()
        result = greedy_fallback(runner, sens, store, Budget(accuracy_points=2.0))
    assert result.reference.num_samples == NUM_SAMPLES and result.start.num_samples == NUM_SAMPLES
    assert result.reference.top1 == 100.0 and result.met and result.fell_back == (DESTRUCTIVE,)
    assert result.steps[0].measurement.num_samples == NUM_SAMPLES


def test_fill_store_errors(outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]]) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    with BatchStore() as store, SwitchableRunner(sw, segments=0) as runner:
        with pytest.raises(DataError, match="no input 'input'"):
            fill_store(runner, ArrayDataset({"other": data["input"]}), store, batch_size=8)
        with pytest.raises(DataError, match="yielded no samples"):
            fill_store(runner, ArrayDataset({"input": data["input"][:0]}), store, batch_size=8)


def test_fallback_goes_on_when_the_real_model_misses_and_stops_when_nothing_is_left(
    outlier: tuple[onnx.ModelProto, dict[str, np.ndarray], dict[str, float]],
) -> None:
    model, data, amax = outlier
    sw = build_switchable_model(model, amax)
    bad = Measurement(num_samples=1, top1=0.0, agreement=0.0, sqnr_db=-5.0, exact=False)
    with BatchStore() as store, SwitchableRunner(sw) as runner:
        sens = measure_sensitivity(
            runner, ArrayDataset({"input": data["input"][:64]}, data["labels"][:64]), batch_size=32, store=store
        )
        # A verification that always fails: every layer falls back, the budget is still missed.
        result = greedy_fallback(runner, sens, store, Budget(accuracy_points=0.0), verify=lambda _e: bad)
    assert not result.met
    assert len(result.steps) == 3 and set(result.fell_back) == {"fc1", "fc2", "fc3"}
    assert result.steps[-1].measurement.exact  # all float: the FP32 model
    assert "budget NOT met" in render_fallback(result)


def test_fallback_needs_a_classifier_for_an_accuracy_budget() -> None:
    model = name_unnamed_nodes(cleanup(residual_block()))
    feed = random_feed(model, batch=4)
    sw = build_switchable_model(model, minmax_amax(model, feed))
    with BatchStore() as store, SwitchableRunner(sw) as runner:
        sens = measure_sensitivity(runner, ArrayDataset(feed), batch_size=4, store=store)
        assert sens.metric == "sqnr" and sens.classifier_output is None
        with pytest.raises(ModelError, match="use --min-sqnr"):
            greedy_fallback(runner, sens, store, Budget(accuracy_points=1.0))
        result = greedy_fallback(runner, sens, store, Budget(min_sqnr_db=200.0))
    assert result.met and result.final.exact  # only all-float is exact


def test_batch_store_spills_to_disk_and_gives_the_same_batches() -> None:
    rng = np.random.default_rng(0)
    batches = [
        ({"x": rng.standard_normal((4, 3)).astype(np.float32)}, {"y": rng.standard_normal((4, 2))}, np.arange(4))
        for _ in range(3)
    ]
    with BatchStore(memory_limit=200) as store:
        for feed, ref, labels in batches:
            store.add(feed, ref, labels if len(store._items) != 1 else None)
        assert store.num_batches == 3 and store.num_samples == 12 and store.spilled >= 1
        tmp = Path(store._tmp.name) if store._tmp else None
        for _ in range(2):  # iterable more than once
            got = list(store)
            for i, (g, (feed, ref, _labels)) in enumerate(zip(got, batches, strict=True)):
                np.testing.assert_array_equal(g.feed["x"], feed["x"])
                np.testing.assert_array_equal(g.reference["y"], ref["y"])
                assert (g.labels is None) == (i == 1)
    assert tmp is not None and not tmp.exists()


# --- the fallback file ------------------------------------------------------------------------------


def test_fallback_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = fallback_path(tmp_path / "m.int8.onnx")
    assert path.name == "m.int8.onnx.fallback.json"
    save_fallback(path, {"model": {"path": "m.onnx", "fingerprint": {"graph": "g", "weights": "w"}},
                         "exclude": ["fc2", "conv[[]1]"]})
    loaded = read_exclude_file(path)
    assert loaded.exclude == ("fc2", "conv[[]1]") and loaded.model_fingerprint == {"graph": "g", "weights": "w"}
    plain = tmp_path / "list.json"
    plain.write_text('["a", "b"]')
    assert read_exclude_file(plain).exclude == ("a", "b")
    with pytest.raises(UsageError, match="does not exist"):
        read_exclude_file(tmp_path / "missing.json")
    with pytest.raises(UsageError, match="is a directory"):
        read_exclude_file(tmp_path)
    cases = {
        "notjson.json": ("{", "not a JSON file"),
        "report.json": ('{"schema": "quant.report"}', "not a quant fallback file"),
        "future.json": ('{"schema": "quant.fallback", "schema_version": 99, "exclude": []}', "upgrade quant"),
        "badlist.json": ('{"schema": "quant.fallback", "schema_version": 1, "exclude": [1]}', "list of node names"),
        "number.json": ("3", "list of node names"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ReportError, match=message):
            read_exclude_file(tmp_path / name)
    with pytest.raises(UsageError, match="'exclude' list"):
        save_fallback(tmp_path / "x.json", {"exclude": "fc2"})


# --- the Python API -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_outlier_files(tmp_path_factory.mktemp("outlier"))


def test_api_sensitivity_writes_and_merges_reports(outlier_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = outlier_files
    report = tmp_path / "report.json"
    out = api.sensitivity(
        model, DataOptions(str(data), max_samples=64), cache=cache, report=report,
        options=SensitivityOptions(exact=True),
    )
    assert out.result.ranking[0] == DESTRUCTIVE and out.result.num_samples == 64
    assert out.result.sampling == "all" and out.result.confidence is not None
    doc = json.loads(report.read_text())
    assert doc["extra"]["sensitivity"]["layers"][0]["name"] == DESTRUCTIVE
    assert doc["extra"]["sensitivity"]["cache"] == str(cache)
    # An evaluation report of the same model keeps its sections and gains extra.sensitivity.
    evaluated = tmp_path / "eval.json"
    api.evaluate(model, DataOptions(str(data), max_samples=32), cache=cache, report=evaluated)
    api.sensitivity(
        model, DataOptions(str(data), max_samples=32), cache=cache, report=evaluated,
        options=SensitivityOptions(metric="sqnr"),
    )
    merged = json.loads(evaluated.read_text())
    assert merged["evaluation"] is not None and merged["extra"]["sensitivity"]["metric"] == "sqnr"
    # A report of another model is refused.
    other = tmp_path / "other.onnx"
    onnx.save(outlier_classifier(seed=99), str(other))
    with pytest.raises(ReportError, match="is for another model"):
        api.sensitivity(other, DataOptions(str(data), max_samples=16), cache=cache, report=evaluated)


def test_api_build_with_budget_and_exclude_from_reproduces_it(
    outlier_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    model, data, cache = outlier_files
    out = tmp_path / "m.int8.onnx"
    outcome = api.build(
        model, output=out, cache=cache, data=DataOptions(str(data)), fallback=FallbackOptions(accuracy_budget=2.0)
    )
    fb = outcome.fallback
    assert fb is not None and fb.met and fb.fell_back == (DESTRUCTIVE,)
    assert outcome.fallback_path == fallback_path(out) and outcome.fallback_path.exists()
    view = precision_view(onnx.load(str(out)))
    assert {layer.name: layer.precision for layer in view.layers if layer.op_type == "Gemm"} == {
        "fc1": "int8", "fc2": "float", "fc3": "int8"
    }
    doc = json.loads(outcome.fallback_path.read_text())
    assert doc["exclude"] == [DESTRUCTIVE] and doc["fallback"]["met"]
    assert doc["sensitivity"]["layers"][0]["name"] == DESTRUCTIVE
    again = tmp_path / "again.int8.onnx"
    api.build(model, output=again, cache=cache, exclude_from=outcome.fallback_path)
    assert again.read_bytes() == out.read_bytes()


def test_api_build_fallback_usage_errors(outlier_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = outlier_files
    budget = FallbackOptions(accuracy_budget=1.0)
    out = tmp_path / "m.onnx"
    with pytest.raises(UsageError, match="need --data"):
        api.build(model, output=out, cache=cache, fallback=budget)
    with pytest.raises(UsageError, match="need --cache"):
        api.build(model, output=out, data=DataOptions(str(data)), fallback=budget)
    with pytest.raises(UsageError, match="need --precision int8"):
        api.build(model, output=out, cache=cache, data=DataOptions(str(data)), fallback=budget,
                  options=BuildOptions(precision="fp16"))
    with pytest.raises(UsageError, match="--target tensorrt only"):
        api.build(model, output=out, cache=cache, data=DataOptions(str(data)), fallback=budget,
                  options=BuildOptions(target="onnxruntime"))
    with pytest.raises(UsageError, match="is the output model"):
        api.build(model, output=out, cache=cache, data=DataOptions(str(data)),
                  fallback=FallbackOptions(min_sqnr=20.0, report=str(out)))
    with pytest.raises(QuantError, match="same file as input"):
        api.build(model, output=out, cache=cache, data=DataOptions(str(data)),
                  fallback=FallbackOptions(min_sqnr=20.0, report=str(data)))
    assert not out.exists()


def test_exclude_from_another_model_warns(
    outlier_files: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, _data, cache = outlier_files
    fb = tmp_path / "fb.json"
    save_fallback(fb, {"model": {"fingerprint": {"graph": "x", "weights": "y"}}, "exclude": ["fc2"]})
    with caplog.at_level("WARNING", logger="quant"):
        outcome = api.build(model, output=tmp_path / "m.onnx", cache=cache, exclude_from=fb)
    assert "made for another version" in caplog.text
    assert outcome.skipped.get("h1") == "excluded"


def test_adaptive_sampling_stops_once_the_ranking_is_steady(outlier_files: tuple[Path, Path, Path]) -> None:
    """Without --exact the samples are read in rounds and the pass stops at the asked confidence;
    the ranking's split-half reliability is reported, and the top layer is the full measurement's."""
    model, data, cache = outlier_files
    full = api.sensitivity(model, DataOptions(str(data), max_samples=64), cache=cache,
                           options=SensitivityOptions(metric="sqnr", exact=True)).result
    fast = api.sensitivity(model, DataOptions(str(data), max_samples=64), cache=cache,
                           options=SensitivityOptions(metric="sqnr", confidence=0.9, ranking="measured")).result
    assert fast.sampling == "adaptive" and fast.samples_available == 64
    assert 16 <= fast.num_samples < 64  # stopped early, after the minimum
    assert fast.confidence is not None and fast.confidence >= 0.9
    assert fast.ranking[0] == full.ranking[0] == DESTRUCTIVE
    # Asking for certainty reads every sample and says the target was missed or met.
    strict = api.sensitivity(model, DataOptions(str(data), max_samples=64), cache=cache,
                             options=SensitivityOptions(metric="sqnr", confidence=1.0, ranking="measured")).result
    assert strict.num_samples == 64 or (strict.confidence or 0) >= 1.0


def test_layer_shards_merge_into_the_unsharded_ranking(outlier_files: tuple[Path, Path, Path]) -> None:
    from quant.report.merge import merge_sensitivity

    model, data, cache = outlier_files
    opts = SensitivityOptions(metric="sqnr", exact=True)
    whole = api.sensitivity(model, DataOptions(str(data), max_samples=32), cache=cache, options=opts).section
    parts = [
        api.sensitivity(model, DataOptions(str(data), max_samples=32), cache=cache, options=opts,
                        shard=f"{k}/3").section
        for k in (3, 1, 2)
    ]
    assert sum(len(p["layers"]) for p in parts) == len(whole["layers"])
    merged = merge_sensitivity(parts)
    assert [x["name"] for x in merged["layers"]] == [x["name"] for x in whole["layers"]]
    for m, w in zip(merged["layers"], whole["layers"], strict=True):
        assert m["score"] == w["score"] and m["rank"] == w["rank"]
