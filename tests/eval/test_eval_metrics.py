"""quant.eval.metrics against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.errors import DataError, ModelError, ReportError
from quant.eval.metrics import (
    ClassificationAccumulator,
    ClassificationMetrics,
    FidelityAccumulator,
    FidelityMetrics,
    LatencyStats,
    find_classifier_output,
    is_classifier_shape,
    summarize_latency,
)

# ---------------------------------------------------------------- classification


def test_top1_top5_by_hand() -> None:
    logits = np.array(
        [
            [0.1, 0.9, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4: rank 4 -> top-5 hit only
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 5: rank 5 -> miss
        ],
        dtype=np.float32,
    )
    acc = ClassificationAccumulator("logits")
    acc.update(logits, np.array([1, 4, 5]))
    m = acc.result()
    assert (m.num_samples, m.num_labeled, m.num_classes) == (3, 3, 6)
    assert m.top1_correct == 1 and m.top5_correct == 2
    assert m.top1 == pytest.approx(100 / 3)
    assert m.top5 == pytest.approx(200 / 3)
    assert m.agreement is None  # no reference given


def test_ties_break_towards_lower_index_like_argmax() -> None:
    logits = np.zeros((2, 6), dtype=np.float32)  # all classes tie
    acc = ClassificationAccumulator()
    acc.update(logits, np.array([0, 5]))
    m = acc.result()
    # label 0 is first among equals (top-1 hit); label 5 is sixth (outside the top 5).
    assert m.top1_correct == 1
    assert m.top5_correct == 1


def test_nchw_logits_and_column_labels() -> None:
    logits = np.array([[3.0, 1.0, 2.0], [0.0, 0.0, 5.0]], dtype=np.float32).reshape(2, 3, 1, 1)
    acc = ClassificationAccumulator()
    acc.update(logits, np.array([[0], [1]]))
    m = acc.result()
    assert m.top1_correct == 1
    assert m.top5_correct is None and m.top5 is None  # fewer than 5 classes


def test_agreement_streams_over_batches() -> None:
    acc = ClassificationAccumulator()
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    cur = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1]])
    acc.update(cur[:2], None, ref[:2])
    acc.update(cur[2:], None, ref[2:])
    m = acc.result()
    assert (m.num_compared, m.agree_count) == (3, 2)
    assert m.agreement == pytest.approx(200 / 3)
    assert m.top1 is None and m.num_labeled == 0


def test_nan_logits_never_win() -> None:
    logits = np.array([[np.nan, 0.2, 0.1]], dtype=np.float32)
    acc = ClassificationAccumulator()
    acc.update(logits, np.array([1]), np.array([[0.0, 1.0, 0.0]]))
    m = acc.result()
    assert m.top1_correct == 1 and m.agree_count == 1


def test_integer_valued_float_labels_accepted() -> None:
    acc = ClassificationAccumulator()
    acc.update(np.eye(3), np.array([0.0, 1.0, 2.0]))
    assert acc.result().top1_correct == 3


def test_update_does_not_modify_input() -> None:
    logits = np.array([[np.nan, 1.0]], dtype=np.float32)
    ClassificationAccumulator().update(logits, np.array([1]))
    assert np.isnan(logits[0, 0])


def test_label_out_of_range_error() -> None:
    acc = ClassificationAccumulator("prob")
    with pytest.raises(
        DataError, match=r"label 7 \(batch position 1\) is outside the 3 classes of output 'prob'"
    ):
        acc.update(np.eye(3)[:2], np.array([0, 7]))


def test_label_shape_error() -> None:
    with pytest.raises(DataError, match=r"labels have shape \(3,\) but output 'out' has 2 samples"):
        ClassificationAccumulator("out").update(np.eye(3)[:2], np.array([0, 1, 2]))


def test_non_integer_labels_error() -> None:
    with pytest.raises(DataError, match="non-integer"):
        ClassificationAccumulator().update(np.eye(3), np.array([0.5, 1.0, 2.0]))
    with pytest.raises(DataError, match="integer class indices, not <U1"):
        ClassificationAccumulator().update(np.eye(3), np.array(["a", "b", "c"]))


def test_bad_logits_shape_error() -> None:
    with pytest.raises(ModelError, match=r"output 'feat' has shape \(2, 3, 4\); a classifier output must be"):
        ClassificationAccumulator("feat").update(np.zeros((2, 3, 4)))


def test_class_count_change_error() -> None:
    acc = ClassificationAccumulator("logits")
    acc.update(np.zeros((1, 3)))
    with pytest.raises(ModelError, match="has 4 classes in this batch but 3 before"):
        acc.update(np.zeros((1, 4)))


def test_reference_shape_mismatch_error() -> None:
    with pytest.raises(ModelError, match="reference's has shape"):
        ClassificationAccumulator().update(np.zeros((2, 3)), None, np.zeros((2, 4)))


def test_classification_round_trip_and_validation() -> None:
    m = ClassificationMetrics("logits", 10, 6, 10, 7, 9, 10, 8)
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["top1"] == pytest.approx(70.0) and d["agreement"] == pytest.approx(80.0)
    assert ClassificationMetrics.from_dict(d) == m
    d["top1_correct"] = 11
    with pytest.raises(ReportError, match="field 'classification' has inconsistent counts"):
        ClassificationMetrics.from_dict(d)
    del d["num_labeled"]
    with pytest.raises(ReportError, match="field 'classification.num_labeled' is missing"):
        ClassificationMetrics.from_dict(d)


# ---------------------------------------------------------------- classifier detection


def test_is_classifier_shape() -> None:
    f32 = np.dtype(np.float32)
    assert is_classifier_shape((8, 10), f32)
    assert is_classifier_shape((8, 10, 1, 1), f32)
    assert not is_classifier_shape((8, 1), f32)
    assert not is_classifier_shape((8, 10), np.dtype(np.int64))
    assert not is_classifier_shape((8, 10, 2, 2), f32)
    assert not is_classifier_shape((8,), f32)


def test_find_classifier_output() -> None:
    outs: dict[str, np.ndarray] = {
        "idx": np.zeros((2,), np.int64),
        "prob": np.zeros((2, 5), np.float32),
        "emb": np.zeros((2, 8), np.float32),
    }
    assert find_classifier_output(outs) == "prob"
    assert find_classifier_output(outs, "emb") == "emb"
    assert find_classifier_output({"y": np.zeros((2, 3, 3), np.float32)}) is None
    with pytest.raises(
        ModelError,
        match=r"classifier output 'nope' is not an output of the model \(outputs: 'idx', 'prob', 'emb'\)",
    ):
        find_classifier_output(outs, "nope")
    with pytest.raises(
        ModelError, match="output 'idx' has shape \\(2,\\) and dtype int64; a classifier output must be"
    ):
        find_classifier_output(outs, "idx")


# ---------------------------------------------------------------- fidelity


def _hand_fidelity(x: np.ndarray, r: np.ndarray) -> dict[str, float]:
    x = x.astype(np.float64)
    r = r.astype(np.float64)
    per = [
        float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(x, r, strict=True)
    ]
    return {
        "cosine": float(x.ravel() @ r.ravel() / (np.linalg.norm(x) * np.linalg.norm(r))),
        "mean_sample_cosine": float(np.mean(per)),
        "min_sample_cosine": float(np.min(per)),
        "sqnr_db": float(10 * np.log10(np.sum(r**2) / np.sum((r - x) ** 2))),
        "mean_rel_error": float(np.sum(np.abs(x - r)) / np.sum(np.abs(r))),
        "max_abs_error": float(np.max(np.abs(x - r))),
    }


def test_fidelity_by_hand_over_two_batches() -> None:
    r = np.array([[1.0, 2.0, 3.0], [4.0, -5.0, 6.0], [0.5, 0.5, -1.0]], dtype=np.float32)
    x = np.array([[1.1, 2.0, 2.9], [4.0, -4.0, 6.0], [0.5, 0.6, -1.0]], dtype=np.float32)
    acc = FidelityAccumulator("out")
    acc.update(x[:2], r[:2])
    acc.update(x[2:], r[2:])
    m = acc.result()
    expected = _hand_fidelity(x, r)
    for key, value in expected.items():
        assert getattr(m, key) == pytest.approx(value, rel=1e-9), key
    assert (m.num_samples, m.num_elements, m.exact, m.nonfinite) == (3, 9, False, 0)
    assert m.sqnr_value == m.sqnr_db


def test_sqnr_concrete_value() -> None:
    # signal energy 100, noise energy 1 -> 20 dB; relative error 1/10.
    acc = FidelityAccumulator()
    acc.update(np.array([[9.0]]), np.array([[10.0]]))
    m = acc.result()
    assert m.sqnr_db == pytest.approx(20.0)
    assert m.mean_rel_error == pytest.approx(0.1)
    assert m.max_abs_error == pytest.approx(1.0)


def test_identical_outputs_are_exact_and_json_valid() -> None:
    r = np.arange(12, dtype=np.float32).reshape(3, 4)
    acc = FidelityAccumulator("logits")
    acc.update(r, r.copy())
    m = acc.result()
    assert m.exact and m.sqnr_db is None and m.sqnr_value == math.inf
    assert m.cosine == pytest.approx(1.0) and m.mean_rel_error == 0.0 and m.max_abs_error == 0.0
    text = json.dumps(m.to_dict(), allow_nan=False)
    assert FidelityMetrics.from_dict(json.loads(text)) == m


def test_zero_reference() -> None:
    acc = FidelityAccumulator()
    acc.update(np.ones((2, 2)), np.zeros((2, 2)))
    m = acc.result()
    assert m.sqnr_db is None and not m.exact and m.sqnr_value == -math.inf
    assert m.mean_rel_error is None
    assert m.cosine == 0.0 and m.max_abs_error == 1.0

    both = FidelityAccumulator()
    both.update(np.zeros((2, 2)), np.zeros((2, 2)))
    mb = both.result()
    assert mb.exact and mb.cosine == 1.0 and mb.mean_rel_error == 0.0


def test_integer_outputs_cast_to_float64() -> None:
    # int32 squares of 100000 overflow int32; the accumulator must cast first.
    r = np.array([[100000, 0]], dtype=np.int32)
    x = np.array([[100001, 0]], dtype=np.int32)
    acc = FidelityAccumulator()
    acc.update(x, r)
    m = acc.result()
    assert m.sqnr_db == pytest.approx(100.0)  # 10*log10(1e10 / 1)
    assert m.max_abs_error == 1.0


def test_scalar_and_1d_outputs() -> None:
    acc = FidelityAccumulator()
    acc.update(np.array(2.0), np.array(2.0))
    acc.update(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    m = acc.result()
    assert m.num_samples == 3 and m.exact


def test_nonfinite_outputs_make_metrics_none() -> None:
    acc = FidelityAccumulator("y")
    acc.update(np.array([[1.0, np.inf], [np.nan, 1.0]]), np.ones((2, 2)))
    m = acc.result()
    assert m.nonfinite == 2
    assert m.cosine is None and m.sqnr_db is None and m.max_abs_error is None
    assert m.sqnr_value == -math.inf
    json.dumps(m.to_dict(), allow_nan=False)


def test_fidelity_shape_mismatch_error() -> None:
    with pytest.raises(
        ModelError, match=r"output 'y' has shape \(2, 3\) but the reference's has shape \(2, 4\)"
    ):
        FidelityAccumulator("y").update(np.zeros((2, 3)), np.zeros((2, 4)))


def test_fidelity_from_dict_type_error() -> None:
    d = FidelityMetrics("y", 1, 1, 1.0, 1.0, 1.0, None, True, 0.0, 0.0).to_dict()
    d["exact"] = "yes"
    with pytest.raises(ReportError, match="field 'fid.exact' should be true or false but is string"):
        FidelityMetrics.from_dict(d, "fid")


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    splits=st.lists(st.integers(1, 6), min_size=1, max_size=5),
)
def test_fidelity_is_independent_of_batching(seed: int, splits: list[int]) -> None:
    rng = np.random.default_rng(seed)
    n = sum(splits)
    r = rng.normal(size=(n, 3, 2)).astype(np.float32)
    x = (r + 0.1 * rng.normal(size=r.shape)).astype(np.float32)
    one = FidelityAccumulator()
    one.update(x, r)
    many = FidelityAccumulator()
    start = 0
    for k in splits:
        many.update(x[start : start + k], r[start : start + k])
        start += k
    a, b = one.result(), many.result()
    for key in (
        "cosine",
        "mean_sample_cosine",
        "min_sample_cosine",
        "sqnr_db",
        "mean_rel_error",
        "max_abs_error",
    ):
        assert getattr(a, key) == pytest.approx(getattr(b, key), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- latency


def test_summarize_latency_drops_partial_last_batch() -> None:
    stats = summarize_latency([0.010, 0.030, 0.020, 0.001], [8, 8, 8, 3], 8)
    assert stats is not None
    assert stats.num_batches == 3 and stats.num_samples == 24
    assert stats.mean_ms == pytest.approx(20.0)
    assert stats.median_ms == pytest.approx(20.0)
    assert (stats.min_ms, stats.max_ms) == (pytest.approx(10.0), pytest.approx(30.0))
    assert stats.throughput == pytest.approx(24 / 0.060)
    assert LatencyStats.from_dict(stats.to_dict()) == stats


def test_summarize_latency_only_partial_and_empty() -> None:
    only = summarize_latency([0.002], [3], 8)
    assert only is not None and only.num_samples == 3 and only.throughput == pytest.approx(1500.0)
    assert summarize_latency([], [], 8) is None
