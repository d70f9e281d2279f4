"""Run TensorRT engines with the same interface as the ONNX Runtime runner.

:class:`TrtRunner` implements :class:`quant.backends.base.Runner`: ``infer(feed) -> outputs``
with numpy arrays in and out, so ``quant eval --backend tensorrt`` evaluates real engines.

- GPU buffers are allocated once, when the engine is loaded, at the largest shapes the engine
  accepts (the max shapes of optimization profile 0); tensor addresses are bound once.
- Each ``infer`` copies the inputs in on one CUDA stream, runs ``execute_async_v3``, copies the
  outputs back into fresh numpy arrays and synchronizes.
- Latency is measured as NVIDIA recommends: CUDA events recorded on the stream right before and
  after ``execute_async_v3``, so it is GPU time of the engine alone (no host-device copies, no
  Python overhead), after ``warmup`` untimed runs the first time each input shape is seen.
  ``last_latency_ms`` is the latest measurement, :meth:`TrtRunner.latency_stats` summarizes all.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.backends.base import TensorSpec
from quant.errors import DataError, ModelError, QuantError, UsageError

if TYPE_CHECKING:
    import tensorrt

    from quant.backends.tensorrt.cuda import DeviceBuffer, Event, Stream
    from quant.backends.tensorrt.network import LoggingBridge
    from quant.backends.tensorrt.sidecar import EngineSidecar

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Loading (shared with quant.backends.tensorrt.inspect)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedEngine:
    """A deserialized engine with the objects that must outlive it (runtime, logger)."""

    path: Path
    engine: tensorrt.ICudaEngine
    runtime: tensorrt.Runtime
    logger: LoggingBridge
    sidecar: EngineSidecar | None
    trt: ModuleType | None = None  # the module that loaded it (tensorrt or tensorrt_rtx)


def load_engine(
    engine_path: str | Path,
    *,
    device: int = 0,
    plugins: Sequence[str | Path] | None = None,
    check_sidecar: bool = True,
) -> LoadedEngine:
    """Deserialize ``engine_path`` after checking its sidecar against this TensorRT and GPU.

    The flavour (TensorRT or TensorRT-RTX) is the one the sidecar records (TensorRT without a
    sidecar). ``plugins``: plugin libraries to load first; None loads those the sidecar's build
    options name (when they exist). ModelError for a missing / foreign / corrupt engine.
    """
    from quant.backends.tensorrt import cuda as cu
    from quant.backends.tensorrt import network as nw
    from quant.backends.tensorrt.flavors import import_flavor
    from quant.backends.tensorrt.sidecar import check_engine_compatible, read_engine_sidecar

    path = Path(engine_path)
    sidecar = read_engine_sidecar(path) if path.is_file() else None
    trt, caps = import_flavor("tensorrt" if sidecar is None else sidecar.trt_flavor)

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"engine '{path}': no such file; build it with 'quant build --backend tensorrt'") from None
    except IsADirectoryError:
        raise ModelError(f"engine '{path}' is a directory; give the engine file") from None
    except OSError as exc:
        raise ModelError(f"engine '{path}': cannot read it ({exc.strerror or exc})") from exc
    cu.set_device(device)
    version = caps.version
    if sidecar is None:
        log.warning(
            "engine '%s' has no sidecar '%s.json': cannot check it was built with this TensorRT and GPU",
            path,
            path.name,
        )
    elif check_sidecar:
        check_engine_compatible(
            sidecar, engine=path, trt_version=str(version), gpu=cu.device_info(device), trt_flavor=caps.flavor.name
        )
    if plugins is None:
        listed = [] if sidecar is None else [Path(p) for p in sidecar.build_options.get("plugins") or ()]
        plugins = [p for p in listed if p.is_file()]
    logger = nw.make_logger(trt)
    nw.load_plugins(trt, logger, [Path(p) for p in plugins])
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise ModelError(
            f"{caps.describe} cannot load engine '{path}' ({logger.last_error() or 'not an engine?'}); "
            f"{caps.engine_compatibility_hint}: rebuild it with 'quant build --backend {caps.flavor.name}'"
        )
    return LoadedEngine(path=path, engine=engine, runtime=runtime, logger=logger, sidecar=sidecar, trt=trt)


# --------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """GPU time of ``execute_async_v3`` per ``infer`` call, in milliseconds (CUDA events)."""

    count: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats | None:
        if not samples:
            return None
        a = np.asarray(samples, dtype=np.float64)
        return cls(
            count=int(a.size),
            mean_ms=float(a.mean()),
            median_ms=float(np.median(a)),
            p90_ms=float(np.percentile(a, 90)),
            min_ms=float(a.min()),
            max_ms=float(a.max()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
        }


# --------------------------------------------------------------------------------------------
# I/O tensors
# --------------------------------------------------------------------------------------------


def dims(d: tensorrt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (-1 for dynamic dimensions)."""
    return tuple(int(d[i]) for i in range(len(d)))


@dataclass
class _IO:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for dynamic dims
    min: tuple[int, ...] | None = None
    max: tuple[int, ...] | None = None
    buffer: DeviceBuffer | None = None

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, tuple(None if d < 0 else d for d in self.shape), self.dtype)


def check_input(io_name: str, shape: tuple[int, ...], want: tuple[int, ...], lo: tuple[int, ...] | None,
                hi: tuple[int, ...] | None) -> None:
    """DataError when an input array's shape does not fit the engine (pure)."""
    if len(shape) != len(want):
        raise DataError(
            f"input '{io_name}' has {len(shape)} dimensions {shape}, the engine expects {len(want)} "
            f"({'x'.join('?' if d < 0 else str(d) for d in want)})"
        )
    for i, (got, exp) in enumerate(zip(shape, want, strict=True)):
        if exp >= 0 and got != exp:
            raise DataError(f"input '{io_name}': dimension {i} is {got}, the engine expects {exp} (shape {shape})")
    if lo is not None and hi is not None and any(not lo[i] <= shape[i] <= hi[i] for i in range(len(shape))):
        raise DataError(
            f"input '{io_name}' has shape {shape}, outside the engine's profile "
            f"[{'x'.join(map(str, lo))} .. {'x'.join(map(str, hi))}]; rebuild with wider --shapes "
            f"or use a smaller batch"
        )


# --------------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------------


class TrtRunner:
    """Run a TensorRT engine file; a :class:`quant.backends.base.Runner`.

    ``warmup``: untimed executions before the first timed one for each new input shape.
    ``plugins``: plugin libraries to load (None: those recorded in the engine's sidecar).
    ``check_sidecar``: refuse an engine whose sidecar names another TensorRT version or GPU.
    """

    def __init__(
        self,
        engine_path: str | Path,
        *,
        device: int = 0,
        warmup: int = 3,
        plugins: Sequence[str | Path] | None = None,
        check_sidecar: bool = True,
    ) -> None:
        if warmup < 0:
            raise UsageError(f"warmup must be >= 0, got {warmup}")
        from quant.backends.tensorrt import cuda as cu

        self.warmup = warmup
        self.last_latency_ms: float | None = None
        self.latencies_ms: list[float] = []
        self._warm: set[tuple[tuple[int, ...], ...]] = set()
        self._closed = False
        self._stream: Stream | None = None
        self._start: Event | None = None
        self._end: Event | None = None
        self._inputs: dict[str, _IO] = {}
        self._outputs: dict[str, _IO] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._context: tensorrt.IExecutionContext | None = None
        loaded = load_engine(engine_path, device=device, plugins=plugins, check_sidecar=check_sidecar)
        self._loaded: LoadedEngine | None = loaded
        self._logger = loaded.logger
        self.path = loaded.path
        self.sidecar = loaded.sidecar
        try:
            context = loaded.engine.create_execution_context()
            if context is None:
                raise cu.CudaError(
                    f"TensorRT could not create an execution context for '{self.path}' "
                    f"({self._logger.last_error() or 'out of GPU memory?'})"
                )
            self._context = context
            self._stream = cu.Stream()
            self._start, self._end = cu.Event(), cu.Event()
            self._bind()
        except BaseException:
            with contextlib.suppress(QuantError):  # keep the original error
                self.close()
            raise

    # -- setup --------------------------------------------------------------------------------

    @property
    def context(self) -> tensorrt.IExecutionContext:
        if self._context is None or self._closed:
            raise QuantError(f"TensorRT runner for '{self.path}' used after close()")
        return self._context

    def _bind(self) -> None:
        """Read the I/O tensors, allocate buffers at the max shapes, bind the addresses."""
        from quant.backends.tensorrt import cuda as cu

        assert self._loaded is not None and self._loaded.trt is not None
        trt = self._loaded.trt
        engine = self._loaded.engine
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            if engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
                raise ModelError(f"engine '{self.path}': I/O tensor '{name}' lives on the host (a shape tensor?); not supported")
            if engine.get_tensor_format(name) != trt.TensorFormat.LINEAR:
                raise ModelError(
                    f"engine '{self.path}': I/O tensor '{name}' has format {engine.get_tensor_format_desc(name)}; "
                    f"quant's runner needs linear (row-major) I/O: rebuild without custom I/O formats"
                )
            io = _IO(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), dims(engine.get_tensor_shape(name)))
            if mode == trt.TensorIOMode.INPUT:
                if any(d < 0 for d in io.shape):
                    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
                    io.min, io.max = dims(lo), dims(hi)
                self._inputs[name] = io
            elif mode == trt.TensorIOMode.OUTPUT:
                self._outputs[name] = io
        context = self.context
        for io in self._inputs.values():
            shape = io.max if io.max is not None else io.shape
            if any(d < 0 for d in io.shape) and not context.set_input_shape(io.name, trt.Dims(list(shape))):
                raise ModelError(f"engine '{self.path}': TensorRT rejected the max shape {shape} of input '{io.name}'")
            io.buffer = cu.DeviceBuffer(int(np.prod(shape)) * io.dtype.itemsize)
            self._set_address(context, io)
            self._shapes[io.name] = tuple(shape)
        for io in self._outputs.values():
            shape = dims(context.get_tensor_shape(io.name))
            if any(d < 0 for d in shape):
                raise ModelError(
                    f"engine '{self.path}': output '{io.name}' has a data-dependent shape {shape}, which "
                    f"quant's runner does not support"
                )
            io.buffer = cu.DeviceBuffer(int(np.prod(shape)) * io.dtype.itemsize)
            self._set_address(context, io)

    def _set_address(self, context: tensorrt.IExecutionContext, io: _IO) -> None:
        assert io.buffer is not None
        if not context.set_tensor_address(io.name, io.buffer.ptr):
            raise ModelError(
                f"engine '{self.path}': TensorRT refused the address of tensor '{io.name}' "
                f"({self._logger.last_error() or 'see the TensorRT messages above'})"
            )

    # -- Runner interface ---------------------------------------------------------------------

    def input_specs(self) -> list[TensorSpec]:
        return [io.spec for io in self._inputs.values()]

    def output_names(self) -> list[str]:
        return list(self._outputs)

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on ``feed`` (input name -> array); outputs by name, as new arrays."""
        context = self.context
        assert self._loaded is not None and self._loaded.trt is not None
        trt = self._loaded.trt
        assert self._stream is not None and self._start is not None and self._end is not None
        missing = [n for n in self._inputs if n not in feed]
        extra = [n for n in feed if n not in self._inputs]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unknown input(s) {extra}")
            raise DataError(f"engine '{self.path}': {' and '.join(parts)}; its inputs are {list(self._inputs)}")
        arrays: list[np.ndarray] = []
        for name, io in self._inputs.items():
            arr = np.ascontiguousarray(feed[name], dtype=io.dtype)
            shape = tuple(int(d) for d in arr.shape)
            check_input(name, shape, io.shape, io.min, io.max)
            if self._shapes.get(name) != shape:
                if not context.set_input_shape(name, trt.Dims(list(shape))):
                    raise DataError(f"engine '{self.path}': TensorRT rejected shape {shape} for input '{name}'")
                self._shapes[name] = shape
            assert io.buffer is not None
            io.buffer.copy_from_host(arr, self._stream)
            arrays.append(arr)  # alive until the stream is synchronized
        signature = tuple(self._shapes[n] for n in self._inputs)
        if signature not in self._warm:
            for _ in range(self.warmup):
                self._execute(context)
            self._warm.add(signature)
        self._start.record(self._stream)
        self._execute(context)
        self._end.record(self._stream)
        outputs: dict[str, np.ndarray] = {}
        for name, io in self._outputs.items():
            out = np.empty(dims(context.get_tensor_shape(name)), dtype=io.dtype)
            assert io.buffer is not None
            io.buffer.copy_to_host(out, self._stream)
            outputs[name] = out
        self._stream.synchronize()
        self.last_latency_ms = self._end.elapsed_ms_since(self._start)
        self.latencies_ms.append(self.last_latency_ms)
        return outputs

    def _execute(self, context: tensorrt.IExecutionContext) -> None:
        assert self._stream is not None
        if not context.execute_async_v3(self._stream.handle):
            raise QuantError(
                f"TensorRT failed to run engine '{self.path}': "
                f"{self._logger.last_error() or 'see the TensorRT messages above'}"
            )

    def latency_stats(self) -> LatencyStats | None:
        """Summary of all timed ``infer`` calls so far (None before the first)."""
        return LatencyStats.of(self.latencies_ms)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Free GPU buffers, events, stream and TensorRT objects (idempotent)."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        try:
            if self._stream is not None:
                self._stream.synchronize()
        except QuantError as exc:
            errors.append(exc)
        for io in (*self._inputs.values(), *self._outputs.values()):
            if io.buffer is not None:
                try:
                    io.buffer.free()
                except QuantError as exc:
                    errors.append(exc)
                io.buffer = None
        for obj in (self._start, self._end, self._stream):
            if obj is not None:
                try:
                    obj.close()
                except QuantError as exc:
                    errors.append(exc)
        self._start = self._end = self._stream = None
        self._context = None  # release the context before the engine and runtime
        self._loaded = None
        if errors:
            raise errors[0]

    def __enter__(self) -> TrtRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


__all__ = ["LatencyStats", "LoadedEngine", "TrtRunner", "check_input", "dims", "load_engine"]
