"""Fixtures of the reliability suite: one calibrated demo cache shared (copied) by many tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quant.demo import demo_model_path


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return demo_model_path()


@pytest.fixture(scope="session")
def _demo_cache_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo calibrated once (cache, sidecar, statistics) for the whole session."""
    from quant import api
    from quant.config import DataOptions

    out = tmp_path_factory.mktemp("demo-cache")
    api.calibrate(None, DataOptions("demo:calib"), cache=out / "model.cache")
    return out


@pytest.fixture
def demo_cache(_demo_cache_master: Path, tmp_path: Path) -> Path:
    """A private copy of the calibrated demo's files in ``tmp_path / "out"``; returns the cache."""
    out = tmp_path / "out"
    shutil.copytree(_demo_cache_master, out)
    return out / "model.cache"
