"""Fixtures for the quant.cache tests."""

from __future__ import annotations

import pytest
from cache_fixtures import make_result

from quant.calibrators.result import CalibrationResult


@pytest.fixture
def result() -> CalibrationResult:
    return make_result()
