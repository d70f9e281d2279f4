"""Session fixtures for quant.eval tests (helpers live in eval_fixtures.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from eval_fixtures import N_CLASSES, N_FEATURES, linear_model


@pytest.fixture(scope="session")
def weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(N_FEATURES, N_CLASSES)).astype(np.float32), rng.normal(size=N_CLASSES).astype(
        np.float32
    )


@pytest.fixture(scope="session")
def fp32_model(weights: tuple[np.ndarray, np.ndarray]) -> onnx.ModelProto:
    return linear_model(*weights)


@pytest.fixture(scope="session")
def perturbed_model(weights: tuple[np.ndarray, np.ndarray]) -> onnx.ModelProto:
    """The same model with weights perturbed by ~5 %: a stand-in for a quantized copy."""
    w, b = weights
    rng = np.random.default_rng(1)
    return linear_model(w + 0.05 * rng.normal(size=w.shape).astype(np.float32), b)


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, N_FEATURES)).astype(np.float32)
    labels = rng.integers(0, N_CLASSES, size=40).astype(np.int64)
    return x, labels
