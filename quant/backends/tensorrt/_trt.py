"""Subclasses of TensorRT's Python classes: the INT8 calibrators and a logger bridge.

Imports tensorrt at module level, so import this module only after
:func:`quant.backends.tensorrt.import_tensorrt` succeeded (``calibrator.create_calibrator`` and
``make_logger`` do). Each class explicitly calls its TensorRT base ``__init__``, as the TensorRT
Python API requires for classes it calls back into.
"""

from __future__ import annotations

import logging
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

import tensorrt as trt

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    from quant.backends.tensorrt.calibrator import CalibratorCore

log = logging.getLogger("quant.backends.tensorrt")


# --------------------------------------------------------------------------------------------
# Calibrators: thin shells over CalibratorCore. get_batch returns [] at the end (the documented
# equivalent of None, and the type the stubs give). read_calibration_cache returns None when
# there is no usable cache, as TensorRT documents ("A cache object or None if there is no data")
# and its binding checks, but the stubs' return type (Buffer) omits None: hence the ignore
# (unused-ignore: plain mypy runs without the stubs see an untyped base class).
# --------------------------------------------------------------------------------------------


class _CoreDelegate:
    """The calibrator methods TensorRT calls, delegated to a :class:`CalibratorCore`. Mixed in
    before the TensorRT base class so its methods are the Python overrides TensorRT finds."""

    core: CalibratorCore

    def get_batch_size(self) -> int:
        return self.core.get_batch_size()

    def get_batch(self, names: list[str]) -> list[int]:
        return self.core.get_batch(names) or []

    def read_calibration_cache(self) -> bytes | None:
        return self.core.read_calibration_cache()

    def write_calibration_cache(self, cache: Buffer) -> None:
        self.core.write_calibration_cache(bytes(memoryview(cache)))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.core.close()


class EntropyCalibrator2(_CoreDelegate, trt.IInt8EntropyCalibrator2):  # type: ignore[misc, unused-ignore]  # None-returning read: see above
    """``IInt8EntropyCalibrator2``: TensorRT's recommended calibrator (cache header EntropyCalibration2)."""

    def __init__(self, core: CalibratorCore) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        self.core = core


class MinMaxCalibrator(_CoreDelegate, trt.IInt8MinMaxCalibrator):  # type: ignore[misc, unused-ignore]  # None-returning read: see above
    """``IInt8MinMaxCalibrator`` (cache header MinMaxCalibration)."""

    def __init__(self, core: CalibratorCore) -> None:
        trt.IInt8MinMaxCalibrator.__init__(self)
        self.core = core


class EntropyCalibrator(_CoreDelegate, trt.IInt8EntropyCalibrator):  # type: ignore[misc, unused-ignore]  # None-returning read: see above
    """``IInt8EntropyCalibrator``, the legacy entropy calibrator (cache header EntropyCalibration)."""

    def __init__(self, core: CalibratorCore) -> None:
        trt.IInt8EntropyCalibrator.__init__(self)
        self.core = core


def make_calibrator(core: CalibratorCore) -> trt.IInt8Calibrator:
    """The calibrator class of ``core.kind`` around ``core``."""
    if core.kind == "entropy2":
        return EntropyCalibrator2(core)
    if core.kind == "minmax":
        return MinMaxCalibrator(core)
    return EntropyCalibrator(core)


# --------------------------------------------------------------------------------------------
# Logger
# --------------------------------------------------------------------------------------------


class LoggingBridge(trt.ILogger):
    """Forward TensorRT's messages to ``logging`` (errors and warnings as such, info and verbose
    as debug) and remember the last errors for exception messages."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: deque[str] = deque(maxlen=8)

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
            self.errors.append(msg)
            log.error("TensorRT: %s", msg)
        elif severity == trt.ILogger.Severity.WARNING:
            log.warning("TensorRT: %s", msg)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("TensorRT: %s", msg)

    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None


def make_logger() -> LoggingBridge:
    return LoggingBridge()


__all__ = ["EntropyCalibrator", "EntropyCalibrator2", "LoggingBridge", "MinMaxCalibrator", "make_calibrator", "make_logger"]
