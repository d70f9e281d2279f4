"""The engine runner's pure parts: input checks and latency statistics."""

from __future__ import annotations

import pytest

from quant.backends.tensorrt.runner import LatencyStats, check_input
from quant.errors import DataError


def test_check_input_accepts() -> None:
    check_input("x", (8, 3, 4, 4), (-1, 3, 4, 4), (1, 3, 4, 4), (32, 3, 4, 4))
    check_input("x", (2, 16), (2, 16), None, None)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((8, 3, 4), r"input 'x' has 3 dimensions \(8, 3, 4\), the engine expects 4 \(\?x3x4x4\)"),
        ((8, 1, 4, 4), r"input 'x': dimension 1 is 1, the engine expects 3"),
        ((64, 3, 4, 4), r"outside the engine's profile \[1x3x4x4 \.\. 32x3x4x4\]; rebuild with wider --shapes"),
    ],
)
def test_check_input_errors(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_input("x", shape, (-1, 3, 4, 4), (1, 3, 4, 4), (32, 3, 4, 4))


def test_latency_stats() -> None:
    assert LatencyStats.of([]) is None
    s = LatencyStats.of([1.0, 2.0, 3.0, 4.0, 10.0])
    assert s is not None
    assert s.count == 5 and s.mean_ms == 4.0 and s.median_ms == 3.0
    assert s.min_ms == 1.0 and s.max_ms == 10.0
    assert s.p90_ms == pytest.approx(7.6)
    assert s.to_dict()["median_ms"] == 3.0
