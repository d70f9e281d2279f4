"""TensorRT versions and what each one can do (pure: no TensorRT import).

quant supports TensorRT 8.6 to 11.x. What changes between them, for quant:

- 8.6 to 10.x: implicit quantization (INT8 calibrators, calibration caches, ``set_dynamic_range``)
  besides explicit Q/DQ quantization; precision builder flags (FP16, INT8). The implicit API is
  deprecated from 10.1, the precision flags from 10.12; both still work until 11.
- 11.x: implicit quantization and the precision flags are gone. Networks are always strongly
  typed: INT8 comes only from Q/DQ nodes, FP16 only from the model's own types.
- Before 10.0 an ONNX network needs the EXPLICIT_BATCH creation flag; from 10.0 it is implied.
- The calibration cache header carries the version as major*1000+minor*100+patch (7.x, 8.x) or
  major*10000+minor*100+patch (10.x); :func:`quant.cache.trt.encode_trt_version` computes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from quant.errors import UsageError

_VERSION_RE = re.compile(r"\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+\-_].*)?\s*")


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version: major.minor.patch.build (build 0 when unknown)."""

    major: int
    minor: int
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """``"10.3.0.26"``, ``"8.6.1"``, ``"10.3"`` (also ``"10.3.0.post1"`` style suffixes)."""
        m = _VERSION_RE.fullmatch(str(text))
        if m is None:
            raise UsageError(
                f"'{text}' is not a TensorRT version; expected something like '10.3.0' or '8.6.1'"
            )
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 0))

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        return f"{base}.{self.build}" if self.build else base

    @property
    def short(self) -> str:
        """``major.minor.patch`` (what engines and caches are tied to)."""
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def cache_header_number(self) -> int:
        """The version number TensorRT writes in a calibration cache header (8.6.1 -> 8601,
        10.3.0 -> 100300)."""
        from quant.cache.trt import encode_trt_version

        return encode_trt_version(self.short)

    # -- capabilities -------------------------------------------------------------------------

    @property
    def supported(self) -> bool:
        """quant supports TensorRT 8.6 and newer."""
        return self >= MIN_SUPPORTED

    @property
    def has_implicit_int8(self) -> bool:
        """INT8 calibrators, calibration caches and ``set_dynamic_range`` (removed in 11)."""
        return self.major < 11

    @property
    def has_precision_flags(self) -> bool:
        """``BuilderFlag.FP16`` / ``INT8`` (removed in 11: networks are strongly typed)."""
        return self.major < 11

    @property
    def always_strongly_typed(self) -> bool:
        return self.major >= 11

    @property
    def needs_explicit_batch_flag(self) -> bool:
        """``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is required for ONNX before 10.0."""
        return self.major < 10

    @property
    def has_engine_inspector(self) -> bool:
        """``ICudaEngine.create_engine_inspector`` exists from 8.2."""
        return self >= TrtVersion(8, 2)


MIN_SUPPORTED = TrtVersion(8, 6)


__all__ = ["MIN_SUPPORTED", "TrtVersion"]
