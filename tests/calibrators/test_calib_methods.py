from __future__ import annotations

import numpy as np
import pytest
from calib_fixtures import brute_force_mse, reference_entropy_bin

from quant.calibrators.methods import (
    CalibConfig,
    amax_entropy,
    amax_for,
    amax_minmax,
    amax_mse,
    amax_percentile,
    compute_amax,
    entropy_divergences,
    mse_errors,
    select_entropy_bin,
)
from quant.calibrators.stats import StatsCollector, TensorStats
from quant.errors import CacheError, UsageError


def _stats(x: np.ndarray, num_bins: int = 2048) -> TensorStats:
    c = StatsCollector(num_bins)
    c.collect("t", x)
    return c.stats()["t"]


def _hist(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    if kind == "random":
        return rng.integers(0, 1000, n)
    if kind == "sparse":
        h = rng.integers(0, 30, n)
        h[rng.random(n) < 0.6] = 0
        return h
    if kind == "gauss-tail":
        x = np.abs(rng.standard_normal(200_000))
        x[:20] *= 15
        h, _ = np.histogram(x, bins=n, range=(0, x.max()))
        return h
    if kind == "huge":  # counts near 1e12: checks the float64 cancellation in the prefix-sum form
        h = rng.integers(0, 10**12, n)
        h[rng.random(n) < 0.2] = 0
        return h
    if kind == "empty-tail":
        h = rng.integers(0, 500, n)
        h[n // 2 + 3 :] = 0
        return h
    raise AssertionError(kind)


# ---- entropy: vectorised == loop reference --------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "n", "seed"),
    [
        ("random", 300, 0),
        ("sparse", 256, 1),
        ("gauss-tail", 512, 2),
        ("empty-tail", 320, 3),
        ("sparse", 200, 4),
        ("huge", 260, 5),
    ],
)
def test_entropy_matches_loop_reference(kind: str, n: int, seed: int) -> None:
    h = _hist(np.random.default_rng(seed), n, kind)
    cand, kl = entropy_divergences(h)
    ref_i, ref_kl = reference_entropy_bin(h)
    np.testing.assert_array_equal(cand, np.arange(128, n + 1))
    np.testing.assert_array_equal(np.isinf(kl), np.isinf(ref_kl))
    finite = np.isfinite(ref_kl)
    np.testing.assert_allclose(kl[finite], ref_kl[finite], rtol=1e-9, atol=1e-12)
    assert select_entropy_bin(cand, kl) == ref_i


def test_entropy_adversarial_all_mass_in_one_bin() -> None:
    h = np.zeros(512, np.int64)
    h[300] = 1000
    cand, kl = entropy_divergences(h)
    ref_i, ref_kl = reference_entropy_bin(h)
    np.testing.assert_array_equal(np.isinf(kl), np.isinf(ref_kl))
    # every candidate is a perfect fit (KL 0) or impossible (inf): tie -> the largest bin
    assert ref_i == 512 and select_entropy_bin(cand, kl) == 512
    # capped at absmax: a threshold above the largest value only wastes resolution
    assert amax_entropy(h, 0.01, absmax=3.005) == 3.005
    assert amax_entropy(h, 0.01) == pytest.approx(5.12)


def test_entropy_ties_go_to_larger_bin() -> None:
    h = np.full(256, 7, np.int64)  # uniform: KL 0 at every candidate whose levels hold equal bins
    cand, kl = entropy_divergences(h)
    ref_i, _ = reference_entropy_bin(h)
    assert select_entropy_bin(cand, kl) == ref_i == 256
    # an explicit near tie within the tolerance also goes to the larger candidate
    assert select_entropy_bin(np.array([128, 129, 130]), np.array([0.5, 0.5 + 1e-13, 0.7])) == 129
    assert select_entropy_bin(np.array([128, 129, 130]), np.array([0.5, 0.5 + 1e-6, 0.7])) == 128


def test_entropy_only_zeros_and_few_bins_fall_back_to_absmax() -> None:
    zeros = np.zeros(2048, np.int64)
    zeros[0] = 50
    assert amax_entropy(zeros, 0.1, absmax=0.05) == 0.05
    assert amax_entropy(np.zeros(2048, np.int64), 0.1) == 0.0
    low = np.zeros(2048, np.int64)
    low[:100] = 5  # last non-empty bin 99 < 128
    assert amax_entropy(low, 0.5, absmax=49.7) == 49.7
    assert amax_entropy(low, 0.5) == 50.0  # without absmax: the upper edge of the last non-empty bin
    few = np.ones(64, np.int64)
    assert amax_entropy(few, 1.0, absmax=63.5) == 63.5
    cand, kl = entropy_divergences(few)
    assert cand.size == 0 and kl.size == 0


def test_entropy_last_bin_exactly_start() -> None:
    h = np.zeros(256, np.int64)
    h[:129] = np.arange(1, 130)
    ref_i, _ = reference_entropy_bin(h)
    assert amax_entropy(h, 1.0) == float(ref_i)


def test_entropy_clips_gaussian_with_outliers() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(400_000).astype(np.float32)
    x[:40] = rng.uniform(20, 30, 40)
    s = _stats(x)
    amax = amax_entropy(s.counts, s.bin_width, absmax=s.absmax)
    assert 2.0 < amax < 8.0 < s.absmax


# ---- minmax, percentile ------------------------------------------------------------------


def test_minmax_and_percentile_uniform() -> None:
    rng = np.random.default_rng(7)
    x = rng.uniform(-1.0, 1.0, 500_000).astype(np.float32)
    s = _stats(x)
    assert amax_minmax(s) == float(np.abs(x).max()) == pytest.approx(1.0, abs=1e-4)
    p99 = amax_percentile(s.counts, s.bin_width, 99.0, absmax=s.absmax)
    assert p99 == pytest.approx(0.99, abs=2e-3)
    assert p99 >= np.percentile(np.abs(x), 99.0)  # the upper bin edge never clips that fraction
    assert amax_percentile(s.counts, s.bin_width, 100.0, absmax=s.absmax) == s.absmax


def test_percentile_definition_on_a_small_histogram() -> None:
    h = np.zeros(128, np.int64)
    h[[0, 10, 20, 30]] = [50, 30, 15, 5]
    assert amax_percentile(h, 0.5, 50.0) == 0.5  # cumulative reaches 50 % in bin 0 -> its upper edge
    assert amax_percentile(h, 0.5, 50.01) == 5.5
    assert amax_percentile(h, 0.5, 95.0) == 10.5
    assert amax_percentile(h, 0.5, 95.0, absmax=7.0) == 7.0
    assert amax_percentile(h, 0.5, 100.0) == 15.5
    assert amax_percentile(np.zeros(128, np.int64), 0.5, 99.0, absmax=0.0) == 0.0


@pytest.mark.parametrize("p", [0.0, -1.0, 100.5])
def test_percentile_out_of_range(p: float) -> None:
    with pytest.raises(UsageError, match=r"--percentile must be in \(0, 100\]"):
        amax_percentile(np.ones(128, np.int64), 1.0, p)


# ---- mse ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "n", "seed"),
    [
        ("random", 300, 8),
        ("sparse", 256, 9),
        ("gauss-tail", 700, 10),
        ("empty-tail", 2048, 11),
        ("huge", 300, 14),
    ],
)
def test_mse_matches_brute_force(kind: str, n: int, seed: int) -> None:
    h = _hist(np.random.default_rng(seed), n, kind)
    width = 0.013
    amaxes, err = mse_errors(h, width)
    ref_amax, ref_err = brute_force_mse(h, width)
    np.testing.assert_allclose(amaxes, ref_amax, rtol=1e-12)
    np.testing.assert_allclose(err, ref_err, rtol=1e-9, atol=1e-18)
    chosen = amax_mse(h, width)
    best = ref_err.min()
    assert ref_err[np.flatnonzero(np.isclose(ref_amax, chosen, rtol=1e-12))[0]] <= best * (1 + 1e-8)


def test_mse_rounding_ties_half_to_even() -> None:
    # i = 129: the centre of bin 64 sits exactly half-way between levels 63 and 64 -> level 64
    h = np.zeros(256, np.int64)
    h[64] = 10
    h[200] = 1
    _, err = mse_errors(h, 1.0)
    _, ref = brute_force_mse(h, 1.0)
    np.testing.assert_allclose(err, ref, rtol=1e-9)


def _raw_int8_mse(x: np.ndarray, amax: float) -> float:
    scale = amax / 127
    q = np.clip(np.round(x / scale), -127, 127) * scale
    return float(np.mean((x - q) ** 2))


def test_mse_clips_gaussian_with_outliers() -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal(300_000).astype(np.float32)
    x[:3] = [22.0, 25.0, 30.0]
    s = _stats(x)
    amax = amax_mse(s.counts, s.bin_width, absmax=s.absmax)
    assert amax < 0.7 * s.absmax
    # independent check on the raw samples: a grid search of the true quantization MSE
    grid = np.arange(2.0, 30.25, 0.25)
    best = min(_raw_int8_mse(x, a) for a in grid)
    assert _raw_int8_mse(x, amax) <= best * 1.01


def test_mse_fallbacks() -> None:
    assert amax_mse(np.zeros(2048, np.int64), 1.0, absmax=0.0) == 0.0
    assert amax_mse(np.ones(64, np.int64), 1.0, absmax=60.0) == 60.0
    h = np.zeros(256, np.int64)
    h[255] = 3
    # centre 255.5: amax 255 (clipped by 0.5) and 256 (rounded to 256) tie -> the smaller amax
    assert amax_mse(h, 1.0) == 255.0
    assert amax_mse(h, 1.0, absmax=254.9) == 254.9  # capped at absmax


# ---- config and compute_amax -------------------------------------------------------------


def test_config_defaults_params_and_round_trip() -> None:
    cfg = CalibConfig()
    assert (cfg.method, cfg.percentile, cfg.num_bins) == ("entropy", 99.99, 2048)
    assert cfg.params() == {"num_bins": 2048}
    pct = CalibConfig("percentile", percentile=99)
    assert pct.percentile == 99.0 and isinstance(pct.percentile, float)
    assert pct.params() == {"num_bins": 2048, "percentile": 99.0}
    assert CalibConfig.from_dict(pct.to_dict()) == pct
    assert CalibConfig.from_dict({"method": "mse"}) == CalibConfig("mse")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "kl"}, "--method must be one of entropy, minmax, percentile, mse (got 'kl')"),
        ({"percentile": 0.0}, "--percentile must be in (0, 100] (got 0.0)"),
        ({"percentile": 100.01}, "--percentile must be in (0, 100] (got 100.01)"),
        ({"percentile": float("nan")}, "--percentile must be a number in (0, 100]"),
        ({"percentile": "99"}, "--percentile must be a number in (0, 100] (got '99')"),
        ({"num_bins": 100}, "--num-bins must be a power of two >= 128 (got 100)"),
        ({"num_bins": 64}, "--num-bins must be a power of two >= 128 (got 64)"),
    ],
)
def test_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as err:
        CalibConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_config_from_dict_errors() -> None:
    with pytest.raises(CacheError, match="calibration config has unknown field 'bins'"):
        CalibConfig.from_dict({"bins": 3})
    with pytest.raises(CacheError, match="calibration config must be an object"):
        CalibConfig.from_dict(["entropy"])  # type: ignore[arg-type]


def test_compute_amax_all_methods_and_no_range() -> None:
    rng = np.random.default_rng(13)
    c = StatsCollector()
    relu = np.maximum(rng.standard_normal(100_000), 0).astype(np.float32)
    c.collect("relu", relu)
    c.collect("zeros", np.zeros(1000, np.float32))
    c.collect("zeros", np.zeros(10, np.float32))
    stats = c.stats()
    for method in ("entropy", "minmax", "percentile", "mse"):
        out = compute_amax(stats, CalibConfig(method))
        assert out["zeros"] is None
        amax = out["relu"]
        assert amax is not None and 0 < amax <= stats["relu"].absmax
    assert compute_amax(stats, CalibConfig("minmax"))["relu"] == float(relu.max())
    assert amax_for(TensorStats.empty(), CalibConfig()) is None
