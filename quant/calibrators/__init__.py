"""quant.calibrators: streaming statistics, the four amax methods, calibration over ONNX Runtime.

Importing this package is cheap (NumPy only): ONNX, ONNX Runtime and tqdm are imported inside
the functions of :mod:`quant.calibrators.calibrate` that need them.
"""

from quant.calibrators.calibrate import calibrate, collect_statistics
from quant.calibrators.calibrator import Calibrator
from quant.calibrators.methods import (
    METHODS,
    CalibConfig,
    amax_entropy,
    amax_minmax,
    amax_mse,
    amax_percentile,
    compute_amax,
)
from quant.calibrators.result import CalibrationResult
from quant.calibrators.stats import StatsCollector, TensorStats

__all__ = [
    "METHODS",
    "CalibConfig",
    "CalibrationResult",
    "Calibrator",
    "StatsCollector",
    "TensorStats",
    "amax_entropy",
    "amax_minmax",
    "amax_mse",
    "amax_percentile",
    "calibrate",
    "collect_statistics",
    "compute_amax",
]
