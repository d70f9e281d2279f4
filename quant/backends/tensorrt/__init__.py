"""The TensorRT backend: INT8 calibrators and caches (TensorRT 8.6-10.x), explicit Q/DQ engines
(10.x/11.x and TensorRT-RTX, one strongly typed build path parameterised by the flavour, see
:mod:`quant.backends.tensorrt.flavors`), FP16/FP32 engines, an engine runner and engine inspection.

Importing this package does not import TensorRT or cuda-python; every function that needs them
calls :func:`import_tensorrt` (or :func:`quant.backends.tensorrt.cuda.import_cudart`) first, which
raises the one-line :class:`~quant.errors.BackendUnavailableError` when they are missing.

Public API (imported lazily on first use)::

    from quant.backends.tensorrt import EngineBuildOptions, build_engine, TrtRunner, inspect_engine
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import TYPE_CHECKING, Any

from quant.errors import BackendUnavailableError

if TYPE_CHECKING:
    from quant.backends.tensorrt.builder import EngineBuildResult, build_engine
    from quant.backends.tensorrt.inspect import (
        EngineInspection,
        inspect_engine,
        parse_engine_information,
        render_engine_inspection,
    )
    from quant.backends.tensorrt.options import EngineBuildOptions, ShapeProfile, parse_shape_spec
    from quant.backends.tensorrt.runner import TrtRunner
    from quant.backends.tensorrt.versions import TrtVersion

log = logging.getLogger(__name__)

TRT_MISSING = (
    "TensorRT is not installed: pip install 'quant[tensorrt]' on a machine with an NVIDIA GPU "
    "(TensorRT 8.6 or newer)"
)

_trt_module: ModuleType | None = None


def import_tensorrt() -> ModuleType:
    """Import and return the ``tensorrt`` module; BackendUnavailableError if it is not usable.

    Checks that the module is the real one (the ``tensorrt-stubs`` package installs an importable
    namespace package of type stubs only) and that it is TensorRT 8.6 or newer.
    """
    global _trt_module
    if _trt_module is not None:
        return _trt_module
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailableError(TRT_MISSING) from exc
    except OSError as exc:  # its shared libraries (libnvinfer) failed to load
        raise BackendUnavailableError(f"{TRT_MISSING}; importing tensorrt failed: {exc}") from exc
    if not hasattr(trt, "Builder") or not isinstance(getattr(trt, "__version__", None), str):
        log.debug("'import tensorrt' found %r, which is not TensorRT (type stubs only?)", trt)
        raise BackendUnavailableError(TRT_MISSING)
    from quant.backends.tensorrt.versions import MIN_SUPPORTED, TrtVersion

    version = TrtVersion.parse(trt.__version__)
    if version < MIN_SUPPORTED:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: quant needs TensorRT {MIN_SUPPORTED.short} or newer; "
            f"pip install -U 'quant[tensorrt]'"
        )
    _trt_module = trt
    return trt


def tensorrt_available() -> bool:
    """True when :func:`import_tensorrt` succeeds (for skips and capability reports)."""
    try:
        import_tensorrt()
    except BackendUnavailableError:
        return False
    return True


def tensorrt_rtx_available() -> bool:
    """True when TensorRT-RTX (``tensorrt_rtx``) imports: engines can be built here, GPU or not."""
    from quant.backends.tensorrt.flavors import flavor_available

    return flavor_available("tensorrt-rtx")


def installed_version() -> TrtVersion:
    """The installed TensorRT's version (BackendUnavailableError when there is none)."""
    from quant.backends.tensorrt.versions import TrtVersion

    return TrtVersion.parse(import_tensorrt().__version__)


_LAZY = {
    "EngineBuildOptions": "quant.backends.tensorrt.options",
    "ShapeProfile": "quant.backends.tensorrt.options",
    "parse_shape_spec": "quant.backends.tensorrt.options",
    "build_engine": "quant.backends.tensorrt.builder",
    "EngineBuildResult": "quant.backends.tensorrt.builder",
    "TrtRunner": "quant.backends.tensorrt.runner",
    "inspect_engine": "quant.backends.tensorrt.inspect",
    "EngineInspection": "quant.backends.tensorrt.inspect",
    "parse_engine_information": "quant.backends.tensorrt.inspect",
    "render_engine_inspection": "quant.backends.tensorrt.inspect",
    "TrtVersion": "quant.backends.tensorrt.versions",
    "import_flavor": "quant.backends.tensorrt.flavors",
    "check_with_tensorrt": "quant.backends.tensorrt.check",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "TRT_MISSING",
    "EngineBuildOptions",
    "EngineBuildResult",
    "EngineInspection",
    "ShapeProfile",
    "TrtRunner",
    "TrtVersion",
    "build_engine",
    "import_tensorrt",
    "inspect_engine",
    "installed_version",
    "parse_engine_information",
    "parse_shape_spec",
    "render_engine_inspection",
    "tensorrt_available",
    "tensorrt_rtx_available",
]
