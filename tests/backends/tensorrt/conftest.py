"""Fixtures of the TensorRT backend tests, and the skips of the ``tensorrt`` / ``cuda`` markers.

Tests marked ``tensorrt`` need the real TensorRT Python package and an NVIDIA GPU; tests marked
``cuda`` need cuda-python and a GPU. Both skip with the reason otherwise (note: ``import
tensorrt`` succeeds wherever ``tensorrt-stubs`` is installed, so the check goes through
:func:`quant.backends.tensorrt.import_tensorrt`, which tells the stubs from the real thing).
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
