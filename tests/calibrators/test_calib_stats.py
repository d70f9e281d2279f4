from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.calibrators import stats as stats_mod
from quant.calibrators.stats import StatsAccumulator, StatsCollector, TensorStats, check_num_bins, pow2_ceil
from quant.errors import CacheError, CalibrationError, UsageError


def _collect(*batches: np.ndarray, num_bins: int = 2048) -> TensorStats:
    c = StatsCollector(num_bins)
    for b in batches:
        c.collect("t", b)
    return c.stats()["t"]


def test_pow2_ceil_exact() -> None:
    assert pow2_ceil(1.0) == 1.0
    assert pow2_ceil(1.0000001) == 2.0
    assert pow2_ceil(0.75) == 1.0
    assert pow2_ceil(0.5) == 0.5
    assert pow2_ceil(3.0) == 4.0
    assert pow2_ceil(1e-30) == 2.0**-99
    assert pow2_ceil(2.0**-140) == 2.0**-140


def test_histogram_matches_np_histogram() -> None:
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 3, 17, 19)) * 2.5).astype(np.float32)
    s = _collect(x)
    absmax = float(np.abs(x).max())
    assert s.hist_range == pow2_ceil(absmax)
    expected, _ = np.histogram(np.abs(x), bins=2048, range=(0.0, s.hist_range))
    np.testing.assert_array_equal(s.counts, expected)
    assert s.count == x.size == int(s.counts.sum())
    assert s.min == float(x.min()) and s.max == float(x.max()) and s.absmax == absmax
    assert s.bin_width == s.hist_range / 2048


def test_histogram_over_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_mod, "_CHUNK", 1000)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(10_500).astype(np.float32)
    x[-3] = 40.0  # the last chunk grows the range
    s = StatsCollector(256)
    s.collect("t", x)
    got = s.stats()["t"]
    assert got.hist_range == 64.0
    expected, _ = np.histogram(np.abs(x), bins=256, range=(0.0, 64.0))
    np.testing.assert_array_equal(got.counts, expected)


def test_value_equal_to_range_lands_in_last_bin() -> None:
    s = _collect(np.array([1.0, -0.5, 0.0], dtype=np.float32), num_bins=128)
    assert s.hist_range == 1.0
    assert s.counts[127] == 1 and s.counts[64] == 1 and s.counts[0] == 1


def test_growth_is_exact_and_order_independent() -> None:
    rng = np.random.default_rng(3)
    batches = [
        (rng.standard_normal(3000) * scale).astype(np.float32) for scale in (0.01, 1.0, 300.0, 0.2, 5e4)
    ]
    reference = None
    for perm in itertools.permutations(range(len(batches)), len(batches)):
        if reference is not None and rng.random() > 0.1:  # a sample of the 120 orders keeps it quick
            continue
        got = _collect(*(batches[i] for i in perm))
        if reference is None:
            reference = got
            allx = np.abs(np.concatenate(batches))
            expected, _ = np.histogram(allx, bins=2048, range=(0.0, got.hist_range))
            np.testing.assert_array_equal(got.counts, expected)
        assert got == reference


def test_shards_merge_equals_single_pass() -> None:
    rng = np.random.default_rng(4)
    a = [rng.standard_normal(500).astype(np.float32) * s for s in (1.0, 3.0)]
    b = [rng.standard_normal(500).astype(np.float32) * s for s in (0.001, 80.0)]
    single = StatsCollector()
    for x in a + b:
        single.collect("t", x)
    shard_a, shard_b = StatsCollector(), StatsCollector()
    for x in a:
        shard_a.collect("t", x)
    for x in b:
        shard_b.collect("t", x)
        shard_b.collect("only_b", x)
    merged = StatsCollector()
    merged.merge(shard_b)
    merged.merge(shard_a)
    assert merged.stats()["t"] == single.stats()["t"]
    assert merged.stats()["only_b"] == shard_b.stats()["only_b"]
    assert shard_a.stats()["t"].merge(shard_b.stats()["t"]) == single.stats()["t"]
    assert shard_b.stats()["t"].merge(shard_a.stats()["t"]) == single.stats()["t"]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=0, max_size=40),
        min_size=1,
        max_size=5,
    ),
    st.randoms(use_true_random=False),
)
def test_merge_any_split_any_order(batches: list[list[float]], rnd: object) -> None:
    arrays = [np.array(b, dtype=np.float32) for b in batches]
    whole = _collect(np.concatenate(arrays), num_bins=128)
    order = list(range(len(arrays)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    parts = [_collect(arrays[i], num_bins=128) for i in order]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged == whole
    assert int(merged.counts.sum()) == merged.count == sum(len(b) for b in batches)


def test_zeros_only_then_values() -> None:
    c = StatsCollector(128)
    c.collect("t", np.zeros((2, 5), np.float32))
    s = c.stats()["t"]
    assert s.hist_range == 0.0 and s.absmax == 0.0 and not s.has_range
    assert s.counts[0] == 10 and s.count == 10 and s.min == 0.0 and s.max == 0.0
    c.collect("t", np.array([0.0, 3.0], np.float32))
    s = c.stats()["t"]
    assert s.hist_range == 4.0 and s.counts[0] == 11 and s.counts[96] == 1 and s.count == 12


def test_many_doublings_collapse_to_bin_zero() -> None:
    s = _collect(np.array([1e-6, 2e-6], np.float32), np.array([1e6], np.float32), num_bins=128)
    assert s.hist_range == 2.0**20
    assert s.counts[0] == 2 and s.counts[122] == 1  # 1e6 * 128 / 2**20 = 122.07


def test_dtypes_and_empty() -> None:
    half = _collect(np.array([-1.5, 0.25], np.float16), num_bins=128)
    assert half.absmax == 1.5 and half.min == -1.5
    dbl = _collect(np.array([0.1, -3.0], np.float64), num_bins=128)
    assert dbl.absmax == 3.0 and dbl.min == -3.0 and dbl.max == pytest.approx(0.1)
    ints = _collect(np.array([[-7, 2]], np.int64), num_bins=128)
    assert ints.absmax == 7.0 and ints.hist_range == 8.0 and ints.counts[112] == 1
    empty = _collect(np.zeros((0, 3), np.float32), num_bins=128)
    assert empty.count == 0 and empty.min is None and empty.max is None and not empty.has_range


def test_tiny_values_use_float64_binning() -> None:
    x = np.array([1e-35, 3e-36, -5e-36], np.float32)  # range 2**-116: scale 2**123 overflows float32
    s = _collect(x, num_bins=128)
    assert s.hist_range == pow2_ceil(float(np.float32(1e-35)))
    expected, _ = np.histogram(np.abs(x).astype(np.float64), bins=128, range=(0.0, s.hist_range))
    np.testing.assert_array_equal(s.counts, expected)


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_raises_naming_tensor_and_batch(bad: float, word: str) -> None:
    c = StatsCollector(128)
    c.collect("conv1_out", np.ones(4, np.float32))
    before = c.stats()["conv1_out"]
    x = np.ones(10, np.float32)
    x[7] = bad
    with pytest.raises(CalibrationError) as err:
        c.collect("conv1_out", x, batch_index=3)
    assert str(err.value) == (
        f"tensor 'conv1_out' has {word} values in calibration batch 3; check the input data and "
        "preprocessing (or exclude the tensor)"
    )
    assert c.stats()["conv1_out"] == before  # the failed batch changed nothing


def test_non_finite_default_batch_index_counts_batches() -> None:
    c = StatsCollector(128)
    c.collect("t", np.ones(3, np.float32))
    c.collect("t", np.ones(3, np.float32))
    with pytest.raises(CalibrationError, match="tensor 't' has NaN values in calibration batch 2"):
        c.collect("t", np.array([np.nan], np.float32))


def test_beyond_float32_and_non_numeric() -> None:
    with pytest.raises(
        CalibrationError, match="tensor 'big' has values beyond the float32 range in calibration batch 0"
    ):
        StatsCollector(128).collect("big", np.array([1e300], np.float64))
    with pytest.raises(
        CalibrationError, match="tensor 's' has dtype <U1 in calibration batch 0; only numeric"
    ):
        StatsCollector(128).collect("s", np.array(["a"]))


def test_snapshots_are_independent_and_read_only() -> None:
    c = StatsCollector(128)
    x = np.array([1.0, 2.0], np.float32)
    c.collect("t", x)
    snap = c.stats()["t"]
    x[:] = 100.0  # the collector never keeps the array
    c.collect("t", np.array([0.5], np.float32))
    assert snap.count == 2 and c.stats()["t"].count == 3
    assert snap.absmax == 2.0
    with pytest.raises(ValueError):
        snap.counts[0] = 5


def test_collector_bookkeeping() -> None:
    c = StatsCollector(128)
    c.collect("b", np.ones(2, np.float32))
    c.collect("a", np.ones(2, np.float32))
    assert c.names == ["b", "a"] and list(c) == ["b", "a"] and len(c) == 2 and "a" in c
    c.reset()
    assert c.stats() == {} and len(c) == 0
    restored = StatsCollector.from_stats(_collector_stats())
    assert restored.stats() == _collector_stats()
    assert StatsCollector.from_stats({}).num_bins == 2048


def _collector_stats() -> dict[str, TensorStats]:
    c = StatsCollector(256)
    c.collect("x", np.linspace(-3, 5, 100, dtype=np.float32))
    return c.stats()


def test_memory_does_not_grow_with_samples() -> None:
    acc = StatsAccumulator("t", 128)
    for i in range(50):
        acc.update(np.full(1000, float(i), np.float32))
    assert acc.counts.shape == (128,) and acc.count == 50_000


@pytest.mark.parametrize("bad", [100, 1000, 64, 0, "2048", 2048.0, True])
def test_num_bins_validation(bad: object) -> None:
    with pytest.raises(UsageError, match="--num-bins must be"):
        check_num_bins(bad)
    with pytest.raises(UsageError, match="--num-bins must be"):
        StatsCollector(bad)  # type: ignore[arg-type]


def test_num_bins_message() -> None:
    with pytest.raises(UsageError) as err:
        StatsCollector(1000)
    assert "--num-bins must be a power of two >= 128 (got 1000)" in str(err.value)


def test_merge_different_bins_rejected() -> None:
    a = _collect(np.ones(3, np.float32), num_bins=128)
    b = _collect(np.ones(3, np.float32), num_bins=256)
    with pytest.raises(
        CalibrationError, match="cannot merge statistics with 256 bins into statistics with 128 bins"
    ):
        a.merge(b)
    c = StatsCollector(128)
    with pytest.raises(CalibrationError, match="tensor 't' with 256 bins into a collector with 128 bins"):
        c.merge({"t": b})


def test_to_dict_round_trip_through_json() -> None:
    s = _collect(np.array([-2.5, 0.0, 1.0], np.float32), num_bins=128)
    back = TensorStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    empty = TensorStats.empty(128)
    assert TensorStats.from_dict(empty.to_dict()) == empty


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"counts": [1] * 5}, "field 'counts' must be a list of 128 integers"),
        ({"num_bins": 100}, "field 'num_bins' must be a power of two"),
        ({"count": 99}, "field 'counts' sums to 3, not to 'count' = 99"),
        ({"hist_range": 8.0}, "field 'hist_range' = 8.0 does not fit 'absmax' = 2.5"),
        ({"absmax": "x"}, "field 'absmax' must be a finite number"),
        ({"min": None}, "fields 'min'/'max' must be null exactly when 'count' is 0"),
        ({"count": -1}, "field 'count' must be a non-negative integer"),
    ],
)
def test_from_dict_errors(change: dict[str, object], message: str) -> None:
    d = _collect(np.array([-2.5, 0.0, 1.0], np.float32), num_bins=128).to_dict()
    d.update(change)
    with pytest.raises(CacheError) as err:
        TensorStats.from_dict(d, source="stats.json")
    assert str(err.value).startswith("stats.json: ")
    assert message in str(err.value)


def test_from_dict_missing_field_and_not_object() -> None:
    d = TensorStats.empty(128).to_dict()
    del d["counts"]
    with pytest.raises(CacheError, match="field 'counts' is missing"):
        TensorStats.from_dict(d)
    with pytest.raises(CacheError, match="expected an object"):
        TensorStats.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(CacheError, match="field 'counts' must hold non-negative integers"):
        TensorStats.from_dict(
            {**TensorStats.empty(128).to_dict(), "counts": [-1] + [1] + [0] * 126, "count": 0}
        )
