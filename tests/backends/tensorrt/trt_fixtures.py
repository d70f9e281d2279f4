"""Helpers for the TensorRT backend tests: a fake CUDA runtime and a tiny in-memory dataset.

:class:`FakeCudart` mimics ``cuda.bindings.runtime``: every call returns ``(error, *values)``;
"device" memory is host memory (ctypes buffers), so pointers handed to a calibrator can be read
back with ``ctypes.string_at`` and the copy logic is tested byte for byte on CPU.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from quant.datasets.base import Batch, DataSummary


class cudaError_t(enum.IntEnum):  # noqa: N801  (the name cuda-python uses)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorLaunchFailure = 719


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class Handle:
    """A stream or event handle (cuda-python's objects convert to int)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


OK = cudaError_t.cudaSuccess


class FakeCudart:
    """Enough of ``cuda.bindings.runtime`` for quant's cuda module.

    ``fail`` maps a function name to the error it returns; ``devices`` is the device count.
    """

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, *, devices: int = 1, fail: Mapping[str, Any] | None = None) -> None:
        self.devices = devices
        self.fail = dict(fail or {})
        self.buffers: dict[int, Any] = {}
        self.freed: list[int] = []
        self.calls: list[str] = []
        self.copies: list[tuple[str, int]] = []
        self._ids = itertools.count(1)
        self.current_device: int | None = None

    def _ret(self, name: str, *values: Any) -> tuple[Any, ...]:
        self.calls.append(name)
        if name in self.fail:
            return (self.fail[name], *([None] * len(values)))
        return (OK, *values)

    # memory
    def cudaMalloc(self, size: int) -> tuple[Any, ...]:
        if "cudaMalloc" in self.fail:
            return self._ret("cudaMalloc", 0)
        buf = ctypes.create_string_buffer(size)
        ptr = ctypes.addressof(buf)
        self.buffers[ptr] = buf
        return self._ret("cudaMalloc", ptr)

    def cudaFree(self, ptr: int) -> tuple[Any, ...]:
        ret = self._ret("cudaFree")
        if ret[0] == OK:
            del self.buffers[int(ptr)]
            self.freed.append(int(ptr))
        return ret

    def cudaMemcpy(self, dst: int, src: int, count: int, kind: Any) -> tuple[Any, ...]:
        ret = self._ret("cudaMemcpy")
        if ret[0] == OK:
            ctypes.memmove(dst, src, count)
            self.copies.append((kind.name, count))
        return ret

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: Any) -> tuple[Any, ...]:
        ret = self._ret("cudaMemcpyAsync")
        if ret[0] == OK:
            ctypes.memmove(dst, src, count)
            self.copies.append((kind.name, count))
        return ret

    # streams and events
    def cudaStreamCreate(self) -> tuple[Any, ...]:
        return self._ret("cudaStreamCreate", Handle(next(self._ids)))

    def cudaStreamSynchronize(self, stream: Any) -> tuple[Any, ...]:
        return self._ret("cudaStreamSynchronize")

    def cudaStreamDestroy(self, stream: Any) -> tuple[Any, ...]:
        return self._ret("cudaStreamDestroy")

    def cudaEventCreate(self) -> tuple[Any, ...]:
        return self._ret("cudaEventCreate", Handle(next(self._ids)))

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple[Any, ...]:
        return self._ret("cudaEventRecord")

    def cudaEventSynchronize(self, event: Any) -> tuple[Any, ...]:
        return self._ret("cudaEventSynchronize")

    def cudaEventElapsedTime(self, start: Any, end: Any) -> tuple[Any, ...]:
        return self._ret("cudaEventElapsedTime", 1.25)

    def cudaEventDestroy(self, event: Any) -> tuple[Any, ...]:
        return self._ret("cudaEventDestroy")

    # devices
    def cudaGetDeviceCount(self) -> tuple[Any, ...]:
        if self.devices == 0:
            self.calls.append("cudaGetDeviceCount")
            return (cudaError_t.cudaErrorNoDevice, 0)
        return self._ret("cudaGetDeviceCount", self.devices)

    def cudaSetDevice(self, device: int) -> tuple[Any, ...]:
        ret = self._ret("cudaSetDevice")
        if ret[0] == OK:
            self.current_device = device
        return ret

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, ...]:
        props = SimpleNamespace(name=b"Fake GPU 80GB\x00\x00\x00", major=9, minor=0, totalGlobalMem=80 << 30)
        return self._ret("cudaGetDeviceProperties", props)

    def cudaGetErrorString(self, err: Any) -> tuple[Any, ...]:
        return (OK, f"text of {err.name}".encode())


class ListDataset:
    """A :class:`quant.datasets.base.Dataset` over in-memory arrays (one per input, first axis =
    samples). Counts ``batches`` calls and batches served."""

    def __init__(self, arrays: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None) -> None:
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.labels = labels
        self.batches_calls = 0
        self.batches_served = 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.arrays)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, batch_size: int) -> Iterator[Batch]:
        self.batches_calls += 1
        n = len(self)
        for start in range(0, n, batch_size):
            self.batches_served += 1
            feed = {k: v[start : start + batch_size].copy() for k, v in self.arrays.items()}
            labels = None if self.labels is None else self.labels[start : start + batch_size].copy()
            yield Batch(feed=feed, labels=labels)

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for k, v in self.arrays.items():
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    def summary(self) -> DataSummary:
        return DataSummary(source="memory", kind="npz", num_samples=len(self))


def read_pointer(ptr: int, nbytes: int) -> bytes:
    """The bytes at a (fake) device pointer."""
    return ctypes.string_at(ptr, nbytes)
