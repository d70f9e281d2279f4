"""Subclasses of TensorRT's INT8 calibrator classes (TensorRT 8.6-10.x implicit quantization only;
TensorRT 11 and TensorRT-RTX have no calibrators). The logger bridge, which both flavours need,
is :func:`quant.backends.tensorrt.network.make_logger`.

Imports tensorrt at module level, so import this module only after
:func:`quant.backends.tensorrt.import_tensorrt` succeeded (``calibrator.create_calibrator`` does). Each class explicitly calls its TensorRT base
``__init__``, as the TensorRT Python API requires for classes it calls back into.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import tensorrt as trt

if TYPE_CHECKING:
    from typing_extensions import Buffer, Self

    from quant.backends.tensorrt.calibrator import CalibratorCore

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


__all__ = ["EntropyCalibrator", "EntropyCalibrator2", "MinMaxCalibrator", "make_calibrator"]
