"""The C histogram kernel (quant/calibrators/_histogram.c) against the NumPy path, bit for bit.

Calibration uses the C kernel when it was built (setup.py builds it as an optional extension) and
the NumPy path otherwise; both must give identical statistics. The other calibration tests run on
whichever kernel is active; these run both on the same data.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.calibrators import stats as stats_mod
from quant.calibrators.stats import SignedStatsAccumulator, StatsAccumulator, _Scratch

native = stats_mod._native
needs_native = pytest.mark.skipif(native is None, reason="the C histogram kernel was not built")


def test_kernel_is_built_where_a_compiler_exists() -> None:
    """`pip install -e .` builds the kernel wherever a C compiler and Python's headers exist (as in
    CI); a silent fallback there would hide a build break behind a 3x slower calibration."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not (shutil.which("cc") or shutil.which("gcc")) or not headers.exists():
        pytest.skip("no C compiler or Python headers here: the NumPy path is expected")
    import os

    if os.environ.get("QUANT_NATIVE", "").strip() == "0":
        pytest.skip("QUANT_NATIVE=0 turns the kernel off")
    assert stats_mod.histogram_kernel() == "native"


def _both(monkeypatch: pytest.MonkeyPatch, cls: type, batches: list[np.ndarray], num_bins: int = 2048):
    results = []
    for kernel in (native, None):
        monkeypatch.setattr(stats_mod, "_native", kernel)
        acc = cls("t", num_bins)
        scratch = _Scratch()
        for b in batches:
            acc.update(b, scratch=scratch)
        results.append(acc)
    return results


def _same_stats(a: stats_mod.TensorStats, b: stats_mod.TensorStats) -> None:
    assert a.hist_range == b.hist_range
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.count, a.min, a.max, a.absmax) == (b.count, b.min, b.max, b.absmax)


def _datasets() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    normal = [rng.standard_normal((4, 3, 37, 41)).astype(np.float32) * s for s in (0.5, 3.0, 1.0)]
    relu = [np.maximum(b, 0) for b in normal]
    # values exactly at power-of-two range edges and bin edges, both signs
    edges = np.array([0.0, 1.0, -1.0, 2.0, -4.0, 0.5, 2.0**-11, -(2.0**-11), 3.999999], np.float32)
    skewed = [np.concatenate([rng.uniform(-0.01, 8.0, 50_000), [-0.01]]).astype(np.float32)]
    return {
        "normal": normal,
        "relu": relu,
        "edges": [edges, edges * 64, np.tile(edges, 1000)],
        "skewed": skewed,
        "big": [rng.standard_normal(700_000).astype(np.float32)],  # more than one chunk
        "float64": [b.astype(np.float64) for b in normal],
        "float16": [b.astype(np.float16) for b in normal],
        "int": [rng.integers(-300, 300, size=5000)],
        "big-endian": [b.astype(">f4") for b in normal],
        "strided": [b[:, :, ::2, ::3] for b in normal],
        "zeros": [np.zeros(1000, np.float32), np.zeros(10, np.float32)],
        "tiny": [np.full(100, 1e-35, np.float32), np.full(10, -3e-36, np.float32)],
    }


@needs_native
@pytest.mark.parametrize("name", sorted(_datasets()))
def test_abs_histograms_match_numpy(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    a, b = _both(monkeypatch, StatsAccumulator, _datasets()[name])
    _same_stats(a.snapshot(), b.snapshot())


@needs_native
@pytest.mark.parametrize("name", sorted(_datasets()))
def test_signed_histograms_match_numpy(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    a, b = _both(monkeypatch, SignedStatsAccumulator, _datasets()[name])
    _same_stats(a.snapshot(), b.snapshot())
    _same_stats(a.relu_snapshot(), b.relu_snapshot())


@needs_native
@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=32), min_size=1, max_size=300
    ),
    split=st.integers(min_value=1, max_value=299),
    num_bins=st.sampled_from([128, 256, 2048]),
)
def test_random_batches_match_numpy(data: list[float], split: int, num_bins: int) -> None:
    x = np.array(data, np.float32)
    batches = [x[:split], x[split:]] if 0 < split < x.size else [x]
    for cls in (StatsAccumulator, SignedStatsAccumulator):
        with pytest.MonkeyPatch.context() as mp:
            a, b = _both(mp, cls, batches, num_bins)
        _same_stats(a.snapshot(), b.snapshot())


# --- the kernel's own contract ---------------------------------------------------------------------


@needs_native
def test_kernel_counts_abs_and_signed() -> None:
    x = np.array([0.0, 0.4, -0.6, 1.0, -1.9, 2.0], np.float32)
    counts = np.zeros(5, np.int64)
    native.abs_counts(x, 2.0, counts)  # trunc(|x| * 2): 0 0 1 2 3 4
    assert counts.tolist() == [2, 1, 1, 1, 1]
    counts = np.zeros(9, np.int64)
    native.signed_counts(x, 2.0, 4, counts)  # trunc(x * 2) + 4: 4 4 3 6 1 8
    assert counts.tolist() == [0, 1, 0, 1, 2, 0, 1, 0, 1]
    native.abs_counts(np.zeros(0, np.float32), 2.0, counts)  # nothing to add
    assert counts.sum() == 6


@needs_native
@pytest.mark.parametrize(("bad", "abs_slot", "signed_slot"), [(np.nan, 4, 4), (np.inf, 4, 4), (-np.inf, 4, 0), (2.5, 4, 4), (-1e30, 4, 0)])
def test_kernel_clamps_values_outside_the_table(bad: float, abs_slot: int, signed_slot: int) -> None:
    """The caller validates each chunk before binning (stats.py: min / max, NaN); the kernel does not
    check again, but never writes outside the table: out-of-range values (and NaN) are clamped into
    the end slots."""
    x = np.array([0.1] * 9 + [bad] + [0.2] * 3, np.float32)
    counts = np.zeros(5, np.int64)
    native.abs_counts(x, 2.0, counts)  # table of 5: |x| * 2 must stay below 5
    expected = np.zeros(5, np.int64)
    expected[0] = 12
    expected[abs_slot] += 1
    np.testing.assert_array_equal(counts, expected)
    counts = np.zeros(5, np.int64)
    native.signed_counts(x, 2.0, 2, counts)  # trunc(x * 2) + 2 in [0, 4]
    expected = np.zeros(5, np.int64)
    expected[2] = 12
    expected[signed_slot] += 1
    np.testing.assert_array_equal(counts, expected)


def test_chunks_are_checked_before_binning() -> None:
    """What lets the kernel skip per-element checks: a NaN or inf anywhere in a batch is an error
    naming the tensor before any chunk is binned, and the accumulator is unchanged."""
    from quant.errors import CalibrationError

    acc = StatsAccumulator("act", 2048)
    acc.update(np.ones(10, np.float32))
    before = acc.snapshot()
    for bad in (np.nan, np.inf):
        x = np.ones(1_000_000, np.float32)
        x[999_999] = bad
        with pytest.raises(CalibrationError, match="'act'"):
            acc.update(x)
    _same_stats(acc.snapshot(), before)


@needs_native
def test_kernel_big_table_path() -> None:
    """Tables above the lane limit are counted directly into the int64 table."""
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, 100_000).astype(np.float32)
    n = 1 << 17
    counts = np.zeros(2 * n + 1, np.int64)
    native.signed_counts(x, float(n), n, counts)
    expected = np.bincount((x * np.float32(n)).astype(np.int32) + n, minlength=2 * n + 1)
    np.testing.assert_array_equal(counts, expected)


@needs_native
def test_kernel_checks_its_arguments() -> None:
    x = np.ones(4, np.float32)
    counts = np.zeros(8, np.int64)
    with pytest.raises(TypeError, match="float32"):
        native.abs_counts(x.astype(np.float64), 2.0, counts)
    with pytest.raises(ValueError, match="contiguous"):
        native.abs_counts(np.ones((4, 4), np.float32)[:, 0], 2.0, counts)
    with pytest.raises(TypeError, match="int64"):
        native.abs_counts(x, 2.0, counts.astype(np.int32))
    with pytest.raises(ValueError, match="writable|read-only"):
        ro = counts.copy()
        ro.flags.writeable = False
        native.abs_counts(x, 2.0, ro)
    for scale in (0.0, -1.0, float("nan"), float("inf"), 0.1):  # 0.1 is not a float32 value
        with pytest.raises(ValueError, match="scale"):
            native.abs_counts(x, scale, counts)
    with pytest.raises(ValueError, match="offset"):
        native.signed_counts(x, 2.0, 8, counts)
    with pytest.raises(ValueError, match="offset"):
        native.signed_counts(x, 2.0, -1, counts)
    assert counts.sum() == 0
