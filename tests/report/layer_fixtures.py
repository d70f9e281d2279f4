"""Hand-made layer errors and calibration statistics for the report's per-layer sections (no model runs)."""

from __future__ import annotations

import numpy as np

from quant.calibrators.stats import StatsCollector, TensorStats
from quant.eval.layers import LayerError
from quant.eval.metrics import FidelityMetrics


def fidelity(sqnr: float | None, *, exact: bool = False, output: str = "t", samples: int = 256) -> FidelityMetrics:
    """A fidelity with ``sqnr`` dB (None and not exact: undefined)."""
    return FidelityMetrics(
        output=output,
        num_samples=samples,
        num_elements=samples * 100,
        cosine=1.0 if exact else 0.99,
        mean_sample_cosine=1.0 if exact else 0.98,
        min_sample_cosine=1.0 if exact else 0.9,
        sqnr_db=None if exact else sqnr,
        exact=exact,
        mean_rel_error=0.0 if exact else 0.05,
        max_abs_error=0.0 if exact else 0.7,
    )


def layer(
    name: str,
    local: float | None,
    in_model: float | None,
    *,
    inputs: tuple[str, ...] | None = None,
    position: int = 0,
    op_type: str = "Conv",
    local_exact: bool = False,
    has_local: bool = True,
) -> LayerError:
    return LayerError(
        layer=name,
        op_type=op_type,
        tensor=f"{name}_out",
        inputs=inputs if inputs is not None else (f"{name}_in",),
        position=position,
        fidelity=fidelity(in_model, output=f"{name}_out"),
        local=fidelity(local, exact=local_exact, output=f"{name}_out") if has_local else None,
    )


def three_layers() -> list[LayerError]:
    """conv_a (fine), conv_b (destroyed by an outlier), fc (inherits the damage)."""
    return [
        layer("conv_a", 41.0, 41.0, position=0),
        layer("conv_b", 3.5, 3.4, position=1),
        layer("fc", 38.0, 4.0, position=2, op_type="Gemm"),
    ]


def stats_of(values: np.ndarray, num_bins: int = 2048) -> TensorStats:
    c = StatsCollector(num_bins)
    c.collect("t", values)
    return c.stats()["t"]


def outlier_stats(seed: int = 0) -> dict[str, TensorStats]:
    """Statistics of the three layers' inputs; conv_b's input has one value of 500."""
    rng = np.random.default_rng(seed)
    with_outlier = np.abs(rng.standard_normal(20_000)).astype(np.float32)
    with_outlier[7] = 500.0
    return {
        "conv_a_in": stats_of(rng.standard_normal(10_000).astype(np.float32)),
        "conv_b_in": stats_of(with_outlier),
        "fc_in": stats_of(np.abs(rng.standard_normal(5_000)).astype(np.float32) * 3),
    }
