"""GPU memory, streams and events through cuda-python's runtime bindings.

Thin wrappers over ``cuda.bindings.runtime`` (cuda-python >= 12.6; older releases expose the same
functions as ``cuda.cudart``). Every binding returns a tuple ``(error, *values)``; :func:`check`
turns a non-success error into a one-line :class:`CudaError` (or BackendUnavailableError when
there is no usable GPU) and returns the values.

Objects own their resources and free them in ``close()`` / on ``__exit__``; they never rely on
``__del__`` (freeing at interpreter shutdown can run after the CUDA driver has been torn down).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

import numpy as np

from quant.backends.tensorrt.sidecar import GpuInfo
from quant.errors import BackendUnavailableError, QuantError

log = logging.getLogger(__name__)

CUDA_MISSING = (
    "cuda-python is not installed: pip install 'quant[tensorrt]' on a machine with an NVIDIA GPU "
    "(TensorRT 8.6 or newer)"
)

# Errors that mean "no usable GPU here" rather than "this call went wrong".
_NO_GPU_ERRORS = frozenset(
    {
        "cudaErrorNoDevice",
        "cudaErrorInsufficientDriver",
        "cudaErrorInitializationError",
        "cudaErrorDevicesUnavailable",
        "cudaErrorSystemDriverMismatch",
        "cudaErrorCompatNotSupportedOnDevice",
        "cudaErrorInvalidDevice",
    }
)


class CudaError(QuantError):
    """A CUDA runtime call failed (out of memory, invalid argument, a kernel fault...)."""


_cudart: Any = None


def import_cudart() -> Any:
    """The cuda-python runtime module, imported once; BackendUnavailableError if missing."""
    global _cudart
    if _cudart is None:
        try:
            from cuda.bindings import runtime as rt
        except ImportError:
            try:
                from cuda import cudart as rt  # cuda-python < 12.6
            except ImportError as exc:
                raise BackendUnavailableError(CUDA_MISSING) from exc
        _cudart = rt
    return _cudart


def _error_text(rt: Any, err: Any) -> tuple[str, str]:
    name = getattr(err, "name", None) or str(err)
    try:
        _, desc = rt.cudaGetErrorString(err)
        text = desc.decode() if isinstance(desc, bytes) else str(desc)
    except Exception:  # the error string is a nicety; never mask the real error
        text = ""
    return str(name), text


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result; raise on error.

    Returns None, the single value, or a tuple of values.
    """
    rt = import_cudart()
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name, desc = _error_text(rt, err)
        detail = f"{name}: {desc}" if desc else name
        if name in _NO_GPU_ERRORS:
            raise BackendUnavailableError(
                f"no usable NVIDIA GPU: {what} failed ({detail}); TensorRT needs a machine with an "
                f"NVIDIA GPU and a recent driver"
            )
        if name == "cudaErrorMemoryAllocation":
            raise CudaError(f"out of GPU memory in {what} ({detail}); use a smaller batch size or free the GPU")
        raise CudaError(f"CUDA call {what} failed ({detail})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def device_count() -> int:
    """Number of CUDA devices; 0 when there is no driver or no device."""
    rt = import_cudart()
    err, n = rt.cudaGetDeviceCount()
    if int(err) != 0:
        return 0
    return int(n)


def set_device(device: int) -> None:
    """Make ``device`` current (and initialise its primary context, which TensorRT uses)."""
    rt = import_cudart()
    n = device_count()
    if n == 0:
        check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")  # raises the precise "no GPU" error
        raise BackendUnavailableError("no usable NVIDIA GPU: no CUDA device found; TensorRT needs one")
    if not 0 <= device < n:
        raise QuantError(f"CUDA device {device} does not exist (this machine has {n}); use --device 0..{n - 1}")
    check(rt.cudaSetDevice(device), f"cudaSetDevice({device})")


def device_info(device: int = 0) -> GpuInfo:
    """Name and compute capability of ``device``."""
    rt = import_cudart()
    props = check(rt.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    raw = props.name
    name = raw.split(b"\0", 1)[0].decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    total = int(getattr(props, "totalGlobalMem", 0) or 0)
    return GpuInfo(
        name=name.strip(),
        compute_capability=f"{int(props.major)}.{int(props.minor)}",
        memory_mb=total // (1 << 20),
    )


# --------------------------------------------------------------------------------------------
# Streams and events
# --------------------------------------------------------------------------------------------


class Stream:
    """A CUDA stream (``cudaStreamCreate``); ``handle`` is the integer TensorRT takes."""

    def __init__(self) -> None:
        self._rt = import_cudart()
        self._stream: Any = check(self._rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def raw(self) -> Any:
        return self._stream

    @property
    def handle(self) -> int:
        if self._stream is None:
            raise CudaError("CUDA stream used after close()")
        return int(self._stream)

    def synchronize(self) -> None:
        check(self._rt.cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def close(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(self._rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Event:
    """A CUDA event for GPU-side timing (``cudaEventRecord`` / ``cudaEventElapsedTime``)."""

    def __init__(self) -> None:
        self._rt = import_cudart()
        self._event: Any = check(self._rt.cudaEventCreate(), "cudaEventCreate")

    @property
    def raw(self) -> Any:
        if self._event is None:
            raise CudaError("CUDA event used after close()")
        return self._event

    def record(self, stream: Stream) -> None:
        check(self._rt.cudaEventRecord(self.raw, stream.raw), "cudaEventRecord")

    def synchronize(self) -> None:
        check(self._rt.cudaEventSynchronize(self.raw), "cudaEventSynchronize")

    def elapsed_ms_since(self, start: Event) -> float:
        """Milliseconds of GPU time between ``start`` and this event (both recorded and done)."""
        return float(check(self._rt.cudaEventElapsedTime(start.raw, self.raw), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self._event is not None:
            event, self._event = self._event, None
            check(self._rt.cudaEventDestroy(event), "cudaEventDestroy")


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class DeviceBuffer:
    """``nbytes`` of device memory from ``cudaMalloc``; ``ptr`` is the device address."""

    def __init__(self, nbytes: int) -> None:
        if nbytes < 0:
            raise CudaError(f"cannot allocate {nbytes} bytes of GPU memory")
        self._rt = import_cudart()
        self.nbytes = int(nbytes)
        # cudaMalloc(0) may return a null pointer; TensorRT rejects null tensor addresses.
        self._ptr = int(check(self._rt.cudaMalloc(max(self.nbytes, 1)), f"cudaMalloc({self.nbytes} bytes)"))

    @property
    def ptr(self) -> int:
        if not self._ptr:
            raise CudaError("GPU buffer used after free()")
        return self._ptr

    @property
    def closed(self) -> bool:
        return not self._ptr

    def _check_fits(self, nbytes: int, what: str) -> None:
        if nbytes > self.nbytes:
            raise CudaError(
                f"{what}: {nbytes} bytes do not fit in a GPU buffer of {self.nbytes} bytes"
            )

    def copy_from_host(self, array: np.ndarray, stream: Stream | None = None) -> None:
        """Copy a (C-contiguous) host array into the start of the buffer.

        With a stream the copy is queued on it; the caller keeps ``array`` alive until the stream
        is synchronized. Without one the copy is complete on return.
        """
        if not array.flags.c_contiguous:
            raise CudaError("copy to GPU needs a C-contiguous array; pass np.ascontiguousarray(array)")
        self._check_fits(array.nbytes, "copy to GPU")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(self._rt.cudaMemcpy(self.ptr, array.ctypes.data, array.nbytes, kind), "cudaMemcpy (host to device)")
        else:
            check(
                self._rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes, kind, stream.raw),
                "cudaMemcpyAsync (host to device)",
            )

    def copy_to_host(self, out: np.ndarray, stream: Stream | None = None) -> np.ndarray:
        """Copy the start of the buffer into ``out`` (C-contiguous, writable); returns ``out``.

        With a stream the copy is queued; ``out`` is valid after the stream is synchronized.
        """
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise CudaError("copy from GPU needs a writable C-contiguous array")
        self._check_fits(out.nbytes, "copy from GPU")
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(self._rt.cudaMemcpy(out.ctypes.data, self.ptr, out.nbytes, kind), "cudaMemcpy (device to host)")
        else:
            check(
                self._rt.cudaMemcpyAsync(out.ctypes.data, self.ptr, out.nbytes, kind, stream.raw),
                "cudaMemcpyAsync (device to host)",
            )
        return out

    def free(self) -> None:
        if self._ptr:
            ptr, self._ptr = self._ptr, 0
            check(self._rt.cudaFree(ptr), "cudaFree")

    def __enter__(self) -> DeviceBuffer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.free()

    def __repr__(self) -> str:
        return f"DeviceBuffer(nbytes={self.nbytes}, ptr={self._ptr:#x})"


__all__ = [
    "CUDA_MISSING",
    "CudaError",
    "DeviceBuffer",
    "Event",
    "Stream",
    "check",
    "device_count",
    "device_info",
    "import_cudart",
    "set_device",
]
