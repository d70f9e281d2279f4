"""The two TensorRT flavours quant builds with, and what each installed version can do.

* ``tensorrt``: NVIDIA TensorRT 8.6-11.x (module ``tensorrt``, extra ``quant[tensorrt]``). Builds
  need the GPU the engine is for. 8.6-10.x have implicit INT8 (calibrators, caches); 11.x is
  strongly typed only.
* ``tensorrt-rtx``: TensorRT for RTX (module ``tensorrt_rtx``, extra ``quant[tensorrt-rtx]``, real
  wheels on PyPI). The same Python API in its strongly typed, explicit-quantization form (like
  TensorRT 11: no calibrators, no precision flags); builds ahead of time for a list of target
  compute capabilities, on a machine without a GPU.

The strongly typed Q/DQ build is one code path (:mod:`quant.backends.tensorrt.builder`) that asks
a :class:`Capabilities` what the installed module supports. This module is pure except
:func:`import_flavor`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from quant.backends.tensorrt.versions import MIN_SUPPORTED, TrtVersion
from quant.errors import BackendUnavailableError, UsageError

log = logging.getLogger(__name__)

FlavorName = Literal["tensorrt", "tensorrt-rtx"]

#: Compute capabilities TensorRT-RTX can build for (``trt.ComputeCapability`` members), quant's
#: spelling first. ``current`` means the GPU of the building machine.
RTX_COMPUTE_CAPABILITIES: dict[str, str] = {
    "7.5": "SM75",
    "8.0": "SM80",
    "8.6": "SM86",
    "8.9": "SM89",
    "12.0": "SM120",
    "12.1": "SM121",
    "current": "CURRENT",
}
#: Where TensorRT-RTX 1.7 engines load (its deserializer lists these; 9.0, e.g. H100/H200, is not
#: among them).
RTX_RUNTIME_COMPUTE_CAPABILITIES: tuple[str, ...] = ("8.0", "8.6", "8.9", "12.0", "12.1")

RTX_MIN_SUPPORTED = TrtVersion(1, 0)


@dataclass(frozen=True)
class Flavor:
    """One TensorRT flavour: its module, how to install it, how to name it."""

    name: FlavorName
    module: str
    label: str
    missing: str

    @property
    def backend(self) -> str:
        """The ``--backend`` value that selects it."""
        return self.name


TENSORRT = Flavor(
    name="tensorrt",
    module="tensorrt",
    label="TensorRT",
    missing=(
        "TensorRT is not installed: pip install 'quant[tensorrt]' on a machine with an NVIDIA GPU "
        "(TensorRT 8.6 or newer)"
    ),
)
TENSORRT_RTX = Flavor(
    name="tensorrt-rtx",
    module="tensorrt_rtx",
    label="TensorRT-RTX",
    missing="TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]' (no GPU needed to build engines)",
)
FLAVORS: dict[str, Flavor] = {TENSORRT.name: TENSORRT, TENSORRT_RTX.name: TENSORRT_RTX}


def flavor_of(name: str) -> Flavor:
    """The flavour called ``name`` (``tensorrt`` / ``tensorrt-rtx``; ``tensorrt_rtx`` too)."""
    flavor = FLAVORS.get(name.replace("_", "-"))
    if flavor is None:
        raise UsageError(f"unknown TensorRT flavour '{name}'; expected one of {', '.join(FLAVORS)}")
    return flavor


@dataclass(frozen=True)
class Capabilities:
    """What one installed TensorRT flavour and version can do (pure, unit-tested)."""

    flavor: Flavor
    version: TrtVersion

    @property
    def describe(self) -> str:
        """``TensorRT 10.3.0`` / ``TensorRT-RTX 1.7.1``."""
        return f"{self.flavor.label} {self.version.short}"

    @property
    def is_rtx(self) -> bool:
        return self.flavor.name == "tensorrt-rtx"

    @property
    def has_implicit_int8(self) -> bool:
        """INT8 calibrators, calibration caches and ``set_dynamic_range`` (TensorRT 8.6-10.x)."""
        return not self.is_rtx and self.version.has_implicit_int8

    @property
    def has_precision_flags(self) -> bool:
        """``BuilderFlag.FP16`` / ``INT8`` (TensorRT < 11)."""
        return not self.is_rtx and self.version.has_precision_flags

    @property
    def always_strongly_typed(self) -> bool:
        return self.is_rtx or self.version.always_strongly_typed

    @property
    def needs_explicit_batch_flag(self) -> bool:
        return not self.is_rtx and self.version.needs_explicit_batch_flag

    @property
    def has_compute_capabilities(self) -> bool:
        """Target GPUs are chosen in the builder config (``set_compute_capability``)."""
        return self.is_rtx

    @property
    def has_timing_cache(self) -> bool:
        """Builder timing caches (TensorRT-RTX: no-ops since 1.2; its runtime cache keeps the
        kernels it compiles just in time on the GPU instead)."""
        return not self.is_rtx

    @property
    def builds_without_gpu(self) -> bool:
        """Engines are built ahead of time, with no GPU or driver on the building machine."""
        return self.is_rtx

    @property
    def engine_compatibility_hint(self) -> str:
        if self.is_rtx:
            return (
                "TensorRT-RTX engines load with the TensorRT-RTX version that built them, on a GPU "
                "of their target compute capabilities"
            )
        return "engines only load with the TensorRT version and GPU that built them"


def capabilities(flavor: str | Flavor, version: TrtVersion | str) -> Capabilities:
    """:class:`Capabilities` of ``flavor`` at ``version`` (pure)."""
    f = flavor if isinstance(flavor, Flavor) else flavor_of(flavor)
    v = version if isinstance(version, TrtVersion) else TrtVersion.parse(version)
    return Capabilities(f, v)


def parse_compute_capabilities(text: str | None) -> tuple[str, ...]:
    """``"8.9,12.0"`` / ``"sm89,sm120"`` / ``"current"`` to quant's spelling (``("8.9", "12.0")``).

    Empty or None: () (TensorRT-RTX's own default set). ``current`` must stand alone.
    """
    if text is None or not str(text).strip():
        return ()
    out: list[str] = []
    for raw in str(text).split(","):
        item = raw.strip().lower()
        if item.startswith("sm_") or item.startswith("sm"):
            digits = item.removeprefix("sm_").removeprefix("sm")
            item = f"{digits[:-1]}.{digits[-1]}" if digits.isdigit() and len(digits) >= 2 else item
        if item not in RTX_COMPUTE_CAPABILITIES:
            known = ", ".join(RTX_COMPUTE_CAPABILITIES)
            raise UsageError(f"--compute-capability: '{raw.strip()}' is not one TensorRT-RTX builds for; use some of {known}")
        if item in out:
            raise UsageError(f"--compute-capability names {item} twice")
        out.append(item)
    if "current" in out and len(out) > 1:
        raise UsageError("--compute-capability current stands alone (the GPU of this machine); drop the others")
    return tuple(out)


def import_flavor(flavor: str | Flavor) -> tuple[ModuleType, Capabilities]:
    """Import the flavour's module; BackendUnavailableError (one line, with the install command)
    when it is missing, is not the real module, or is too old."""
    f = flavor if isinstance(flavor, Flavor) else flavor_of(flavor)
    if f.name == "tensorrt":
        from quant.backends.tensorrt import import_tensorrt

        trt = import_tensorrt()
        return trt, capabilities(f, TrtVersion.parse(trt.__version__))
    try:
        trt = importlib.import_module(f.module)
    except ImportError as exc:
        raise BackendUnavailableError(f.missing) from exc
    except OSError as exc:  # its shared libraries failed to load
        raise BackendUnavailableError(f"{f.missing}; importing {f.module} failed: {exc}") from exc
    if not hasattr(trt, "Builder") or not isinstance(getattr(trt, "__version__", None), str):
        raise BackendUnavailableError(f.missing)
    version = TrtVersion.parse(trt.__version__)
    if version < RTX_MIN_SUPPORTED:
        raise BackendUnavailableError(f"TensorRT-RTX {version} is too old; pip install -U 'quant[tensorrt-rtx]'")
    return trt, capabilities(f, version)


def flavor_available(flavor: str | Flavor) -> bool:
    """True when :func:`import_flavor` succeeds."""
    try:
        import_flavor(flavor)
    except BackendUnavailableError:
        return False
    return True


__all__ = [
    "FLAVORS",
    "MIN_SUPPORTED",
    "RTX_COMPUTE_CAPABILITIES",
    "RTX_RUNTIME_COMPUTE_CAPABILITIES",
    "TENSORRT",
    "TENSORRT_RTX",
    "Capabilities",
    "Flavor",
    "FlavorName",
    "capabilities",
    "flavor_available",
    "flavor_of",
    "import_flavor",
    "parse_compute_capabilities",
]
