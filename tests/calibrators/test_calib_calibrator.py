from __future__ import annotations

import numpy as np
import pytest

from quant.calibrators import CalibConfig, Calibrator
from quant.errors import CalibrationError


def test_collect_compute_reset_and_method_change() -> None:
    rng = np.random.default_rng(0)
    cal = Calibrator(CalibConfig("minmax", num_bins=512))
    assert cal.config.num_bins == 512 and cal.collector.num_bins == 512
    for _ in range(3):
        cal.collect("act", rng.standard_normal((4, 100)).astype(np.float32))
        cal.collect("off", np.zeros((4, 3), np.float32))
    ranges = cal.compute()
    absmax = cal.stats()["act"].absmax
    assert ranges == {"act": absmax, "off": None}
    # same statistics, another method afterwards
    pct = cal.compute(CalibConfig("percentile", percentile=90.0, num_bins=512))["act"]
    assert pct is not None and pct < absmax
    ent = cal.compute(CalibConfig("entropy"))["act"]
    assert ent is not None and 0 < ent <= absmax
    cal.reset()
    assert cal.compute() == {}


def test_default_config_and_error_passthrough() -> None:
    cal = Calibrator()
    assert cal.config == CalibConfig()
    with pytest.raises(CalibrationError, match="tensor 'x' has NaN values in calibration batch 5"):
        cal.collect("x", np.array([np.nan], np.float32), batch_index=5)
