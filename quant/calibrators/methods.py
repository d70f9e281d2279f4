"""The four amax methods: pure NumPy functions from collected statistics to a clipping range.

Every histogram method takes the |x| histogram ``counts`` (int64, bin ``b`` covering
``[b * bin_width, (b + 1) * bin_width)``), the ``bin_width`` and keyword parameters, and returns
a float. The statistics come from :mod:`quant.calibrators.stats`, whose histogram ranges are powers
of two: up to half of the bins above the largest value can be empty. A threshold above the largest
``|x|`` seen (``absmax``) only wastes INT8 resolution, so every method caps its result at
``absmax`` when it is given (TensorRT's own histogram ends at ``max|x|``, so capping keeps the
methods comparable to it).

All methods share the same statistics, so the method can be changed after collection.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant.calibrators.stats import DEFAULT_NUM_BINS, TensorStats, check_num_bins
from quant.errors import CacheError, UsageError

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("entropy", "minmax", "percentile", "mse")
DEFAULT_PERCENTILE = 99.99

# Entropy: 8-bit signed quantization of |x| has 128 levels; candidate thresholds start at bin 128.
ENTROPY_LEVELS = 128
START_BIN = 128
# MSE: symmetric INT8 has 127 positive levels (q in [-127, 127]).
MSE_LEVELS = 127

# Two KL divergences closer than this are a tie (broken towards the larger threshold). The
# vectorised KL has absolute rounding errors around 1e-14 (sums of c*log(c) divided by the total);
# differences below 1e-10 nats carry no information about the distribution.
_KL_ATOL = 1e-10
_KL_RTOL = 1e-9
# Two MSEs within this relative distance are a tie (broken towards the smaller amax).
_MSE_RTOL = 1e-9


# --------------------------------------------------------------------------------------------
# entropy (TensorRT EntropyCalibration2 as re-implemented by pytorch-quantization)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _entropy_level_bounds(num_bins: int, start_bin: int, levels: int) -> np.ndarray:
    """``lo[j, k]`` = first bin of level ``k`` for candidate ``i = start_bin + j``; ``lo[j, levels] = i``.

    Bin ``b < i`` belongs to level ``floor(b * levels / i)`` (what ``np.digitize`` over
    ``linspace(0, i, levels + 1)`` gives), so level ``k`` starts at ``ceil(k * i / levels)``.
    """
    i = np.arange(start_bin, num_bins + 1, dtype=np.int64)[:, None]
    k = np.arange(levels + 1, dtype=np.int64)[None, :]
    lo = -((-k * i) // levels)
    lo.setflags(write=False)
    return lo


@functools.lru_cache(maxsize=8)
def _entropy_level_ranges(num_bins: int, start_bin: int, levels: int) -> tuple[np.ndarray, int]:
    """Every (candidate, level) as an index into a table of distinct bin ranges, and the widest range.

    Level ``k`` of candidate ``i`` is the bin range ``[lo, lo + w)`` with ``w`` at most
    ``ceil(num_bins / levels)`` (16 for 2048 bins). There are only ``num_bins x w_max`` distinct
    ranges but ``candidates x levels`` (about 246k) uses of them, so a per-range quantity is
    computed once per range and gathered: ``index[j, k] = (w - 1) * num_bins + lo``.
    """
    lo = _entropy_level_bounds(num_bins, start_bin, levels)
    width = np.diff(lo, axis=1)
    index = (np.maximum(width, 1) - 1) * num_bins + lo[:, :-1]
    # an empty level (width 0, only when a candidate has fewer bins than levels) must add 0:
    # point it at a dedicated zero slot past the table
    w_max = int(width.max())
    index[width == 0] = w_max * num_bins
    index.setflags(write=False)
    return index, w_max


def _xlogx(x: np.ndarray) -> np.ndarray:
    """Elementwise x * log(x) with 0 log 0 = 0."""
    out = np.zeros_like(x, dtype=np.float64)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def entropy_divergences(
    counts: np.ndarray, *, start_bin: int = START_BIN, levels: int = ENTROPY_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """KL(P || Q) for every candidate threshold bin ``i`` in ``start_bin .. len(counts)``.

    Returns ``(candidates, kl)``. Semantics (pytorch-quantization's ``_compute_amax_entropy``):
    bin 0 is first set to bin 1's count (the spike at zero); P = the first ``i`` bins with the
    counts of all bins beyond ``i`` added to bin ``i - 1``; Q = those ``i`` bins merged into
    ``levels`` levels (bin ``b`` -> level ``floor(b * levels / i)``), each level's total spread
    evenly over the level's non-empty bins (empty bins stay 0); P and Q are normalised separately;
    0 log 0 = 0 and P > 0 where Q = 0 gives infinity.

    Vectorised over all candidates with prefix sums, in float64. With ``S`` the total, ``C`` the
    cumulative counts, ``T_i = S - C[i]`` the tail beyond ``i``, ``L_k`` / ``m_k`` the total and
    the number of non-empty bins of level ``k``::

        KL_i = (sum P log P) / S - log S + log C[i] - (sum_k L_k log(L_k / m_k) + T_i log Q_{i-1}) / S

    where ``sum P log P`` = prefix sum of ``c log c`` up to ``i - 1`` plus the last (tail-laden)
    bin's term, and ``Q_{i-1} = L_last / m_last``. Infinity exactly when bin ``i - 1`` is empty
    and the tail is not.
    """
    hist = np.asarray(counts)
    n = hist.shape[0]
    if n < start_bin or n < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    c = hist.astype(np.float64)
    c[0] = c[1]
    cum = np.zeros(n + 1)
    np.cumsum(c, out=cum[1:])
    nonempty = np.zeros(n + 1)
    np.cumsum(c > 0, out=nonempty[1:])
    cum_clogc = np.zeros(n + 1)
    np.cumsum(_xlogx(c), out=cum_clogc[1:])
    total = cum[n]
    cand = np.arange(start_bin, n + 1, dtype=np.int64)
    if total <= 0:
        return cand, np.zeros(cand.shape[0])

    tail = total - cum[cand]
    last = c[cand - 1]
    sum_plogp = cum_clogc[cand - 1] + _xlogx(last + tail)

    # sum_k L_k log(L_k / m_k): computed once per distinct bin range [a, a + w), then gathered.
    # Counts are integers, so a range's sum is 0 or >= 1 and it has a non-empty bin exactly when
    # its sum is > 0: max(., 1) makes the empty ranges' terms 0 * log(1) without masking.
    index, w_max = _entropy_level_ranges(n, start_bin, levels)
    table = np.zeros(w_max * n + 1)
    for w in range(1, w_max + 1):
        range_sum = cum[w:] - cum[:-w]  # ranges starting at a = 0 .. n - w
        range_nonempty = nonempty[w:] - nonempty[:-w]
        row = table[(w - 1) * n : (w - 1) * n + n + 1 - w]
        np.divide(np.maximum(range_sum, 1.0), np.maximum(range_nonempty, 1.0), out=row)
        np.log(row, out=row)
        row *= range_sum
    sum_llogq = table[index].sum(axis=1)
    # T_i log Q_{i-1}: bin i - 1 lies in the last level, whose Q per non-empty bin is L / m
    lo_last = _entropy_level_bounds(n, start_bin, levels)[:, -2]
    last_sum = cum[cand] - cum[lo_last]
    last_nonempty = np.maximum(nonempty[cand] - nonempty[lo_last], 1.0)
    tail_term = tail * np.log(np.maximum(last_sum, 1.0) / last_nonempty)  # 0 when the tail is empty
    with np.errstate(divide="ignore"):
        log_ci = np.log(cum[cand])
    kl = sum_plogp / total - math.log(total) + log_ci - (sum_llogq + tail_term) / total
    kl[(last == 0) & (tail > 0)] = np.inf  # P > 0 where Q = 0 (also covers C[i] == 0)
    # KL >= 0 mathematically; clamp rounding noise below zero
    np.maximum(kl, 0.0, out=kl)
    return cand, kl


def select_entropy_bin(candidates: np.ndarray, kl: np.ndarray) -> int:
    """The candidate with the smallest KL; ties (within ``_KL_ATOL + _KL_RTOL * min``) go to the larger bin."""
    best = float(np.min(kl))
    tied = np.flatnonzero(kl <= best + _KL_ATOL + _KL_RTOL * abs(best))
    return int(candidates[tied[-1]])


def _fallback(counts: np.ndarray, bin_width: float, absmax: float | None) -> float:
    if absmax is not None:
        return float(absmax)
    nonzero = np.flatnonzero(counts)
    return float((nonzero[-1] + 1) * bin_width) if nonzero.size else 0.0


def amax_entropy(
    counts: np.ndarray,
    bin_width: float,
    *,
    absmax: float | None = None,
    start_bin: int = START_BIN,
    levels: int = ENTROPY_LEVELS,
) -> float:
    """amax minimising KL(P || Q) (TensorRT EntropyCalibration2 semantics, see :func:`entropy_divergences`).

    amax = ``i * bin_width`` for the chosen bin ``i``, capped at ``absmax``. Fallback: when the
    histogram's last non-empty bin is below ``start_bin`` (too few occupied bins for the
    divergence to mean anything; with our power-of-two ranges this only happens for very few bins)
    amax = ``absmax`` (or, without it, the upper edge of the last non-empty bin).
    """
    hist = np.asarray(counts)
    nonzero = np.flatnonzero(hist)
    if nonzero.size == 0 or nonzero[-1] < start_bin:
        return _fallback(hist, bin_width, absmax)
    cand, kl = entropy_divergences(hist, start_bin=start_bin, levels=levels)
    amax = select_entropy_bin(cand, kl) * bin_width
    return float(min(amax, absmax)) if absmax is not None else float(amax)


# --------------------------------------------------------------------------------------------
# minmax, percentile
# --------------------------------------------------------------------------------------------


def amax_minmax(stats: TensorStats) -> float:
    """The running max of |x|: exact, not taken from the histogram."""
    return float(stats.absmax)


def amax_percentile(
    counts: np.ndarray,
    bin_width: float,
    percentile: float = DEFAULT_PERCENTILE,
    *,
    absmax: float | None = None,
) -> float:
    """The |x| at ``percentile`` % of the histogram mass.

    Defined as the upper edge of the first bin where the cumulative count reaches
    ``percentile / 100`` of the total (so the result never clips that fraction), capped at
    ``absmax``. ``percentile = 100`` gives the upper edge of the last non-empty bin (then absmax).
    """
    if not 0.0 < percentile <= 100.0:
        raise UsageError(f"--percentile must be in (0, 100] (got {percentile})")
    hist = np.asarray(counts)
    cdf = np.cumsum(hist, dtype=np.int64)
    total = int(cdf[-1]) if cdf.size else 0
    if total == 0:
        return _fallback(hist, bin_width, absmax)
    target = total * (percentile / 100.0)
    idx = min(int(np.searchsorted(cdf, target, side="left")), hist.shape[0] - 1)
    amax = (idx + 1) * bin_width
    return float(min(amax, absmax)) if absmax is not None else float(amax)


# --------------------------------------------------------------------------------------------
# mse
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _mse_level_bounds(num_bins: int, start_bin: int, levels: int) -> np.ndarray:
    """``B[j, k]`` = first bin whose centre quantizes to level >= ``k`` for amax = ``i * bin_width``.

    In bin-width units a centre is ``b + 0.5`` and the step is ``i / levels``; the level is
    ``round_half_even((2b + 1) * levels / (2i))`` clipped to ``levels``. Level >= k holds when
    ``levels * (2b + 1) > (2k - 1) * i``, or at equality when ``k`` is even (round half to even,
    as ONNX QuantizeLinear rounds). Column 0 is 0 and column ``levels + 1`` is ``num_bins``, so
    the last level also takes every clipped bin.
    """
    i = np.arange(start_bin, num_bins + 1, dtype=np.int64)[:, None]
    k = np.arange(1, levels + 1, dtype=np.int64)[None, :]
    t = (2 * k - 1) * i
    first = (t - levels) // (2 * levels) + 1
    tie = ((t - levels) % (2 * levels) == 0) & (k % 2 == 0)
    first = np.minimum(first - tie, num_bins)
    bounds = np.empty((i.shape[0], levels + 2), dtype=np.int64)
    bounds[:, 0] = 0
    bounds[:, 1:-1] = first
    bounds[:, -1] = num_bins
    bounds.setflags(write=False)
    return bounds


def mse_errors(
    counts: np.ndarray, bin_width: float, *, start_bin: int = START_BIN, levels: int = MSE_LEVELS
) -> tuple[np.ndarray, np.ndarray]:
    """Expected squared error of symmetric INT8 quantization for every candidate amax.

    Candidates are the bin edges ``i * bin_width`` for ``i`` in ``start_bin .. len(counts)``;
    values are the bin centres; quantization is ``clip(round(x / s), 0, levels) * s`` with
    ``s = amax / levels`` (the sign is symmetric and drops out). Vectorised with prefix sums of
    ``c``, ``c v`` and ``c v^2``: per candidate only the ``levels`` level boundaries are looked up
    (no candidates x bins matrix, so no chunking is needed). Rounding error is about 1e-11
    relative to the MSE, far below the differences between candidates. Returns ``(amax_candidates, mse)``; mse in squared input units
    per element.
    """
    hist = np.asarray(counts)
    n = hist.shape[0]
    if n < start_bin:
        return np.zeros(0), np.zeros(0)
    c = hist.astype(np.float64)
    v = np.arange(n, dtype=np.float64) + 0.5
    cum0 = np.zeros(n + 1)
    cum1 = np.zeros(n + 1)
    cum2 = np.zeros(n + 1)
    np.cumsum(c, out=cum0[1:])
    np.cumsum(c * v, out=cum1[1:])
    np.cumsum(c * v * v, out=cum2[1:])
    total = cum0[n]
    cand = np.arange(start_bin, n + 1, dtype=np.int64)
    if total <= 0:
        return cand * bin_width, np.zeros(cand.shape[0])
    # Sum over levels k of sum_{b in level k} c_b (v_b - k s)^2, with s = i / levels, expanded and
    # summed by parts so that only the prefix sums at the level boundaries B_1..B_levels are needed:
    #   err = C2[n] - 2 s (levels C1[n] - sum_k C1[B_k]) + s^2 (levels^2 C0[n] - sum_k (2k - 1) C0[B_k])
    inner = _mse_level_bounds(n, start_bin, levels)[:, 1:-1]
    weights = 2.0 * np.arange(1, levels + 1, dtype=np.float64) - 1.0
    s = cand / levels
    lin = levels * cum1[n] - cum1[inner].sum(axis=1)
    quad = levels * levels * cum0[n] - cum0[inner] @ weights
    err = cum2[n] - 2.0 * s * lin + s * s * quad
    np.maximum(err, 0.0, out=err)
    return cand * bin_width, err * (bin_width * bin_width) / total


def amax_mse(
    counts: np.ndarray,
    bin_width: float,
    *,
    absmax: float | None = None,
    start_bin: int = START_BIN,
    levels: int = MSE_LEVELS,
) -> float:
    """amax minimising the expected squared INT8 quantization error over the histogram.

    Candidates and error model as in :func:`mse_errors`; ties (within a relative 1e-9) go to the
    smaller amax (finer resolution). Capped at ``absmax``; falls back to ``absmax`` (or the upper
    edge of the last non-empty bin) when there are fewer than ``start_bin`` bins or no data.
    """
    hist = np.asarray(counts)
    if hist.shape[0] < start_bin or not hist.any():
        return _fallback(hist, bin_width, absmax)
    amaxes, err = mse_errors(hist, bin_width, start_bin=start_bin, levels=levels)
    best = float(np.min(err))
    j = int(np.flatnonzero(err <= best * (1.0 + _MSE_RTOL))[0])
    amax = float(amaxes[j])
    return min(amax, absmax) if absmax is not None else amax


# --------------------------------------------------------------------------------------------
# configuration and the per-model entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibConfig:
    """How to turn statistics into ranges: the method and its parameters.

    ``method``: "entropy" (TensorRT's recommended EntropyCalibration2, the default), "minmax",
    "percentile" or "mse". ``percentile`` (0 < p <= 100) is used by "percentile" only.
    ``num_bins`` (a power of two >= 128) is the histogram resolution used while collecting.
    """

    method: str = "entropy"
    percentile: float = DEFAULT_PERCENTILE
    num_bins: int = DEFAULT_NUM_BINS

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method must be one of {', '.join(METHODS)} (got {self.method!r})")
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
            raise UsageError(f"--percentile must be a number in (0, 100] (got {p!r})")
        if not 0.0 < p <= 100.0:
            raise UsageError(f"--percentile must be in (0, 100] (got {p}); e.g. 99.99")
        object.__setattr__(self, "percentile", float(p))
        object.__setattr__(self, "num_bins", check_num_bins(self.num_bins))

    def params(self) -> dict[str, Any]:
        """The parameters that matter for this method (for results and reports)."""
        params: dict[str, Any] = {"num_bins": self.num_bins}
        if self.method == "percentile":
            params["percentile"] = self.percentile
        return params

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "percentile": self.percentile, "num_bins": self.num_bins}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults; unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise CacheError(f"calibration config must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"method", "percentile", "num_bins"})
        if unknown:
            raise CacheError(
                f"calibration config has unknown field '{unknown[0]}'; expected method, percentile, num_bins"
            )
        return cls(
            method=data.get("method", "entropy"),
            percentile=data.get("percentile", DEFAULT_PERCENTILE),
            num_bins=data.get("num_bins", DEFAULT_NUM_BINS),
        )


def amax_for(stats: TensorStats, config: CalibConfig) -> float | None:
    """amax of one tensor, or None when it has no range (every value seen was zero)."""
    if not stats.has_range:
        return None
    width = stats.bin_width
    if config.method == "minmax":
        amax = amax_minmax(stats)
    elif config.method == "entropy":
        amax = amax_entropy(stats.counts, width, absmax=stats.absmax)
    elif config.method == "percentile":
        amax = amax_percentile(stats.counts, width, config.percentile, absmax=stats.absmax)
    else:
        amax = amax_mse(stats.counts, width, absmax=stats.absmax)
    return amax if amax > 0.0 else None


def compute_amax(stats: Mapping[str, TensorStats], config: CalibConfig) -> dict[str, float | None]:
    """amax per tensor with ``config.method``; None marks "no range" (all zeros, amax 0).

    Tensors without a range are left out of the calibration cache and kept float by the Q/DQ
    builder. The histogram resolution is the one the statistics were collected with.
    """
    out: dict[str, float | None] = {}
    for name, st in stats.items():
        out[name] = amax_for(st, config)
    none = [n for n, a in out.items() if a is None]
    if none:
        logger.info(
            "%d tensor(s) are all zeros over the calibration data and get no range (first: '%s')",
            len(none),
            none[0],
        )
    return out
