"""Fixtures of the TensorRT backend tests, and the skips of the ``tensorrt`` / ``cuda`` /
``tensorrt_rtx_gpu`` markers.

Tests marked ``tensorrt`` need the real TensorRT Python package and an NVIDIA GPU; tests marked
``cuda`` need cuda-python and a GPU; tests marked ``tensorrt_rtx_gpu`` need TensorRT-RTX,
cuda-python and a GPU TensorRT-RTX engines run on (compute capability 8.0, 8.6, 8.9, 12.x). All
skip with the reason otherwise (``tensorrt_rtx`` tests need no GPU and skip only without
TensorRT-RTX, in their own modules). Note: ``import tensorrt`` succeeds wherever
``tensorrt-stubs`` is installed, so the check goes through
:func:`quant.backends.tensorrt.import_tensorrt`, which tells the stubs from the real thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from trt_fixtures import FakeCudart

from quant.backends.tensorrt import cuda as cuda_mod
from quant.errors import BackendUnavailableError

DATA = Path(__file__).parent / "data"


@functools.cache
def _cuda_skip_reason() -> str | None:
    try:
        cuda_mod.import_cudart()
    except BackendUnavailableError as exc:
        return str(exc)
    if cuda_mod.device_count() == 0:
        return "no NVIDIA GPU: cuda-python found no CUDA device"
    return None


@functools.cache
def _trt_skip_reason() -> str | None:
    from quant.backends.tensorrt import import_tensorrt

    try:
        import_tensorrt()
    except BackendUnavailableError as exc:
        return str(exc)
    return _cuda_skip_reason()


@functools.cache
def _rtx_gpu_skip_reason() -> str | None:
    """Why TensorRT-RTX engines cannot run here (None: they can)."""
    from quant.backends.tensorrt.flavors import RTX_RUNTIME_COMPUTE_CAPABILITIES, flavor_available

    if not flavor_available("tensorrt-rtx"):
        return "TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]'"
    reason = _cuda_skip_reason()
    if reason:
        return f"running TensorRT-RTX engines needs an NVIDIA GPU: {reason}"
    cc = cuda_mod.device_info(0).compute_capability
    if cc not in RTX_RUNTIME_COMPUTE_CAPABILITIES:
        return (
            f"TensorRT-RTX engines do not run on this GPU (compute capability {cc}; they run on "
            f"{', '.join(RTX_RUNTIME_COMPUTE_CAPABILITIES)})"
        )
    return None


@pytest.fixture(autouse=True)
def _runtime_markers(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("tensorrt") is not None:
        reason = _trt_skip_reason()
        if reason:
            pytest.skip(reason)
    if request.node.get_closest_marker("cuda") is not None:
        reason = _cuda_skip_reason()
        if reason:
            pytest.skip(reason)
    if request.node.get_closest_marker("tensorrt_rtx_gpu") is not None:
        reason = _rtx_gpu_skip_reason()
        if reason:
            pytest.skip(reason)


@pytest.fixture
def fake_cudart(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCudart]:
    """Replace cuda-python's runtime by :class:`FakeCudart` for the test."""
    fake = FakeCudart()
    monkeypatch.setattr(cuda_mod, "_cudart", fake)
    yield fake


@pytest.fixture
def data_dir() -> Path:
    return DATA


def _forget_trt_classes() -> None:
    """Drop quant's module of TensorRT subclasses, so the next import binds the current tensorrt."""
    import sys

    import quant.backends.tensorrt as trt_pkg

    sys.modules.pop("quant.backends.tensorrt._trt", None)
    if "_trt" in vars(trt_pkg):
        delattr(trt_pkg, "_trt")


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch, fake_cudart: FakeCudart) -> Iterator[Callable[..., ModuleType]]:
    """``fake_trt(version)`` installs :mod:`fake_tensorrt` as ``tensorrt`` (with the fake CUDA runtime)."""
    import sys

    from fake_tensorrt import make_module

    import quant.backends.tensorrt as trt_pkg

    def install(version: str = "10.3.0.26") -> ModuleType:
        _forget_trt_classes()
        mod = make_module(version)
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        monkeypatch.setattr(trt_pkg, "_trt_module", None)
        return mod

    yield install
    _forget_trt_classes()
