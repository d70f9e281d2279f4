"""Helpers shared by the quant.cache tests (imported by module name, like the other *_fixtures)."""

from __future__ import annotations

from quant.calibrators.result import CalibrationResult

# Values that float32 cannot hold exactly: the sidecar must keep them, the cache cannot.
AMAX = {
    "input": 2.6399999999999997,
    "conv1:0": 6.000000123,
    "block 1/add: out": 0.1,
    "(Unnamed Layer* 37) [Constant]_output": 1.0002,
}


def make_result(method: str = "entropy", amax: dict[str, float] | None = None) -> CalibrationResult:
    return CalibrationResult(
        method=method,
        params={"num_bins": 2048} if method != "percentile" else {"percentile": 99.99, "num_bins": 2048},
        amax=dict(AMAX if amax is None else amax),
        no_range=("dead",),
        num_samples=64,
        model_fingerprint={"graph": "g" * 64, "weights": "w" * 64},
        data_fingerprint="d" * 64,
        tensors_scope="all",
        created="2025-01-31T12:00:00+00:00",
    )
