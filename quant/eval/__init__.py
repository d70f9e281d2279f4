"""quant.eval: streaming metrics (:mod:`quant.eval.metrics`) and the evaluation loop
(:mod:`quant.eval.evaluate`). Importing this package does not import ONNX Runtime."""

from quant.eval.evaluate import EvalResult, PrecisionResult, evaluate
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

__all__ = [
    "ClassificationAccumulator",
    "ClassificationMetrics",
    "EvalResult",
    "FidelityAccumulator",
    "FidelityMetrics",
    "LatencyStats",
    "PrecisionResult",
    "evaluate",
    "find_classifier_output",
    "is_classifier_shape",
    "summarize_latency",
]
