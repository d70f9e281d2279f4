"""The streaming calibrator object: collect per batch, compute ranges at the end."""

from __future__ import annotations

import numpy as np

from quant.calibrators.methods import CalibConfig, compute_amax
from quant.calibrators.stats import StatsCollector, TensorStats


class Calibrator:
    """``collect(tensor_name, batch)`` per batch, ``compute()`` at the end, ``reset()`` to start over.

    Built on one :class:`StatsCollector` shared by all methods, so the method (but not the
    histogram resolution ``num_bins``) can be changed after collection: ``compute(other_config)``.
    Memory is O(tensors x bins); batches are never kept.
    """

    def __init__(self, config: CalibConfig | None = None) -> None:
        self._config = config if config is not None else CalibConfig()
        self._collector = StatsCollector(self._config.num_bins)

    @property
    def config(self) -> CalibConfig:
        return self._config

    @property
    def collector(self) -> StatsCollector:
        """The underlying statistics (e.g. to merge shards or save them)."""
        return self._collector

    def collect(self, tensor_name: str, batch: np.ndarray, batch_index: int | None = None) -> None:
        """Reduce one batch of ``tensor_name`` (CalibrationError on NaN / inf values)."""
        self._collector.collect(tensor_name, batch, batch_index)

    def reset(self) -> None:
        """Forget everything collected."""
        self._collector.reset()

    def stats(self) -> dict[str, TensorStats]:
        return self._collector.stats()

    def compute(self, config: CalibConfig | None = None) -> dict[str, float | None]:
        """amax per tensor with this calibrator's method, or with ``config``; None = no range."""
        return compute_amax(self._collector.stats(), config if config is not None else self._config)
