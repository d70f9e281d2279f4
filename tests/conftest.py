"""Suite-wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _restore_quant_logger() -> Iterator[None]:
    """The CLI configures the 'quant' logger (handler, level); undo it after every test so
    tests that read log records with caplog see the default configuration."""
    logger = logging.getLogger("quant")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
