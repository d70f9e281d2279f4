"""INT8 calibrators for TensorRT 8.6-10.x, fed by any quant dataset.

Two layers:

- :class:`CalibratorCore` holds everything a calibrator does (batches from a
  :class:`~quant.datasets.base.Dataset` copied into GPU buffers allocated once, the cache handed to
  TensorRT, the cache TensorRT writes back) with no TensorRT import, so it is unit-tested on CPU
  with a fake allocator.
- :func:`create_calibrator` wraps a core in a subclass of ``trt.IInt8EntropyCalibrator2``,
  ``trt.IInt8MinMaxCalibrator`` or ``trt.IInt8EntropyCalibrator`` (module
  :mod:`quant.backends.tensorrt._trt`, imported only once TensorRT is known to be there, because
  those base classes only exist when tensorrt is importable).

Cache headers (see ``/work/shared/REFERENCE.md``): TensorRT ignores, or on some 10.x versions
rejects, a cache whose header names another TensorRT version or another calibration algorithm.
Scales do not depend on the TensorRT version, so :func:`cache_for_calibrator` rewrites the
version to the installed one; a header naming another *algorithm* is not used unless the user
asks for it (``force``), which rewrites the header on purpose. ONNX Runtime calibration tables
are converted to TensorRT text.

Exceptions raised inside TensorRT callbacks would cross into C++; the core catches them, stops
calibration (``get_batch`` returns no batch) and keeps the error, which the builder re-raises
once TensorRT returns (:meth:`CalibratorCore.raise_if_failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from quant.backends.tensorrt.options import CALIBRATORS, CalibratorKind
from quant.errors import CalibrationError, DataError, QuantError, UsageError

if TYPE_CHECKING:
    import tensorrt

    from quant.cache.trt import ParsedCache
    from quant.datasets.base import Batch, Dataset

log = logging.getLogger(__name__)

#: The algorithm each calibrator writes in its cache header.
ALGORITHM_OF_KIND: dict[str, str] = {
    "entropy2": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
    "entropy": "EntropyCalibration",
}
_KIND_OF_ALGORITHM: dict[str, CalibratorKind] = {
    "EntropyCalibration2": "entropy2",
    "MinMaxCalibration": "minmax",
    "EntropyCalibration": "entropy",
}


def algorithm_of(kind: str) -> str:
    """``entropy2`` -> ``EntropyCalibration2`` (the header TensorRT expects from that calibrator)."""
    try:
        return ALGORITHM_OF_KIND[kind]
    except KeyError:
        raise UsageError(f"--calibrator must be one of {', '.join(CALIBRATORS)}, got {kind!r}") from None


def kind_of_algorithm(algorithm: str | None) -> CalibratorKind | None:
    """The calibrator that reads caches of ``algorithm`` (None for LegacyCalibration / unknown)."""
    return _KIND_OF_ALGORITHM.get(algorithm or "")


# --------------------------------------------------------------------------------------------
# Cache headers (pure)
# --------------------------------------------------------------------------------------------


def rewrite_header(text: str, *, version: int, algorithm: str) -> str:
    """Replace the first line of TensorRT cache text by ``TRT-<version>-<algorithm>``; the rest of
    the text is kept byte for byte (line ends included)."""
    body = text.lstrip("\ufeff")
    first, sep, rest = body.partition("\n")
    eol = "\r" if first.endswith("\r") else ""
    return f"TRT-{version}-{algorithm}{eol}{sep or chr(10)}{rest}"


@dataclass(frozen=True)
class CacheDecision:
    """What the calibrator hands TensorRT from an existing cache, and why.

    ``data`` is None when the cache must not be used (another algorithm, without ``force``).
    ``rewritten``: the header was changed; ``converted``: the cache was translated from another
    format (ONNX Runtime's tables, a legacy-calibrator cache with ``force``).
    """

    data: bytes | None
    message: str
    rewritten: bool = False
    converted: bool = False


def cache_for_calibrator(
    raw: bytes,
    parsed: ParsedCache,
    *,
    amax: Mapping[str, float],
    header_version: int,
    algorithm: str,
    force: bool,
    source: str,
) -> CacheDecision:
    """Decide what ``read_calibration_cache`` returns for an existing cache (pure).

    ``raw``/``parsed``: the cache file's bytes and their parse; ``amax``: its ranges (exact ones
    from quant's sidecar when present); ``header_version``: the installed TensorRT's header number;
    ``algorithm``: the calibrator's (``EntropyCalibration2``...); ``force``: use a cache of another
    algorithm anyway, rewriting its header.
    """
    from quant.cache.trt import decode_trt_version, format_trt_cache

    wanted = f"TRT-{header_version}-{algorithm}"
    if parsed.format == "tensorrt":
        text = raw.decode("utf-8")
        same_algo = parsed.algorithm == algorithm
        if not same_algo and not force:
            kind = kind_of_algorithm(parsed.algorithm)
            use = f"pass --calibrator {kind} to use it as is, " if kind else ""
            return CacheDecision(
                None,
                f"cache '{source}' was made by TensorRT's {parsed.algorithm}, not the {algorithm} "
                f"calibrator used here, so it is not used (TensorRT would ignore or reject it); "
                f"{use}or --force-cache to rewrite its header on purpose",
            )
        if parsed.header == wanted:
            return CacheDecision(raw, f"using cache '{source}' ({len(parsed.amax)} tensors, {wanted})")
        new = rewrite_header(text, version=header_version, algorithm=algorithm)
        changes = []
        if parsed.trt_version != header_version:
            old = parsed.trt_version
            try:
                old_text = decode_trt_version(old) if old is not None else "?"
            except QuantError:
                old_text = str(old)
            changes.append(
                f"TensorRT version {old_text} -> {decode_trt_version(header_version)} "
                f"(scales do not depend on the TensorRT version)"
            )
        if not same_algo:
            changes.append(f"algorithm {parsed.algorithm} -> {algorithm} (forced with --force-cache)")
        return CacheDecision(
            new.encode("utf-8"),
            f"using cache '{source}' with its header rewritten: {'; '.join(changes)}",
            rewritten=True,
        )
    if parsed.format == "tensorrt-legacy" and not force:
        return CacheDecision(
            None,
            f"cache '{source}' was made by TensorRT's legacy calibrator, which the {algorithm} "
            f"calibrator cannot read; pass --force-cache to convert its ranges",
        )
    text = format_trt_cache(amax, trt_version=header_version, algorithm=algorithm)
    what = "legacy-calibrator cache" if parsed.format == "tensorrt-legacy" else "ONNX Runtime calibration table"
    return CacheDecision(
        text.encode("utf-8"),
        f"converted {what} '{source}' ({len(amax)} tensors) to TensorRT's cache format ({wanted})",
        rewritten=True,
        converted=True,
    )


# --------------------------------------------------------------------------------------------
# The calibrator core (no TensorRT)
# --------------------------------------------------------------------------------------------


class DeviceMemory(Protocol):
    """What the calibrator needs from a GPU buffer (:class:`quant.backends.tensorrt.cuda.DeviceBuffer`)."""

    @property
    def ptr(self) -> int: ...

    nbytes: int

    def copy_from_host(self, array: np.ndarray, stream: Any = None) -> None: ...

    def free(self) -> None: ...


CacheWriter = Callable[[Path, bytes], None]


def _default_allocate(nbytes: int) -> DeviceMemory:
    from quant.backends.tensorrt.cuda import DeviceBuffer

    return DeviceBuffer(nbytes)


class CalibratorCore:
    """Serve calibration batches and caches to TensorRT (everything but the TensorRT base class).

    ``input_shapes`` / ``input_dtypes``: per network input, the shape every calibration batch
    must have (the fixed shape, or the calibration profile's opt shape) and the dtype TensorRT
    expects. Batches come from ``dataset.batches(batch size)`` where the batch size is the first
    dimension of the first input; a last, smaller batch is dropped (TensorRT calibrates with fixed
    shapes). ``cache_data``: what :meth:`read_calibration_cache` returns (see
    :func:`cache_for_calibrator`); ``write_to``: where the cache TensorRT produces after really
    calibrating is saved, through ``writer`` (default: raw bytes, atomically).
    """

    def __init__(
        self,
        *,
        kind: CalibratorKind,
        dataset: Dataset | None,
        input_shapes: Mapping[str, Sequence[int]],
        input_dtypes: Mapping[str, np.dtype | type],
        cache_data: bytes | None = None,
        write_to: Path | None = None,
        writer: CacheWriter | None = None,
        allocate: Callable[[int], DeviceMemory] = _default_allocate,
    ) -> None:
        self.kind = kind
        self.algorithm = algorithm_of(kind)
        self.dataset = dataset
        self.input_shapes = {n: tuple(int(d) for d in s) for n, s in input_shapes.items()}
        self.input_dtypes = {n: np.dtype(t) for n, t in input_dtypes.items()}
        if set(self.input_shapes) != set(self.input_dtypes):
            raise UsageError("calibrator: input_shapes and input_dtypes must name the same inputs")
        self.cache_data = cache_data
        self.write_to = write_to
        self._writer = writer
        self._allocate = allocate
        self._buffers: dict[str, DeviceMemory] = {}
        self._iter: Iterator[Batch] | None = None
        self._keep: list[np.ndarray] = []
        self.error: BaseException | None = None
        self.batches_served = 0
        self.samples_served = 0
        self.samples_dropped = 0
        self.cache_reads = 0
        self.cache_returned = False
        self.written_path: Path | None = None
        self.produced: bytes | None = None
        self._closed = False
        self._done = False

    # -- sizes --------------------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Samples per calibration batch: the leading dimension of the first input."""
        if not self.input_shapes:
            raise CalibrationError("the network has no inputs to calibrate")
        shape = next(iter(self.input_shapes.values()))
        return int(shape[0]) if shape else 1

    def get_batch_size(self) -> int:
        """What ``IInt8Calibrator.get_batch_size`` returns: 1.

        ONNX networks have an explicit batch dimension, for which TensorRT ignores this value;
        the batch size is the first dimension of the buffers (:attr:`batch_size`), as the
        calibration profile's opt shape fixes it.
        """
        return 1

    # -- batches ------------------------------------------------------------------------------

    def get_batch(self, names: Sequence[str]) -> list[int] | None:
        """Copy the next batch to the GPU and return one device pointer per name; None at the end.

        Never raises: an error ends calibration and is kept in :attr:`error`.
        """
        if self.error is not None or self._closed or self._done:
            return None
        try:
            return self._next_batch(names)
        except Exception as exc:  # must not propagate into TensorRT's C++ caller; re-raised later
            self.error = exc
            log.debug("calibration stopped by an error: %s", exc)
            return None

    def _next_batch(self, names: Sequence[str]) -> list[int] | None:
        if self.dataset is None:
            raise CalibrationError(
                "TensorRT asked for calibration data but none was given (the cache was not usable); "
                "pass --data to calibrate, or a cache made for this calibrator"
            )
        unknown = [n for n in names if n not in self.input_shapes]
        if unknown:
            raise CalibrationError(
                f"TensorRT asked for calibration input '{unknown[0]}', which is not a network input "
                f"this calibrator knows ({', '.join(self.input_shapes)})"
            )
        if self._iter is None:
            self._iter = iter(self.dataset.batches(self.batch_size))
        self._keep.clear()
        try:
            batch = next(self._iter)
        except StopIteration:
            self._finish()
            return None
        if batch.size != self.batch_size:
            self.samples_dropped += batch.size
            log.warning(
                "calibration: dropped the last %d sample(s), fewer than the calibration batch of %d "
                "(TensorRT calibrates with fixed shapes)",
                batch.size,
                self.batch_size,
            )
            self._finish()
            return None
        ptrs: list[int] = []
        for name in names:
            arr = self._prepare(name, batch.feed)
            buf = self._buffers.get(name)
            if buf is None:
                buf = self._allocate(arr.nbytes)
                self._buffers[name] = buf
            buf.copy_from_host(arr)
            self._keep.append(arr)
            ptrs.append(buf.ptr)
        self.batches_served += 1
        self.samples_served += batch.size
        if self.batches_served == 1:
            log.info("TensorRT is calibrating (%s, batches of %d)...", self.algorithm, self.batch_size)
        return ptrs

    def _prepare(self, name: str, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        if name not in feed:
            have = ", ".join(repr(k) for k in feed) or "none"
            raise DataError(f"calibration data has no input '{name}' (it has {have}); check --data")
        want = self.input_shapes[name]
        arr = feed[name]
        if tuple(arr.shape) != want:
            raise DataError(
                f"calibration batch for input '{name}' has shape {tuple(arr.shape)}, the engine "
                f"calibrates with {want}; check the preprocessing or --shapes (calibration uses "
                f"the opt shape)"
            )
        dtype = self.input_dtypes[name]
        out = np.ascontiguousarray(arr, dtype=dtype)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise DataError(f"calibration batch for input '{name}' contains NaN or infinity; check the data")
        return out

    def _finish(self) -> None:
        self._done = True
        if self.batches_served == 0 and self.error is None:
            self.error = CalibrationError(
                f"calibration got no complete batch of {self.batch_size} samples from the data; "
                f"give at least {self.batch_size} samples or a smaller calibration batch (--shapes opt)"
            )
        else:
            log.info("calibration data exhausted after %d batches (%d samples)", self.batches_served, self.samples_served)

    # -- caches -------------------------------------------------------------------------------

    def read_calibration_cache(self) -> bytes | None:
        """The cache bytes decided before the build (None: calibrate)."""
        self.cache_reads += 1
        if self.cache_data:
            self.cache_returned = True
            return self.cache_data
        return None

    def write_calibration_cache(self, data: bytes) -> None:
        """Keep TensorRT's cache; save it when TensorRT really calibrated. Never raises."""
        try:
            self.produced = bytes(data)
            if self.batches_served == 0:
                # TensorRT used the cache it was given and writes it back: leave the user's file
                # (and its sidecar) alone.
                log.debug("TensorRT wrote back the cache it read; not saving it")
                return
            if self.write_to is None:
                log.info("TensorRT's calibration cache is not saved (no cache path)")
                return
            if self._writer is not None:
                self._writer(self.write_to, self.produced)
            else:
                from quant._io import atomic_write

                atomic_write(self.write_to, self.produced)
            self.written_path = self.write_to
            log.info("wrote TensorRT's calibration cache '%s'", self.write_to)
        except Exception as exc:  # must not propagate into TensorRT's C++ caller; re-raised later
            if self.error is None:
                self.error = exc

    # -- lifetime -----------------------------------------------------------------------------

    def raise_if_failed(self) -> None:
        """Re-raise an error kept from a TensorRT callback (QuantErrors as they are)."""
        if self.error is None:
            return
        if isinstance(self.error, QuantError):
            raise self.error
        raise CalibrationError(f"calibration failed: {self.error}") from self.error

    def close(self) -> None:
        """Free the GPU buffers (idempotent)."""
        self._closed = True
        self._keep.clear()
        buffers, self._buffers = self._buffers, {}
        for buf in buffers.values():
            buf.free()

    def __enter__(self) -> CalibratorCore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def save_trt_calibration(
    path: Path,
    data: bytes,
    *,
    kind: str,
    num_samples: int,
    model_fingerprint: Mapping[str, Any] | str | None = None,
    data_fingerprint: str | None = None,
) -> tuple[Path, Path]:
    """Save a cache TensorRT produced as quant's cache + sidecar (:func:`quant.cache.io.write_cache`).

    The cache is rewritten from its parsed scales, which reproduces TensorRT's file except for
    zero-scale entries (TensorRT's "no range", the same as absent) and hex zero-padding, so the
    sidecar's hash, exact amax table and fingerprints describe exactly the file on disk.
    """
    from quant.cache.io import write_cache
    from quant.cache.trt import parse_trt_cache

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"TensorRT produced a calibration cache that is not text ({exc}); cannot save '{path}'") from exc
    parsed = parse_trt_cache(text, source=f"TensorRT's calibration for '{path}'")
    if parsed.trt_version is None or parsed.algorithm is None:
        raise CalibrationError(f"TensorRT produced a cache without a TRT- header; cannot save '{path}'")
    calibration: dict[str, Any] = {
        "method": f"tensorrt-{kind}",
        "producer": "tensorrt",
        "algorithm": parsed.algorithm,
        "amax": dict(parsed.amax),
        "zero_scale_names": list(parsed.zero_scale_names),
        "num_samples": int(num_samples),
        "model_fingerprint": dict(model_fingerprint) if isinstance(model_fingerprint, Mapping) else model_fingerprint,
        "data_fingerprint": data_fingerprint,
    }
    return write_cache(path, calibration, trt_version=parsed.trt_version, algorithm=parsed.algorithm)


def create_calibrator(core: CalibratorCore) -> tensorrt.IInt8Calibrator:
    """Wrap ``core`` in the TensorRT calibrator class of its kind (needs TensorRT)."""
    from quant.backends.tensorrt import import_tensorrt

    import_tensorrt()
    from quant.backends.tensorrt import _trt

    return _trt.make_calibrator(core)


__all__ = [
    "ALGORITHM_OF_KIND",
    "CacheDecision",
    "CalibratorCore",
    "DeviceMemory",
    "algorithm_of",
    "cache_for_calibrator",
    "create_calibrator",
    "kind_of_algorithm",
    "rewrite_header",
    "save_trt_calibration",
]
