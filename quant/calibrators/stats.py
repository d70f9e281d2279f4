"""Streaming per-tensor statistics: an exactly mergeable |x| histogram plus exact min/max/absmax.

Design (see docs/DESIGN.md):

* The histogram of one tensor has ``num_bins`` bins (default 2048) over ``[0, R]`` where ``R`` is
  the smallest power of two >= the largest ``|x|`` seen so far (``R = 2**ceil(log2(absmax))``).
  While every value seen is exactly zero, ``R`` is 0 and bin 0 simply counts those zeros (they
  belong to bin 0 at any later range).
* When a later batch exceeds ``R``, ``R`` doubles (as often as needed) and the counts are merged
  pairwise (bins ``2k`` and ``2k+1`` become bin ``k``). With a power-of-two ``num_bins`` the bin
  scale ``num_bins / R`` is a power of two, so ``floor(|x| * num_bins / R)`` is computed exactly in
  float32 and pairwise merging gives *exactly* the histogram that binning at the larger range would
  have given. Hence histograms of batches and shards merge exactly and independently of order: one
  calibration over shard A then B equals A merged with B, bit for bit. This is why ``num_bins``
  must be a power of two, and why calibration needs a single pass (no range-then-histogram passes).
  (TensorRT also grows by powers of two but starts at the first batch's max, so its result depends
  on the batch order; pytorch-quantization appends bins of equal width.)
* Exact running min and max (signed), absmax and element count are kept next to the histogram;
  ``counts.sum() == count`` always holds.
* Memory grows with tensors x bins, never with samples: raw activations are reduced immediately
  and never kept.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant.errors import CacheError, CalibrationError, UsageError

logger = logging.getLogger(__name__)

DEFAULT_NUM_BINS = 2048
MIN_NUM_BINS = 128

# Batches are reduced in chunks of this many elements: the float32 scratch (1 MiB) and the int32
# bin-index scratch (1 MiB) stay cache-resident and their size does not depend on the tensor size.
_CHUNK = 1 << 18

# Signed binning (see bin_signed_chunk) uses one bincount over both signs at the finer of the two
# scales when the positive and negative ranges differ by at most this factor (a table of at most
# num_bins * (1 + ratio) counters); beyond it each sign is binned on its own.
_MAX_FINE_RATIO = 16

# Below this range the per-element scale num_bins / R would overflow float32; such tensors (all
# values below ~1e-27) are binned through float64 instead.
_MIN_FLOAT32_RANGE = 2.0**-100


def _load_native() -> Any:
    """The C histogram kernel (quant/calibrators/_histogram.c), or None where it was not built
    (no C compiler at install time) or ``QUANT_NATIVE=0`` turns it off. Both paths give the same
    counts bit for bit (tests/calibrators/test_native_kernel.py); the C one is ~3x cheaper."""
    if os.environ.get("QUANT_NATIVE", "").strip() == "0":
        return None
    try:
        from quant.calibrators import _histogram  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _histogram


_native: Any = _load_native()


def histogram_kernel() -> str:
    """Which histogram kernel calibration uses: "native" (C) or "numpy"."""
    return "numpy" if _native is None else "native"


def _as_float32(values: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``values`` as a contiguous native float32 array (a copy into ``buf`` when it is not one)."""
    if values.dtype == np.float32 and values.flags.c_contiguous:
        return values
    out = buf[: values.shape[0]]
    np.copyto(out, values, casting="unsafe")
    return out


def check_num_bins(num_bins: object) -> int:
    """Validate a bin count: an int, a power of two, >= 128. Raises UsageError naming --num-bins."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)):
        raise UsageError(f"--num-bins must be an integer power of two >= {MIN_NUM_BINS} (got {num_bins!r})")
    n = int(num_bins)
    if n < MIN_NUM_BINS or n & (n - 1):
        raise UsageError(
            f"--num-bins must be a power of two >= {MIN_NUM_BINS} (got {n}); histograms of different "
            "batches merge exactly only with a power-of-two bin count (e.g. 2048)"
        )
    return n


def pow2_ceil(value: float) -> float:
    """Smallest power of two >= ``value`` (> 0), exactly, for any finite positive float."""
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return math.ldexp(1.0, exponent - 1) if mantissa == 0.5 else math.ldexp(1.0, exponent)


def _grow(counts: np.ndarray, doublings: int) -> np.ndarray:
    """Counts of the same data at a range 2**doublings larger: merge bins pairwise, repeatedly."""
    n = counts.shape[0]
    out = counts
    # After log2(n) doublings every old bin lies inside new bin 0; more doublings change nothing.
    for _ in range(min(doublings, n.bit_length())):
        merged = np.zeros_like(out)
        merged[: n // 2] = out.reshape(n // 2, 2).sum(axis=1)
        out = merged
    return out


def _bin_abs(
    values: np.ndarray, scale: float, num_bins: int, abs_buf: np.ndarray, idx_buf: np.ndarray
) -> np.ndarray:
    """Counts (int64, ``num_bins + 1``) of ``floor(|values| * scale)``; the extra last slot counts the
    values exactly at the range's upper edge (``|x| * scale == num_bins``). See :func:`bin_abs_chunk`."""
    if _native is not None and scale < 2.0**100:
        counts = np.zeros(num_bins + 1, dtype=np.int64)
        _native.abs_counts(_as_float32(values, abs_buf), float(np.float32(scale)), counts)
        return counts
    size = values.shape[0]
    a = abs_buf[:size]
    idx = idx_buf[:size]
    np.abs(values, out=a, casting="same_kind")
    if scale < 2.0**100:
        np.multiply(a, np.float32(scale), out=a)
        np.copyto(idx, a, casting="unsafe")  # truncation == floor for non-negative values
    else:  # tiny range: the scale does not fit float32, bin in float64
        np.copyto(idx, np.floor(a.astype(np.float64) * scale), casting="unsafe")
    return np.bincount(idx, minlength=num_bins + 1)


def bin_abs_chunk(
    values: np.ndarray, scale: float, num_bins: int, abs_buf: np.ndarray, idx_buf: np.ndarray
) -> np.ndarray:
    """Histogram counts (int64, ``num_bins``) of ``|values|`` in bins of width ``1 / scale``.

    The one hot loop of calibration; kept small so it can be optimised on its own. ``values`` is a
    1-D chunk of finite numbers with ``|values| * scale <= num_bins``; ``abs_buf`` (float32) and
    ``idx_buf`` (int32 or intp) are scratch buffers at least as long as ``values``. Bin index is
    ``floor(|x| * scale)`` computed in float32 (exact for a power-of-two scale); the value equal to
    the range's upper edge lands in bin ``num_bins`` of ``bincount`` and is folded into the last
    bin, which saves a clipping pass. Indices are int32: NumPy converts float32 to int32 with one
    vector instruction but float32 to int64 element by element, which costs more than ``bincount``
    widening the int32 indices.
    """
    counts = _bin_abs(values, scale, num_bins, abs_buf, idx_buf)
    return _folded(counts)


def _folded(ext: np.ndarray) -> np.ndarray:
    """``num_bins`` counts from ``num_bins + 1`` (the edge slot goes into the last bin)."""
    out = ext[:-1].copy()
    out[-1] += ext[-1]
    return out


def _fold_fine(fine: np.ndarray, num_bins: int, ratio: int) -> np.ndarray:
    """Counts (``num_bins + 1``, edge slot last) at ``ratio`` times the bin width of ``fine``, which has
    ``num_bins * ratio + 1`` bins (its last one holds the values at the range's edge)."""
    out = np.empty(num_bins + 1, dtype=np.int64)
    out[:num_bins] = fine[: num_bins * ratio].reshape(num_bins, ratio).sum(axis=1)
    out[num_bins] = fine[num_bins * ratio]
    return out


def bin_signed_chunk(
    values: np.ndarray,
    pos_range: float,
    neg_range: float,
    num_bins: int,
    f32_buf: np.ndarray,
    idx_buf: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the non-negative values over ``[0, pos_range]`` and of ``|x|`` of the negative
    values over ``[0, neg_range]`` in one pass (int64, ``num_bins + 1`` each, the last slot counting
    the values exactly at that range's edge).

    ``values`` is a 1-D chunk of finite numbers with ``max <= pos_range`` and ``-min <= neg_range``
    (a range is 0 when that sign has no values; the ranges are powers of two). Both signs are binned
    at the finer scale ``num_bins / min(range)`` with a signed index ``trunc(x * scale)`` (exact in
    float32 for a power-of-two scale; truncation is floor of ``|x|`` on either side) into one
    ``bincount``; the coarser side's bins are then merged in power-of-two groups, which is exact.
    Values with ``|x|`` below one fine bin, of either sign, are counted in the positive histogram's
    bin 0: they are in bin 0 of ``|x|`` at any range, and ReLU maps them to 0. When the ranges differ
    by more than ``_MAX_FINE_RATIO`` (or are tiny) each sign is binned separately.
    """
    n = values.shape[0]
    s_pos = num_bins / pos_range if pos_range else 0.0
    s_neg = num_bins / neg_range if neg_range else 0.0
    scale = max(s_pos, s_neg)
    pos = np.zeros(num_bins + 1, dtype=np.int64)
    neg = np.zeros(num_bins + 1, dtype=np.int64)
    if scale == 0.0:  # only zeros
        pos[0] = n
        return pos, neg
    rp = round(scale / s_pos) if s_pos else 0
    rn = round(scale / s_neg) if s_neg else 0
    if max(rp, rn) > _MAX_FINE_RATIO or scale >= 2.0**100:
        return _bin_signs_apart(values, pos_range, neg_range, num_bins, f32_buf, idx_buf)
    off = num_bins * rn
    if _native is not None:
        counts = np.zeros(off + num_bins * rp + 1, dtype=np.int64)
        _native.signed_counts(_as_float32(values, f32_buf), float(np.float32(scale)), off, counts)
    else:
        counts = _signed_bincount(values, scale, off, num_bins * rp, f32_buf, idx_buf)
    if rp:
        pos = _fold_fine(counts[off:], num_bins, rp)
    else:
        pos[0] = counts[off]
    if rn:
        fine = counts[: off + 1][::-1].copy()  # fine[j]: trunc(x * scale) == -j
        fine[0] = 0  # the shared centre bin is counted on the positive side
        neg = _fold_fine(fine, num_bins, rn)
    return pos, neg


def _signed_bincount(
    values: np.ndarray, scale: float, off: int, top: int, f32_buf: np.ndarray, idx_buf: np.ndarray
) -> np.ndarray:
    """NumPy path of :func:`bin_signed_chunk`: counts of ``trunc(x * scale) + off`` (length
    ``off + top + 1``)."""
    n = values.shape[0]
    v = f32_buf[:n]
    idx = idx_buf[:n]
    if values.dtype == np.float32:
        np.multiply(values, np.float32(scale), out=v)
    else:  # round to float32 first, as the |x| histogram does (then scale exactly)
        np.copyto(v, values, casting="same_kind")
        np.multiply(v, np.float32(scale), out=v)
    np.copyto(idx, v, casting="unsafe")  # truncation toward zero: floor(|x| * scale) on both sides
    if off:
        np.add(idx, off, out=idx)
    return np.bincount(idx, minlength=off + top + 1)


def _bin_signs_apart(
    values: np.ndarray,
    pos_range: float,
    neg_range: float,
    num_bins: int,
    f32_buf: np.ndarray,
    idx_buf: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bin_signed_chunk` for far-apart or tiny ranges: one |x| histogram per sign."""
    n = values.shape[0]
    v = f32_buf[:n]
    n_neg = int(np.count_nonzero(values < 0))
    pos = np.zeros(num_bins + 1, dtype=np.int64)
    neg = np.zeros(num_bins + 1, dtype=np.int64)
    if pos_range:
        np.maximum(values, 0, out=v, casting="same_kind")
        pos = _bin_abs(v, num_bins / pos_range, num_bins, v, idx_buf)
        pos[0] -= n_neg  # the negative values became zeros
    else:
        pos[0] = n - n_neg
    if neg_range:
        np.minimum(values, 0, out=v, casting="same_kind")
        neg = _bin_abs(v, num_bins / neg_range, num_bins, v, idx_buf)
        neg[0] -= n - n_neg  # the non-negative values became zeros
    return pos, neg


def _grow_ext(ext: np.ndarray, hist_range: float, target: float) -> np.ndarray:
    """``num_bins + 1`` counts (edge slot last) brought from ``hist_range`` up to ``target``.

    Bins merge pairwise per doubling (exact); the values at the old edge (exactly ``hist_range``)
    land in bin ``num_bins >> doublings`` of the new range, where binning at ``target`` puts them,
    which keeps growth exact even when a batch's maximum is exactly a power of two.
    """
    if hist_range == 0.0 or hist_range == target:
        return ext
    n = ext.shape[0] - 1
    doublings = round(math.log2(target / hist_range))
    out = np.zeros_like(ext)
    out[:n] = _grow(ext[:n], doublings)
    out[n >> doublings if doublings < n.bit_length() else 0] += ext[n]
    return out


@dataclass(frozen=True, eq=False)
class TensorStats:
    """Immutable statistics of one tensor over everything collected (see the module docstring).

    ``counts`` (int64, read-only, length ``num_bins``) is the histogram of ``|x|`` over
    ``[0, hist_range]``; ``hist_range`` is a power of two or 0 (nothing but zeros seen). ``min`` and
    ``max`` are the signed extremes (None before any element was seen), ``absmax`` the largest
    ``|x|`` (float32 precision), ``count`` the number of elements.
    """

    num_bins: int
    hist_range: float
    counts: np.ndarray
    count: int
    min: float | None
    max: float | None
    absmax: float

    def __post_init__(self) -> None:
        counts = np.array(self.counts, dtype=np.int64)  # own copy, never a view of a live buffer
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def empty(cls, num_bins: int = DEFAULT_NUM_BINS) -> TensorStats:
        """Statistics of no data at all."""
        n = check_num_bins(num_bins)
        return cls(n, 0.0, np.zeros(n, dtype=np.int64), 0, None, None, 0.0)

    @property
    def bin_width(self) -> float:
        """Width of one histogram bin (0 while nothing but zeros was seen)."""
        return self.hist_range / self.num_bins

    @property
    def has_range(self) -> bool:
        """False when every element seen was zero (or nothing was seen): no INT8 range exists."""
        return self.absmax > 0.0

    def merge(self, other: TensorStats) -> TensorStats:
        """Statistics of both data sets together; exact and order-independent."""
        if other.num_bins != self.num_bins:
            raise CalibrationError(
                f"cannot merge statistics with {other.num_bins} bins into statistics with "
                f"{self.num_bins} bins; collect both with the same --num-bins"
            )
        hist_range = max(self.hist_range, other.hist_range)
        counts = _at_range(self.counts, self.hist_range, hist_range) + _at_range(
            other.counts, other.hist_range, hist_range
        )
        return TensorStats(
            num_bins=self.num_bins,
            hist_range=hist_range,
            counts=counts,
            count=self.count + other.count,
            min=_opt(min, self.min, other.min),
            max=_opt(max, self.max, other.max),
            absmax=max(self.absmax, other.absmax),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        return (
            self.num_bins == other.num_bins
            and self.hist_range == other.hist_range
            and self.count == other.count
            and self.min == other.min
            and self.max == other.max
            and self.absmax == other.absmax
            and bool(np.array_equal(self.counts, other.counts))
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (counts as a list of ints)."""
        return {
            "num_bins": self.num_bins,
            "hist_range": self.hist_range,
            "count": self.count,
            "min": self.min,
            "max": self.max,
            "absmax": self.absmax,
            "counts": [int(c) for c in self.counts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "statistics") -> TensorStats:
        """Inverse of :meth:`to_dict`; CacheError naming ``source`` and the field on bad content."""
        if not isinstance(data, Mapping):
            raise CacheError(
                f"{source}: expected an object with tensor statistics, got {type(data).__name__}"
            )
        missing = [
            k for k in ("num_bins", "hist_range", "count", "min", "max", "absmax", "counts") if k not in data
        ]
        if missing:
            raise CacheError(f"{source}: field '{missing[0]}' is missing; the statistics are incomplete")
        num_bins = _int_field(data, "num_bins", source)
        if num_bins < MIN_NUM_BINS or num_bins & (num_bins - 1):
            raise CacheError(
                f"{source}: field 'num_bins' must be a power of two >= {MIN_NUM_BINS} (got {num_bins})"
            )
        hist_range = _float_field(data, "hist_range", source)
        absmax = _float_field(data, "absmax", source)
        count = _int_field(data, "count", source)
        lo = None if data["min"] is None else _float_field(data, "min", source)
        hi = None if data["max"] is None else _float_field(data, "max", source)
        raw = data["counts"]
        if not isinstance(raw, list) or len(raw) != num_bins:
            raise CacheError(f"{source}: field 'counts' must be a list of {num_bins} integers")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw):
            raise CacheError(f"{source}: field 'counts' must hold non-negative integers")
        counts = np.array(raw, dtype=np.int64)
        if int(counts.sum()) != count:
            raise CacheError(
                f"{source}: field 'counts' sums to {int(counts.sum())}, not to 'count' = {count}"
            )
        expected_range = pow2_ceil(absmax) if absmax > 0 else 0.0
        if absmax < 0 or hist_range != expected_range:
            raise CacheError(
                f"{source}: field 'hist_range' = {hist_range} does not fit 'absmax' = {absmax} "
                f"(expected {expected_range}); the statistics are corrupt"
            )
        if (lo is None) != (count == 0) or (hi is None) != (count == 0):
            raise CacheError(f"{source}: fields 'min'/'max' must be null exactly when 'count' is 0")
        return cls(num_bins, hist_range, counts, count, lo, hi, absmax)


def _opt(fn: Any, a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return float(fn(a, b))


def _at_range(counts: np.ndarray, hist_range: float, target: float) -> np.ndarray:
    """Counts brought from ``hist_range`` up to the (larger or equal) power-of-two ``target``."""
    if hist_range == 0.0 or hist_range == target:  # R == 0: only bin 0 (exact zeros) is filled
        return counts
    return _grow(counts, round(math.log2(target / hist_range)))


def _int_field(data: Mapping[str, Any], key: str, source: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CacheError(f"{source}: field '{key}' must be a non-negative integer (got {value!r})")
    return value


def _float_field(data: Mapping[str, Any], key: str, source: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CacheError(f"{source}: field '{key}' must be a finite number (got {value!r})")
    return float(value)


class _Scratch:
    """Chunk-sized scratch buffers shared by all tensors of one collector (not thread-safe)."""

    def __init__(self) -> None:
        self.abs_buf = np.empty(_CHUNK, dtype=np.float32)
        self.idx_buf = np.empty(_CHUNK, dtype=np.int32)


def _check_dtype(name: str, x: np.ndarray, batch: int) -> np.ndarray:
    if x.dtype.kind not in "fiub":
        raise CalibrationError(
            f"tensor '{name}' has dtype {x.dtype} in calibration batch {batch}; only numeric "
            "tensors can be calibrated (exclude the tensor)"
        )
    return x.astype(np.uint8) if x.dtype.kind == "b" else x


def _chunk_extremes(name: str, chunk: np.ndarray, batch: int) -> tuple[float, float, float]:
    """(min, max, float32 |x| max) of a chunk; CalibrationError for NaN / inf / beyond float32."""
    cmin = float(chunk.min())
    cmax = float(chunk.max())
    if not (math.isfinite(cmin) and math.isfinite(cmax)):
        what = "NaN" if bool(np.isnan(chunk).any()) else "infinite"
        raise CalibrationError(
            f"tensor '{name}' has {what} values in calibration batch {batch}; check the input "
            "data and preprocessing (or exclude the tensor)"
        )
    # |x| as the float32 the histogram sees (values beyond float32 range overflow to inf)
    with np.errstate(over="ignore"):
        cabs = float(np.float32(max(-cmin, cmax)))
    if math.isinf(cabs):
        raise CalibrationError(
            f"tensor '{name}' has values beyond the float32 range in calibration batch "
            f"{batch}; check the input data and preprocessing (or exclude the tensor)"
        )
    return cmin, cmax, cabs


def _absorb_extremes(
    dst: StatsAccumulator | SignedStatsAccumulator, src: StatsAccumulator | SignedStatsAccumulator
) -> None:
    dst.count += src.count
    dst.min = _opt(min, dst.min, src.min)
    dst.max = _opt(max, dst.max, src.max)
    dst.absmax = max(dst.absmax, src.absmax)
    dst.batches += src.batches


class _BatchExtremes:
    """Element count, signed extremes and |x| maximum of one batch, chunk by chunk; committed to
    an accumulator only once the whole batch went through (updates are all-or-nothing)."""

    def __init__(self) -> None:
        self.count = 0
        self.lo: float | None = None
        self.hi: float | None = None
        self.absmax = 0.0

    def add(self, chunk: np.ndarray, cmin: float, cmax: float, cabs: float) -> None:
        self.count += int(chunk.shape[0])
        self.lo = cmin if self.lo is None else min(self.lo, cmin)
        self.hi = cmax if self.hi is None else max(self.hi, cmax)
        self.absmax = max(self.absmax, cabs)

    def commit(self, acc: StatsAccumulator | SignedStatsAccumulator) -> None:
        acc.count += self.count
        acc.min = _opt(min, acc.min, self.lo)
        acc.max = _opt(max, acc.max, self.hi)
        acc.absmax = max(acc.absmax, self.absmax)
        acc.batches += 1


def _checked_chunks(
    name: str, array: np.ndarray, batch: int, extremes: _BatchExtremes
) -> Iterator[tuple[np.ndarray, float, float, float]]:
    """One batch of tensor ``name`` in chunks of ``_CHUNK`` elements, each with its (min, max,
    |x| max), which are also added to ``extremes``; CalibrationError for a non-numeric dtype or
    for NaN / inf (see :func:`_chunk_extremes`)."""
    x = _check_dtype(name, np.asarray(array), batch)
    flat = x.reshape(-1)  # a view for the contiguous arrays ONNX Runtime returns
    for start in range(0, flat.shape[0], _CHUNK):
        chunk = flat[start : start + _CHUNK]
        cmin, cmax, cabs = _chunk_extremes(name, chunk, batch)
        extremes.add(chunk, cmin, cmax, cabs)
        yield chunk, cmin, cmax, cabs


class StatsAccumulator:
    """In-place accumulator behind :class:`TensorStats` for one named tensor.

    Internally the counts have one more slot than bins: the values exactly at the current range's
    upper edge (possible only when the maximum is a power of two). They belong to the last bin at
    this range but to a lower bin once the range grows; keeping them apart makes growth exact.
    """

    def __init__(self, name: str, num_bins: int = DEFAULT_NUM_BINS) -> None:
        self.name = name
        self.num_bins = check_num_bins(num_bins)
        self.hist_range = 0.0
        self._ext = np.zeros(self.num_bins + 1, dtype=np.int64)
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None
        self.absmax = 0.0
        self.batches = 0

    @property
    def counts(self) -> np.ndarray:
        """The histogram (``num_bins`` int64 counts over ``[0, hist_range]``), a copy."""
        return _folded(self._ext)

    def update(
        self, array: np.ndarray, *, batch_index: int | None = None, scratch: _Scratch | None = None
    ) -> None:
        """Add one batch. All-or-nothing: a batch with NaN/inf raises CalibrationError and changes nothing."""
        batch = self.batches if batch_index is None else batch_index
        bufs = scratch if scratch is not None else _Scratch()
        nb = self.num_bins
        hist_range = self.hist_range
        local = np.zeros(nb + 1, dtype=np.int64)  # this batch's counts at range hist_range
        extremes = _BatchExtremes()
        for chunk, _cmin, _cmax, cabs in _checked_chunks(self.name, array, batch, extremes):
            if cabs == 0.0:  # all zeros: bin 0 at any range
                local[0] += chunk.shape[0]
                continue
            if cabs > hist_range:
                new_range = pow2_ceil(cabs)
                local = _grow_ext(local, hist_range, new_range)
                hist_range = new_range
            local += _bin_abs(chunk, nb / hist_range, nb, bufs.abs_buf, bufs.idx_buf)
        # commit the whole batch at once
        self._ext = _grow_ext(self._ext, self.hist_range, hist_range) + local
        self.hist_range = hist_range
        extremes.commit(self)

    def absorb(self, other: StatsAccumulator) -> None:
        """Add another accumulator's data (a calibration worker's share), exactly: as if this one
        had seen every batch of both (growth by power-of-two bin merging is exact, and the values at
        the range's edge stay apart)."""
        hist_range = max(self.hist_range, other.hist_range)
        self._ext = _grow_ext(self._ext, self.hist_range, hist_range) + _grow_ext(
            other._ext, other.hist_range, hist_range
        )
        self.hist_range = hist_range
        _absorb_extremes(self, other)

    def merge(self, stats: TensorStats) -> None:
        """Add statistics collected elsewhere (another shard)."""
        merged = self.snapshot().merge(stats)
        self.hist_range = merged.hist_range
        self._ext = np.append(merged.counts, 0)
        self.count = merged.count
        self.min = merged.min
        self.max = merged.max
        self.absmax = merged.absmax

    def snapshot(self) -> TensorStats:
        """The current statistics as an immutable value (copies the counts)."""
        return TensorStats(
            self.num_bins, self.hist_range, self.counts, self.count, self.min, self.max, self.absmax
        )


class SignedStatsAccumulator:
    """Statistics of one tensor kept per sign, so that the statistics of ``Relu(tensor)`` come for free.

    Holds the histogram of the non-negative values over ``[0, pos_range]`` and the histogram of
    ``|x|`` of the negative values over ``[0, neg_range]``, each range the smallest power of two
    that covers its side. :meth:`snapshot` merges the two into the tensor's usual ``|x|``
    statistics (bit for bit what :class:`StatsAccumulator` gives: pairwise bin merging is exact);
    :meth:`relu_snapshot` gives the statistics of ``max(x, 0)``, bit for bit what collecting the
    ReLU's output would give (the non-negative histogram at its own range, the negative values in
    bin 0). Calibration uses it for a tensor whose ReLU output is calibrated too, which saves
    fetching and reducing the ReLU output. The cost per element is that of the |x| histogram.
    """

    def __init__(self, name: str, num_bins: int = DEFAULT_NUM_BINS) -> None:
        self.name = name
        self.num_bins = check_num_bins(num_bins)
        self.pos_range = 0.0
        self.neg_range = 0.0
        self._pos = np.zeros(self.num_bins + 1, dtype=np.int64)  # edge slot last, as StatsAccumulator
        self._neg = np.zeros(self.num_bins + 1, dtype=np.int64)
        self.count = 0
        self.min: float | None = None
        self.max: float | None = None
        self.absmax = 0.0
        self.batches = 0

    def update(
        self, array: np.ndarray, *, batch_index: int | None = None, scratch: _Scratch | None = None
    ) -> None:
        """Add one batch. All-or-nothing: a batch with NaN/inf raises CalibrationError and changes nothing."""
        batch = self.batches if batch_index is None else batch_index
        bufs = scratch if scratch is not None else _Scratch()
        nb = self.num_bins
        pr, nr = self.pos_range, self.neg_range
        pos = np.zeros(nb + 1, dtype=np.int64)
        neg = np.zeros(nb + 1, dtype=np.int64)
        extremes = _BatchExtremes()
        for chunk, cmin, cmax, _cabs in _checked_chunks(self.name, array, batch, extremes):
            need_pos = float(np.float32(cmax)) if cmax > 0 else 0.0
            need_neg = float(np.float32(-cmin)) if cmin < 0 else 0.0
            if need_pos > pr:
                new_range = pow2_ceil(need_pos)
                pos = _grow_ext(pos, pr, new_range)
                pr = new_range
            if need_neg > nr:
                new_range = pow2_ceil(need_neg)
                neg = _grow_ext(neg, nr, new_range)
                nr = new_range
            p, q = bin_signed_chunk(chunk, pr, nr, nb, bufs.abs_buf, bufs.idx_buf)
            pos += p
            neg += q
        # commit the whole batch at once
        self._pos = _grow_ext(self._pos, self.pos_range, pr) + pos
        self._neg = _grow_ext(self._neg, self.neg_range, nr) + neg
        self.pos_range, self.neg_range = pr, nr
        extremes.commit(self)

    def absorb(self, other: SignedStatsAccumulator) -> None:
        """Add another accumulator's data, exactly (see :meth:`StatsAccumulator.absorb`)."""
        pr = max(self.pos_range, other.pos_range)
        nr = max(self.neg_range, other.neg_range)
        self._pos = _grow_ext(self._pos, self.pos_range, pr) + _grow_ext(other._pos, other.pos_range, pr)
        self._neg = _grow_ext(self._neg, self.neg_range, nr) + _grow_ext(other._neg, other.neg_range, nr)
        self.pos_range, self.neg_range = pr, nr
        _absorb_extremes(self, other)

    def snapshot(self) -> TensorStats:
        """The tensor's |x| statistics."""
        hist_range = max(self.pos_range, self.neg_range)
        ext = _grow_ext(self._pos, self.pos_range, hist_range) + _grow_ext(
            self._neg, self.neg_range, hist_range
        )
        return TensorStats(
            self.num_bins, hist_range, _folded(ext), self.count, self.min, self.max, self.absmax
        )

    def relu_snapshot(self) -> TensorStats:
        """Statistics of ``max(x, 0)`` over the same data."""
        counts = _folded(self._pos)
        counts[0] += int(self._neg.sum())
        lo = None if self.min is None else max(self.min, 0.0)
        hi = None if self.max is None else max(self.max, 0.0)
        absmax = float(np.float32(hi)) if hi else 0.0
        return TensorStats(self.num_bins, self.pos_range, counts, self.count, lo, hi, absmax)


class StatsCollector:
    """Streaming statistics of many named tensors: ``collect`` per batch, ``stats()`` at the end.

    Memory is O(tensors x bins) plus two fixed chunk-sized scratch buffers; collected arrays are
    reduced at once and never referenced afterwards. Not thread-safe (the scratch is shared).
    """

    def __init__(self, num_bins: int = DEFAULT_NUM_BINS) -> None:
        self.num_bins = check_num_bins(num_bins)
        self._acc: dict[str, StatsAccumulator] = {}
        self._scratch: _Scratch | None = None

    def collect(self, name: str, array: np.ndarray, batch_index: int | None = None) -> None:
        """Reduce one batch of tensor ``name`` into its statistics.

        ``batch_index`` only names the batch in error messages (default: the number of batches
        this tensor has seen so far). NaN / inf values raise CalibrationError naming the tensor and
        the batch, and leave the statistics unchanged.
        """
        acc = self._acc.get(name)
        if acc is None:
            acc = StatsAccumulator(name, self.num_bins)
            self._acc[name] = acc
        if self._scratch is None:
            self._scratch = _Scratch()
        acc.update(array, batch_index=batch_index, scratch=self._scratch)

    def reset(self) -> None:
        """Forget everything collected."""
        self._acc.clear()

    def stats(self) -> dict[str, TensorStats]:
        """Immutable snapshots of every tensor's statistics, in first-collected order."""
        return {name: acc.snapshot() for name, acc in self._acc.items()}

    def merge(self, other: StatsCollector | Mapping[str, TensorStats]) -> None:
        """Add another collector's (or a ``stats()`` dict's) statistics, e.g. of another shard."""
        items = other.stats() if isinstance(other, StatsCollector) else other
        for name, st in items.items():
            if st.num_bins != self.num_bins:
                raise CalibrationError(
                    f"cannot merge statistics of tensor '{name}' with {st.num_bins} bins into a "
                    f"collector with {self.num_bins} bins; collect both with the same --num-bins"
                )
        for name, st in items.items():
            acc = self._acc.get(name)
            if acc is None:
                acc = StatsAccumulator(name, self.num_bins)
                self._acc[name] = acc
            acc.merge(st)

    @classmethod
    def from_stats(cls, stats: Mapping[str, TensorStats], num_bins: int | None = None) -> StatsCollector:
        """A collector holding ``stats`` (e.g. loaded from a file), ready to collect more."""
        if num_bins is None:
            num_bins = next(iter(stats.values())).num_bins if stats else DEFAULT_NUM_BINS
        collector = cls(num_bins)
        collector.merge(stats)
        return collector

    def __contains__(self, name: object) -> bool:
        return name in self._acc

    def __len__(self) -> int:
        return len(self._acc)

    def __iter__(self) -> Iterator[str]:
        return iter(self._acc)

    @property
    def names(self) -> list[str]:
        """Names of the tensors collected so far."""
        return list(self._acc)
