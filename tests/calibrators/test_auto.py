"""--method auto: candidates, held-out split, the search, the exact scorer, the calibrate stage."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.calibrators import auto as auto_module
from quant.calibrators.auto import (
    CANDIDATES,
    AutoRecord,
    Candidate,
    OutputScorer,
    Score,
    SearchPlan,
    SubsetDataset,
    candidate_ranges,
    choose_rule,
    held_out_count,
    plan_search,
    scale_input_model,
    scoring_plan,
    search,
    split_folds,
    split_groups,
    split_held_out,
)
from quant.calibrators.methods import compute_amax
from quant.calibrators.stats import StatsCollector
from quant.errors import CalibrationError, UsageError
from quant.graph.cleanup import cleanup
from tests.models import conv_bn_relu_cnn


def _stats() -> dict:
    rng = np.random.default_rng(0)
    col = StatsCollector(num_bins=2048)
    col.collect("gauss", rng.standard_normal(20000).astype(np.float32))
    heavy = rng.standard_normal(20000).astype(np.float32)
    heavy[:5] *= 40.0
    col.collect("heavy", heavy)
    col.collect("zeros", np.zeros(100, dtype=np.float32))
    return col.stats()


def test_candidate_ranges_are_each_methods_own() -> None:
    stats = _stats()
    table = candidate_ranges(stats)
    assert list(table) == [c.label for c in CANDIDATES]
    assert list(table)[:3] == ["entropy", "minmax", "percentile 99.9"]
    for cand in CANDIDATES:
        assert table[cand.label] == compute_amax(stats, cand.config())
    assert all(table[lab]["zeros"] is None for lab in table)
    # heavy tail: minmax keeps the outliers, percentile 99.9 clips them
    assert table["minmax"]["heavy"] > 10 * table["percentile 99.9"]["heavy"]


def test_candidate_labels_parse_back() -> None:
    for cand in CANDIDATES:
        assert Candidate.parse(cand.label) == cand
    with pytest.raises(UsageError, match="not a method"):
        Candidate.parse("percentile")
    with pytest.raises(UsageError, match="--percentile"):
        Candidate("percentile", 101.0)


def test_scoring_plan_and_folds_are_seeded_disjoint_and_bounded() -> None:
    # small sets: 16 samples score, in folds of about 1/8 of the set (at least 2, at most 8 folds)
    assert scoring_plan(16) == (16, 8)
    assert scoring_plan(19) == (16, 8)
    assert scoring_plan(30) == (16, 4)
    assert scoring_plan(40) == (16, 3)
    assert scoring_plan(64) == (16, 2)
    assert scoring_plan(128) == (16, 1)  # 1/8 held out once
    assert scoring_plan(300) == (32, 1)
    assert scoring_plan(10_000) == (32, 1)
    assert scoring_plan(100, batch=8) == (16, 1)  # whole fixed-size batches, one fold
    assert held_out_count(300) == 32
    with pytest.raises(CalibrationError, match="at least 16 samples"):
        scoring_plan(15)
    rest, folds = split_folds(40, 16, 3, seed=3)
    again = split_folds(40, 16, 3, seed=3)
    assert np.array_equal(rest, again[0]) and all(np.array_equal(a, b) for a, b in zip(folds, again[1], strict=True))
    assert sorted([*rest.tolist(), *(i for f in folds for i in f.tolist())]) == list(range(40))
    assert sorted(len(f) for f in folds) == [5, 5, 6] and len(rest) == 24
    assert not np.array_equal(np.concatenate(folds), np.concatenate(split_folds(40, 16, 3, seed=4)[1]))
    rest, folds = split_folds(16, 16, 2, seed=0)
    assert rest.size == 0 and sorted(np.concatenate(folds).tolist()) == list(range(16))
    a_stats, a_held = split_held_out(100, 20, seed=3)
    assert sorted([*a_stats.tolist(), *a_held.tolist()]) == list(range(100))


def test_plan_search_counts_sample_forwards() -> None:
    # 4 passes over 128 samples = 512 sample forwards; 32 held-out: reference + 15 evaluations
    plan = plan_search(num_tensors=70, num_candidates=6, calibration_samples=128, held_out=32, budget=4.0)
    assert plan == SearchPlan(max_evaluations=15, groups=4, alternatives=2)
    small = plan_search(num_tensors=3, num_candidates=6, calibration_samples=1000, held_out=32)
    assert small.groups == 3  # never more groups than tensors
    tight = plan_search(num_tensors=70, num_candidates=6, calibration_samples=16, held_out=8, budget=1.0)
    assert tight.max_evaluations == 6 and tight.groups == 0  # the model-level round always runs
    with pytest.raises(UsageError, match="--auto-budget"):
        plan_search(num_tensors=1, num_candidates=2, calibration_samples=16, held_out=8, budget=0.0)


def test_split_groups_consecutive_and_balanced() -> None:
    groups = split_groups([f"t{i}" for i in range(10)], 3)
    assert [len(g) for g in groups] == [3, 3, 4]
    assert sum(groups, []) == [f"t{i}" for i in range(10)]
    assert split_groups(["a", "b"], 5) == [["a"], ["b"]]


def _quadratic(target: Mapping[str, float]):
    """A score with a known optimum: -sum of squared distances to target amax per tensor."""
    calls: list[dict[str, float]] = []

    def score(amax: Mapping[str, float]) -> Score:
        calls.append(dict(amax))
        return Score(sqnr_db=-sum((amax[t] - target[t]) ** 2 for t in target))

    return score, calls


def test_search_finds_per_group_optimum_within_budget() -> None:
    tensors = ["t0", "t1", "t2", "t3"]
    table = {
        "A": {"t0": 1.0, "t1": 1.0, "t2": 1.0, "t3": 1.0},
        "B": {"t0": 2.0, "t1": 2.0, "t2": 2.0, "t3": 2.0},
        "C": {"t0": 3.0, "t1": 3.0, "t2": 3.0, "t3": 3.0},
    }
    target = {"t0": 1.0, "t1": 1.0, "t2": 3.0, "t3": 3.0}
    score, calls = _quadratic(target)
    plan = SearchPlan(max_evaluations=7, groups=2, alternatives=2)
    found = search(table, tensors, score, plan=plan)
    assert found.best_single == "B"
    assert found.scores["A"].sqnr_db == found.scores["C"].sqnr_db == -8.0
    assert found.choice == {"t0": "A", "t1": "A", "t2": "C", "t3": "C"}
    assert found.score.sqnr_db == 0.0
    assert found.evaluations == len(calls) == 3 + 2 * 2
    assert found.evaluations <= plan.max_evaluations
    assert [(s["group"], s["method"]) for s in found.steps] == [(0, "A"), (1, "C")]


def test_search_ties_go_to_the_earlier_candidate() -> None:
    table = {"A": {"x": 1.0}, "B": {"x": 3.0}}
    score, _calls = _quadratic({"x": 2.0})
    found = search(table, ["x"], score, plan=SearchPlan(4, 1, 1))
    assert found.best_single == "A" and found.choice == {"x": "A"} and not found.steps


def test_search_never_below_best_single_and_skips_identical_ranges() -> None:
    table = {"A": {"x": 1.0, "y": 5.0}, "B": {"x": 1.0, "y": 4.0}}
    score, calls = _quadratic({"x": 1.0, "y": 5.0})
    found = search(table, ["x", "y"], score, plan=SearchPlan(10, 2, 1))
    assert found.best_single == "A" and found.choice == {"x": "A", "y": "A"}
    assert found.score == found.scores["A"]
    # group x: B's range equals A's, not measured; group y: measured, worse, not taken
    assert len(calls) == 2 + 1


def test_a_candidate_with_an_earlier_ones_ranges_is_not_measured_again() -> None:
    table = {"A": {"x": 1.0, "y": 5.0}, "B": {"x": 2.0, "y": 4.0}, "C": {"x": 1.0, "y": 5.0}}
    score, calls = _quadratic({"x": 2.0, "y": 4.0})
    found = search(table, ["x", "y"], score, plan=SearchPlan(10, 0, 1))
    assert len(calls) == found.evaluations == 2  # C has A's ranges everywhere
    assert found.scores["C"] == found.scores["A"] and found.best_single == "B"


def test_auto_record_round_trips() -> None:
    rec = AutoRecord(
        choice={"a": "mse"},
        candidates=tuple(c.to_dict() for c in CANDIDATES),
        scores={"mse": Score(12.5, 90.0), "entropy": Score(math.inf, None)},
        best_single="mse",
        score=Score(13.0, 91.0),
        searched=1,
        evaluations=7,
        plan=SearchPlan(9, 1, 2),
        held_out=8,
        statistics_samples=24,
        seed=0,
        cost={"passes": 1.5},
    )
    back = AutoRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert back == rec


class _Arrays:
    """A tiny in-memory dataset (the Dataset protocol) with labels."""

    def __init__(self, n: int) -> None:
        self.x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        self.y = np.arange(n, dtype=np.int64)

    input_names = ("input",)
    has_labels = True

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int):
        from quant.datasets.base import Batch

        for i in range(0, len(self), batch_size):
            yield Batch(feed={"input": self.x[i : i + batch_size].copy()}, labels=self.y[i : i + batch_size].copy())

    def fingerprint(self) -> str:
        return "abc"

    def summary(self):
        from quant.datasets.base import DataSummary

        return DataSummary(source="mem", kind="npz", num_samples=len(self))


def test_subset_dataset_rebatches_the_chosen_samples() -> None:
    full = _Arrays(10)
    sub = SubsetDataset(full, [1, 2, 5, 6, 7, 9], tag="t")
    batches = list(sub.batches(4))
    assert [b.size for b in batches] == [4, 2]
    assert np.concatenate([b.labels for b in batches]).tolist() == [1, 2, 5, 6, 7, 9]
    assert np.array_equal(np.concatenate([b.feed["input"] for b in batches]), full.x[[1, 2, 5, 6, 7, 9]])
    assert len(sub) == 6 and sub.summary().num_samples == 6
    assert sub.fingerprint() != full.fingerprint()
    assert sub.fingerprint() != SubsetDataset(full, [1, 2], tag="t").fingerprint()
    b0 = batches[0].feed["input"]
    b0[:] = -1
    assert full.x.min() >= 0  # never a view of the parent's arrays


def _cnn_and_stats() -> tuple[onnx.ModelProto, dict, np.ndarray]:
    from quant.calibrators.calibrate import collect_statistics
    from quant.graph.qdq import calibration_tensors

    model = cleanup(conv_bn_relu_cnn())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    ds = _Feeds(x)
    col, _n = collect_statistics(model, ds, calibration_tensors(model, scope="qdq"), batch_size=8)
    return model, col.stats(), x


class _Feeds(_Arrays):
    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.y = np.zeros(x.shape[0], dtype=np.int64)

    has_labels = False


def test_scale_input_model_computes_what_insert_qdq_computes() -> None:
    """The scorer's one session, fed one candidate's scales, gives the outputs of that candidate's
    own Q/DQ model (both with TensorRT's exact arithmetic)."""
    from quant.backends.onnxruntime import OrtRunner
    from quant.graph.qdq import insert_qdq

    model, stats, x = _cnn_and_stats()
    table = candidate_ranges(stats)
    sim = scale_input_model(model, table["minmax"])
    assert set(sim.scale_inputs) == set(sim.quantized) and sim.quantized
    for label in ("entropy", "percentile 99.9"):
        amax = table[label]
        feed = {"input": x[:4]}
        with OrtRunner(insert_qdq(model, amax).model, int8="exact") as own:
            want = own.infer(feed)
        scales = {n: np.array(np.float32(amax[t] / 127.0)) for t, n in sim.scale_inputs.items()}  # type: ignore[operator]
        with OrtRunner(sim.model, int8="exact") as one:
            got = one.infer({**feed, **scales})
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-5)


def test_output_scorer_sqnr_matches_an_independent_computation() -> None:
    from quant.backends.onnxruntime import OrtRunner
    from quant.graph.qdq import insert_qdq

    model, stats, x = _cnn_and_stats()
    table = candidate_ranges(stats)
    feeds = [{"input": x[:8]}, {"input": x[8:]}]
    with OrtRunner(model) as ref_run:
        ref = np.concatenate([next(iter(ref_run.infer(f).values())) for f in feeds])
    amax = table["mse"]
    with OrtRunner(insert_qdq(model, amax).model, int8="exact") as q_run:
        out = np.concatenate([next(iter(q_run.infer(f).values())) for f in feeds])
    want = 10 * math.log10(float(np.sum(ref.astype(np.float64) ** 2)) / float(np.sum((out - ref).astype(np.float64) ** 2)))
    with OutputScorer(model, table["minmax"], feeds) as scorer:
        got = scorer({t: float(amax[t]) for t in scorer.quantized})  # type: ignore[arg-type]
        assert scorer.forwards == 32  # reference pass + one evaluation, 16 samples each
    assert got.sqnr_db == pytest.approx(want, abs=1e-3)
    assert got.agreement is not None and 0.0 <= got.agreement <= 100.0
    r64, e64 = ref.reshape(16, -1).astype(np.float64), (out - ref).reshape(16, -1).astype(np.float64)
    per_sample = 10 * np.log10(np.sum(r64**2, axis=1) / np.sum(e64**2, axis=1))
    assert got.sample_db == pytest.approx(float(np.mean(per_sample)), abs=1e-3)
    assert got.rule == "pooled" and got.value == got.sqnr_db  # search() sets the rule after the first round
    assert got.parts is not None and got.parts[0].shape == (16, 1)


def _parts(signal: list[float], noise: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.array(signal)[:, None], np.array(noise)[:, None]


def test_pooled_sqnr_decides_by_default() -> None:
    # the study behind the default (docs/CALIBRATION.md "Which rule decides"): pooled SQNR decides,
    # even where the mean of per-sample dB would pick otherwise; no halvings are spent
    parts = {"A": _parts([1.0] * 16, [0.01] * 15 + [1.0]), "B": _parts([1.0] * 16, [0.05] * 16)}

    def score(amax: Mapping[str, float]) -> Score:
        sig, err = parts["A" if amax["x"] == 1.0 else "B"]
        return Score(sqnr_db=10 * math.log10(sig.sum() / err.sum()), sample_db=float(np.mean(10 * np.log10(sig / err))),
                     parts=(sig, err))

    assert auto_module.SCORE_RULE == "pooled"
    found = search({"A": {"x": 1.0}, "B": {"x": 2.0}}, ["x"], score, plan=SearchPlan(2, 0, 1))
    assert found.scores["A"].sample_db > found.scores["B"].sample_db  # the mean of samples would take A
    assert found.best_single == "B" and found.rule == {"rule": "pooled", "halving_regret_db": {}, "halvings": 0}
    assert choose_rule({lab: Score(0.0, parts=p) for lab, p in parts.items()}) == ("pooled", {})


def test_choose_rule_takes_the_rule_that_carries_over_between_halves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto_module, "SCORE_RULE", "adaptive")
    # one loud sample: A is far better on 15 of 16 samples, B pooled (A's 16th dominates the noise)
    loud = {"A": Score(0.0, parts=_parts([1.0] * 16, [0.01] * 15 + [1.0])),
            "B": Score(0.0, parts=_parts([1.0] * 16, [0.05] * 16))}
    rule, regret = choose_rule(loud, seed=0)
    assert rule == "samples" and regret["samples"] < regret["pooled"]
    assert choose_rule(loud, seed=0) == (rule, regret)  # seeded
    # samples without signal (a detector's empty map): their per-sample dB says nothing, pooled wins
    empty = {"A": Score(0.0, parts=_parts([1e-6] * 8 + [1.0] * 8, [1e-8] * 8 + [0.1] * 8)),
             "B": Score(0.0, parts=_parts([1e-6] * 8 + [1.0] * 8, [1e-4] * 8 + [0.01] * 8))}
    rule, regret = choose_rule(empty, seed=0)
    assert rule == "pooled" and regret["pooled"] < regret["samples"]
    assert choose_rule({"A": Score(1.0), "B": Score(2.0)}) == ("pooled", {})  # no per-sample figures


def test_search_decides_by_the_chosen_rule_and_records_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auto_module, "SCORE_RULE", "adaptive")
    parts = {"A": _parts([1.0] * 16, [0.01] * 15 + [1.0]), "B": _parts([1.0] * 16, [0.05] * 16)}

    def score(amax: Mapping[str, float]) -> Score:
        sig, err = parts["A" if amax["x"] == 1.0 else "B"]
        return Score(sqnr_db=10 * math.log10(sig.sum() / err.sum()), sample_db=float(np.mean(10 * np.log10(sig / err))),
                     parts=(sig, err))

    found = search({"A": {"x": 1.0}, "B": {"x": 2.0}}, ["x"], score, plan=SearchPlan(2, 0, 1))
    assert found.scores["B"].sqnr_db > found.scores["A"].sqnr_db  # pooled would take B
    assert found.rule["rule"] == "samples" and found.best_single == "A"
    assert all(sc.rule == "samples" and sc.parts is None for sc in found.scores.values())
    a = found.scores["A"]
    assert Score.from_dict(a.to_dict()) == a
    assert Score.from_dict({"sqnr_db": 3.0}) == Score(sqnr_db=3.0)  # sidecars written before sample_db
    assert Score(sqnr_db=3.0, sample_db=9.0).value == 3.0 and Score(3.0, sample_db=9.0, rule="samples").value == 9.0


# ---------------------------------------------------------------------------------------------
# the calibrate stage (quant.api)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = tmp_path / "cnn.onnx"
    onnx.save(conv_bn_relu_cnn(), model)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    x[:, :, :2] *= 6.0  # a heavy tail for the methods to disagree on
    np.savez(tmp_path / "calib.npz", input=x)
    np.savez(tmp_path / "other.npz", input=rng.standard_normal((12, 3, 16, 16)).astype(np.float32))
    return model, tmp_path / "calib.npz", tmp_path / "other.npz"


def test_calibrate_auto_records_choice_and_is_deterministic(cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from quant import api
    from quant.cache.io import read_cache
    from quant.calibrators.calibrate import collect_statistics
    from quant.config import CalibrationOptions, DataOptions
    from quant.datasets.loader import open_dataset
    from quant.graph.load import input_specs, load_model
    from quant.graph.qdq import calibration_tensors

    model, calib, _other = cnn
    opts = CalibrationOptions(method="auto")
    first = api.calibrate(model, DataOptions(str(calib)), cache=tmp_path / "a.cache", options=opts)
    again = api.calibrate(model, DataOptions(str(calib)), cache=tmp_path / "b.cache", options=opts)
    assert (tmp_path / "a.cache").read_bytes() == (tmp_path / "b.cache").read_bytes()
    assert first.auto is not None and first.auto["choice"] == again.auto["choice"]  # type: ignore[index]
    assert first.cache_path.read_text().startswith("TRT-101300-EntropyCalibration2\n")
    loaded = read_cache(tmp_path / "a.cache")
    rec = AutoRecord.from_dict(loaded.auto or {})
    assert rec.held_out == 16 and rec.cost["folds"] == 3 and first.result.num_samples == 40
    assert rec.statistics_samples == 40 - 16 // 3  # each fold is scored with the others' statistics
    assert set(rec.scores) == {c.label for c in CANDIDATES}
    assert rec.score.sqnr_db >= max(s.sqnr_db for s in rec.scores.values())
    assert rec.evaluations <= rec.plan.max_evaluations
    # how firmly the 16 scored samples back the model-level choice, recorded beside it
    assert rec.firmness["samples"] == 16 and set(rec.firmness["shares"]) == set(rec.scores)
    assert sum(rec.firmness["shares"].values()) == pytest.approx(1.0)
    assert rec.firmness["shares"][rec.best_single] > 0.0
    # the FP32 reference of the scored samples came from the statistics pass: no pass of its own
    from quant.cache.inspect import render_auto_scores

    assert rec.cost["reference"] == "statistics pass" and rec.cost["sample_forwards"] == rec.evaluations * 16
    assert "the FP32 reference came from the statistics pass" in render_auto_scores(loaded.auto or {})
    # the summary line names the figure that decided (pooled SQNR by default), not the recorded mean
    assert "recorded, pooled SQNR decides" in first.message and "what decides" not in first.message
    from quant.pipeline.calibrate import _auto_message

    by_samples = AutoRecord.from_dict({**(loaded.auto or {}), "rule": {"rule": "samples"}})
    assert "dB (what decides;" in _auto_message(by_samples)
    # written: each tensor's chosen method refitted on the statistics of all 40 samples
    # (collected here independently)
    clean = cleanup(load_model(model))
    full = open_dataset(str(calib), inputs=input_specs(clean), preprocess=None, max_samples=None, seed=0,
                        on_bad_image="fail", workers=None)
    col, n = collect_statistics(clean, full, calibration_tensors(clean), batch_size=8)
    assert n == 40
    table = candidate_ranges(col.stats())
    for tensor, label in rec.choice.items():
        assert loaded.amax[tensor] == pytest.approx(table[label][tensor], rel=1e-6)
    # the saved statistics hold every sample, so another method recomputes without running the model
    side = json.loads((tmp_path / "a.cache.json").read_text())
    assert side["calibration"]["method"] == "auto"
    third = api.calibrate(model, DataOptions(str(calib)), cache=tmp_path / "a.cache", options=opts)
    assert third.action == "reused" and third.auto == first.auto
    ent = api.calibrate(model, DataOptions(str(calib)), cache=tmp_path / "a.cache",
                        options=CalibrationOptions(method="entropy"))
    assert ent.action == "recomputed" and ent.result.num_samples == 40


def test_calibrate_auto_needs_enough_samples(cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    model, calib, _ = cnn
    with pytest.raises(CalibrationError, match="--method auto holds part of --data aside"):
        api.calibrate(model, DataOptions(str(calib), max_samples=10), cache=tmp_path / "c.cache",
                      options=CalibrationOptions(method="auto"))


def test_from_stats_auto_scores_on_other_data_only(cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    model, calib, other = cnn
    api.calibrate(model, DataOptions(str(calib)), cache=tmp_path / "e.cache")
    stats = tmp_path / "e.cache.stats.npz"
    auto = CalibrationOptions(method="auto")
    with pytest.raises(UsageError, match="needs --data"):
        api.calibrate_from_stats(model, stats, cache=tmp_path / "f.cache", options=auto)
    with pytest.raises(UsageError, match="made the statistics"):
        api.calibrate_from_stats(model, stats, cache=tmp_path / "f.cache", options=auto, data=DataOptions(str(calib)))
    with pytest.raises(UsageError, match="only for --method auto"):
        api.calibrate_from_stats(model, stats, cache=tmp_path / "f.cache", data=DataOptions(str(other)))
    out = api.calibrate_from_stats(model, stats, cache=tmp_path / "f.cache", options=auto, data=DataOptions(str(other)))
    assert out.auto is not None and out.auto["scoring_data"] == "separate" and out.auto["held_out"] == 12
    assert out.result.method == "auto" and out.result.num_samples == 40
    assert "scored on 12 samples of --data" in out.message


def test_quant_run_falls_back_to_entropy_on_too_few_samples(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """quant run's default auto needs 16 calibration samples; with fewer the pipeline goes on with
    entropy and says so (quant calibrate --method auto refuses instead: test above)."""
    from quant import api
    from quant.config import DataOptions, EvalOptions

    out = api.run(
        out=tmp_path / "run",
        calib_data=DataOptions("demo:calib", max_samples=12),
        eval_data=DataOptions("demo:eval", max_samples=32, batch_size=32),
        eval_options=EvalOptions(precisions=("fp32", "int8")),
    )
    assert out.calibration.result.method == "entropy" and out.calibration.auto is None
    assert any("needs at least 16 calibration samples" in r.getMessage() for r in caplog.records)


def test_scoring_layout_shares_the_cpus_out_over_the_batches() -> None:
    from quant.calibrators.auto import scoring_layout

    assert scoring_layout(2, 2) == (2, 1)
    assert scoring_layout(2, 1) == (1, 2)  # one batch: one session with every CPU
    assert scoring_layout(16, 2) == (2, 8)
    assert scoring_layout(16, 8) == (4, 4)  # at most MAX_SCORING_WORKERS at once
    assert scoring_layout(1, 4) == (1, 1)


def test_concurrent_scoring_gives_the_scores_of_one_worker() -> None:
    """Batches scored at once on separate workers give bit for bit what one worker gives, in
    feed order; a worker's error reaches the caller."""
    from quant.calibrators.auto import BatchMap

    model, stats, x = _cnn_and_stats()
    table = candidate_ranges(stats)
    feeds = [{"input": x[i : i + 4]} for i in range(0, 16, 4)]
    got = []
    for threads in (1, 2):
        with OutputScorer(model, table["minmax"], feeds, threads=threads) as scorer:
            assert scorer.workers == threads
            amax = {t: float(table["entropy"][t]) for t in scorer.quantized}  # type: ignore[arg-type]
            got.append(scorer.per_sample(amax))
    (s1, n1, a1), (s2, n2, a2) = got
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(n1, n2)
    assert (a1 is None) == (a2 is None)

    def fail(i: int) -> int:
        if i == 2:
            raise CalibrationError("batch 2 failed")
        return i

    pool = BatchMap(2)
    assert pool(lambda i: i * i, range(5)) == [0, 1, 4, 9, 16]
    with pytest.raises(CalibrationError, match="batch 2"):
        pool(fail, range(4))
    pool.close()


def test_the_scorer_reports_a_failure_of_the_reference_or_of_the_qdq_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FP32 reference runs beside the building of the Q/DQ model: an error of either reaches
    the caller, and nothing is left running."""
    import threading

    from quant.calibrators import auto

    model, stats, x = _cnn_and_stats()
    table = candidate_ranges(stats)
    feeds = [{"input": x[:8]}]

    def no_reference(self: object, clean: object, threads: int, given: object) -> None:
        raise CalibrationError("reference failed")

    def no_model(clean: object, amax: object) -> None:
        raise CalibrationError("Q/DQ model failed")

    before = threading.active_count()
    with monkeypatch.context() as m:
        m.setattr(auto.OutputScorer, "_reference", no_reference)
        with pytest.raises(CalibrationError, match="reference failed"):
            OutputScorer(model, table["minmax"], feeds)
    with monkeypatch.context() as m:
        m.setattr(auto, "scale_input_model", no_model)
        with pytest.raises(CalibrationError, match="Q/DQ model failed"):
            OutputScorer(model, table["minmax"], feeds)
    assert threading.active_count() == before
    with OutputScorer(model, table["minmax"], feeds) as scorer:  # and it works without the patches
        assert scorer.reference and scorer.outputs


def test_the_reference_comes_from_the_statistics_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto takes the FP32 outputs of its scoring batches from the statistics pass (no reference
    pass of its own): the same choice, every score equal to the own pass's up to float rounding,
    and the forward passes it records are the evaluations only."""
    from quant.calibrators.auto import auto_calibrate
    from quant.graph.qdq import calibration_tensors

    model = cleanup(conv_bn_relu_cnn())
    x = np.random.default_rng(6).standard_normal((24, 3, 16, 16)).astype(np.float32)
    tensors = calibration_tensors(model, scope="qdq")
    runs = {}
    for reuse in (True, False):
        monkeypatch.setattr(auto_module, "REUSE_REFERENCE", reuse)
        runs[reuse] = auto_calibrate(model, _Feeds(x), tensors, batch_size=4)
    (amax_r, _, n_r, rec_r), (amax_o, _, n_o, rec_o) = runs[True], runs[False]
    assert rec_r.cost["reference"] == "statistics pass" and rec_o.cost["reference"] == "own pass"
    assert rec_r.cost["sample_forwards"] == rec_o.cost["sample_forwards"] - rec_o.held_out
    assert rec_r.choice == rec_o.choice and amax_r == amax_o and n_r == n_o == 24
    assert rec_r.scores.keys() == rec_o.scores.keys()
    for label, score in rec_r.scores.items():
        assert score.sqnr_db == pytest.approx(rec_o.scores[label].sqnr_db, abs=1e-4), label


def _noisy_parts(rng: np.random.Generator, m: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    signal = rng.uniform(1.0, 2.0, size=(m, 1))
    return signal, scale * signal * rng.uniform(0.5, 1.5, size=(m, 1))


def test_bootstrap_shares_are_the_pooled_winners_of_seeded_resamples() -> None:
    from quant.calibrators.auto import _pooled_db, bootstrap_shares

    rng = np.random.default_rng(5)
    m = 16
    parts = {"a": _noisy_parts(rng, m, 0.10), "b": _noisy_parts(rng, m, 0.11), "c": _noisy_parts(rng, m, 0.5)}
    scores = {lab: Score(_pooled_db(*p), parts=p) for lab, p in parts.items()}
    got = bootstrap_shares(scores, seed=3)
    assert got == bootstrap_shares(scores, seed=3)  # seeded
    assert got["resamples"] == auto_module.FIRMNESS_RESAMPLES and got["samples"] == m
    # brute force: the same draws, each resample's winner by the pooled figure (ties: earlier label)
    draws = np.random.default_rng([3, 0xB007]).integers(0, m, size=(auto_module.FIRMNESS_RESAMPLES, m))
    wins = dict.fromkeys(parts, 0)
    for d in draws:
        wins[max(parts, key=lambda lab: _pooled_db(parts[lab][0][d], parts[lab][1][d]))] += 1  # noqa: B023
    assert got["shares"] == {lab: w / len(draws) for lab, w in wins.items()}
    assert sum(got["shares"].values()) == pytest.approx(1.0)
    assert got["shares"]["c"] == 0.0 and 0.0 < got["shares"]["b"] < got["shares"]["a"] < 1.0  # a near tie


def test_bootstrap_shares_of_a_clear_winner_and_of_identical_ranges() -> None:
    from quant.calibrators.auto import _mean_sample_db, _pooled_db, bootstrap_shares

    rng = np.random.default_rng(0)
    clear = _noisy_parts(rng, 12, 0.01)
    worse = (clear[0], clear[1] * 10.0)  # ten times the error on every sample
    scores = {"x": Score(_pooled_db(*worse), parts=worse), "y": Score(_pooled_db(*clear), parts=clear)}
    assert bootstrap_shares(scores)["shares"] == {"x": 0.0, "y": 1.0}
    assert bootstrap_shares(scores, rule="samples")["shares"] == {"x": 0.0, "y": 1.0}
    # the same ranges (one Score shared, as search does): the earlier label wins every tie
    same = {"p": scores["y"], "q": scores["y"]}
    assert bootstrap_shares(same)["shares"] == {"p": 1.0, "q": 0.0}
    # no per-sample figures, or too few samples: nothing to say
    assert bootstrap_shares({"x": Score(1.0), "y": Score(2.0)}) == {}
    few = (clear[0][:3], clear[1][:3])
    assert bootstrap_shares({"x": Score(1.0, parts=few), "y": Score(2.0, parts=few)}) == {}
    # the samples rule resamples each sample's figure as _mean_sample_db computes it
    one = bootstrap_shares({"x": Score(0.0, parts=worse), "y": Score(0.0, parts=clear)}, rule="samples",
                           resamples=1)
    assert one["shares"]["y"] == 1.0 and _mean_sample_db(*clear) > _mean_sample_db(*worse)


def test_the_record_shows_how_firmly_the_samples_back_the_choice() -> None:
    from quant.cache.inspect import render_auto_scores
    from quant.pipeline.calibrate import _auto_message
    from quant.report.html import _method_scores

    rec = AutoRecord(
        choice={"a": "mse"}, candidates=tuple(c.to_dict() for c in CANDIDATES),
        scores={"mse": Score(12.5), "entropy": Score(12.4)}, best_single="mse", score=Score(12.5), searched=1,
        evaluations=2, plan=SearchPlan(2, 0, 2), held_out=16, statistics_samples=18, seed=0,
        firmness={"resamples": 200, "samples": 16, "shares": {"mse": 0.42, "entropy": 0.58}, "firm_share": 0.5},
    )
    assert AutoRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    text = render_auto_scores(rec.to_dict())
    assert "best in %" in text and "200 bootstrap resamples of the 16 scored samples" in text
    assert "mse: 42 %. Uncertain" in text
    assert "mse 12.50 dB, best in 42 % of bootstrap resamples" in _auto_message(rec) and "uncertain" in _auto_message(rec)
    page = _method_scores({"auto": rec.to_dict()})
    assert "best in %" in page and ">42<" in page and "Uncertain" in page
    firm = AutoRecord.from_dict({**rec.to_dict(), "firmness": {**rec.firmness, "shares": {"mse": 0.9, "entropy": 0.1}}})
    assert "Uncertain" not in render_auto_scores(firm.to_dict()) and "uncertain" not in _auto_message(firm)
    # a sidecar written before the record had it: no column, no sentence
    old = {k: v for k, v in rec.to_dict().items() if k != "firmness"}
    assert "best in %" not in render_auto_scores(old) and "best in %" not in _method_scores({"auto": old})
