"""Samples stored as NumPy arrays: one .npy (one model input) or one .npz (one key per input).

The first dimension of every array is the sample dimension; the model input's own first (batch)
dimension is not compared with it. The other dimensions must match the model input wherever the
model's are static. Batches are new C-contiguous arrays cast to the input dtype: never views of
the file or of each other.

Memory:
- ``.npy`` is memory-mapped (``mmap_mode="r"``): only the rows of the current batch are read.
- ``.npz`` members are zip entries and cannot be memory-mapped, so each member is read as a
  stream: its .npy header is parsed, then the rows of each batch are read (seeking forward,
  which decompresses and discards for compressed files). A pass holds one batch per input, not
  the whole file. Exception: a Fortran-ordered member has no contiguous rows and is loaded whole
  for the pass (one array, never the whole file), with a log message saying so. ``labels`` (one
  integer per sample) is loaded whole: it is small.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from quant.backends.base import TensorSpec
from quant.datasets._common import (
    canonical_json,
    check_batch_size,
    hash_file,
    select_indices,
    selection_key,
)
from quant.datasets.base import Batch, DataSummary
from quant.errors import DataError

logger = logging.getLogger(__name__)

LABELS_KEY = "labels"

# What reading a damaged .npy / .npz raises: zipfile gives BadZipFile, NotImplementedError (a
# garbled version or compression field), RuntimeError ("encrypted"); a damaged deflate stream
# gives zlib.error; numpy gives ValueError; a short file EOFError / OSError.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
)
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def _fmt_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _check_array(source: str, key: str, shape: tuple[int, ...], dtype: np.dtype, spec: TensorSpec) -> None:
    """DataError if an array cannot feed ``spec``: non-numeric dtype, or rank / static dims differ."""
    what = f"array '{key}' in '{source}'"
    if dtype.kind not in _NUMERIC_KINDS or dtype.hasobject:
        raise DataError(
            f"{what} has non-numeric dtype {dtype} (shape {_fmt_shape(shape)}); input '{spec.name}' "
            f"expects {spec.dtype} numbers"
        )
    expected = _fmt_shape(["N", *spec.shape[1:]]) if spec.shape else "[N]"
    if len(shape) != len(spec.shape) or len(shape) == 0:
        raise DataError(
            f"{what} has shape {_fmt_shape(shape)} but input '{spec.name}' expects {expected} "
            f"(model shape {_fmt_shape(spec.shape)}; the first dimension counts samples)"
        )
    for got, want in zip(shape[1:], spec.shape[1:], strict=True):
        if isinstance(want, int) and want > 0 and got != want:
            raise DataError(
                f"{what} has shape {_fmt_shape(shape)} but input '{spec.name}' expects {expected} "
                f"(model shape {_fmt_shape(spec.shape)}; the first dimension counts samples)"
            )
    target = np.dtype(spec.dtype)
    if not np.can_cast(dtype, target, casting="same_kind"):
        logger.warning("%s has dtype %s; casting it to input '%s' dtype %s", what, dtype, spec.name, target)


def _copy_rows(rows: np.ndarray, dtype: np.dtype) -> np.ndarray:
    # np.ascontiguousarray returns its argument unchanged when it is already contiguous and of the
    # right dtype (a view of the memory map): np.array(copy=True) always makes a new array.
    return np.array(rows, dtype=dtype, order="C", copy=True)


def _fingerprint(kind: str, path: Path, names: Sequence[str], max_samples: int | None, seed: int) -> str:
    h = hashlib.sha256()
    h.update(
        canonical_json({"kind": kind, "inputs": list(names), "selection": selection_key(max_samples, seed)})
    )
    return hash_file(path, h).hexdigest()


class NpyDataset:
    """One ``.npy`` file feeding one model input, memory-mapped; no labels."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        input: TensorSpec,
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self._path = Path(path)
        self._spec = input
        self._dtype = np.dtype(input.dtype)
        self._max_samples = max_samples
        self._seed = int(seed)
        shape, dtype = self._header()
        _check_array(str(self._path), self._path.name, shape, dtype, input)
        self._total = int(shape[0])
        if self._total == 0:
            raise DataError(f"data '{self._path}': the array has no samples (shape {_fmt_shape(shape)})")
        self._indices = select_indices(self._total, max_samples, seed)
        self._fingerprint: str | None = None

    def _header(self) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype from the .npy header, so object arrays get the non-numeric message."""
        try:
            with open(self._path, "rb") as fh:
                member = _parse_header(fh, self._path.name)
        except FileNotFoundError:
            raise DataError(f"data '{self._path}': no such file or directory") from None
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"cannot read '{self._path}' as .npy: {exc}; save it with numpy.save") from exc
        return member.shape, member.dtype

    def _open(self) -> np.ndarray:
        try:
            array = np.load(self._path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"data '{self._path}': no such file or directory") from None
        except ValueError as exc:
            # allow_pickle=False rejects object arrays with a ValueError.
            raise DataError(
                f"cannot read '{self._path}': {exc}; save a numeric array with numpy.save"
            ) from exc
        except OSError as exc:
            raise DataError(f"cannot read '{self._path}' as .npy: {exc}") from exc
        if not isinstance(array, np.ndarray):
            raise DataError(f"data '{self._path}' is not a single .npy array; use .npz for several arrays")
        return array

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self._spec.name,)

    @property
    def has_labels(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self._indices)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        check_batch_size(batch_size)
        return self._iterate(int(batch_size))

    def _iterate(self, batch_size: int) -> Iterator[Batch]:
        array = self._open()  # a fresh map per pass: nothing stays mapped between passes
        if array.shape[0] != self._total:
            raise DataError(
                f"data '{self._path}' changed while in use ({array.shape[0]} samples, was {self._total})"
            )
        contiguous = len(self._indices) == self._total
        for start in range(0, len(self._indices), batch_size):
            if contiguous:
                rows = array[start : start + batch_size]
            else:
                rows = array[self._indices[start : start + batch_size]]
            yield Batch(feed={self._spec.name: _copy_rows(rows, self._dtype)}, labels=None)

    def sample_range(self, start: int, stop: int) -> NpyDataset:
        """The same data set restricted to selected samples ``start`` to ``stop - 1`` (a shard:
        :mod:`quant.datasets.shard`); only those rows are read."""
        part = copy.copy(self)
        part._indices = self._indices[start:stop]
        part._fingerprint = None
        return part

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(
                "npy", self._path, self.input_names, self._max_samples, self._seed
            )
        return self._fingerprint

    def summary(self) -> DataSummary:
        return DataSummary(source=str(self._path), kind="npy", num_samples=len(self._indices))


@dataclass(frozen=True)
class _Member:
    key: str
    zip_name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int  # byte offset of the data inside the (uncompressed) member


def _parse_header(fh: IO[bytes], key: str) -> _Member:
    """Parse a .npy header from ``fh`` (left at the start of the data); ValueError if malformed."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        elif version == (3, 0):  # UTF-8 header; numpy reads it only through a private helper
            import importlib

            try:  # numpy >= 2 (imported by name: the type check then holds for numpy 1.x too)
                fmt: Any = importlib.import_module("numpy.lib._format_impl")
            except ImportError:  # pragma: no cover - numpy 1.x
                fmt = np.lib.format
            shape, fortran, dtype = fmt._read_array_header(fh, version)
        else:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        return _Member(key, key, tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran), fh.tell())
    except _STREAM_ERRORS:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises TokenError, SyntaxError,
        # TypeError, KeyError... on garbage; all mean "not a valid .npy header".
        raise ValueError(f"malformed .npy header ({type(exc).__name__}: {exc})") from exc


def _read_member_header(zf: zipfile.ZipFile, zip_name: str, source: Path) -> _Member:
    key = zip_name[: -len(".npy")] if zip_name.endswith(".npy") else zip_name
    try:
        with zf.open(zip_name) as fh:
            m = _parse_header(fh, key)
    except _STREAM_ERRORS as exc:
        raise DataError(f"cannot read array '{key}' in '{source}': {exc}") from exc
    return _Member(key, zip_name, m.shape, m.dtype, m.fortran_order, m.data_offset)


class _RowReader:
    """Reads selected rows (ascending) of one C-ordered npz member from a forward-only stream."""

    def __init__(self, fh: IO[bytes], member: _Member) -> None:
        self._fh = fh
        self._m = member
        self._row_shape = member.shape[1:]
        self._row_bytes = int(np.prod(self._row_shape, dtype=np.int64)) * member.dtype.itemsize
        self._pos = 0  # byte position relative to the data start

    def take(self, indices: np.ndarray, source: Path) -> np.ndarray:
        out = np.empty((len(indices), *self._row_shape), dtype=self._m.dtype)
        flat = out.reshape(len(indices), -1) if len(indices) else out
        i = 0
        while i < len(indices):
            # group a run of consecutive rows into one read
            j = i + 1
            while j < len(indices) and indices[j] == indices[j - 1] + 1:
                j += 1
            start = int(indices[i]) * self._row_bytes
            self._skip_to(start)
            want = (j - i) * self._row_bytes
            data = self._fh.read(want)
            if len(data) != want:
                raise DataError(f"array '{self._m.key}' in '{source}' is truncated; re-save the file")
            self._pos += want
            flat[i:j] = np.frombuffer(data, dtype=self._m.dtype).reshape(j - i, -1)
            i = j
        return out

    def _skip_to(self, pos: int) -> None:
        if pos < self._pos:
            raise RuntimeError("rows must be read in ascending order")
        gap = pos - self._pos
        while gap > 0:
            chunk = self._fh.read(min(gap, 1 << 22))
            if not chunk:
                raise DataError(f"array '{self._m.key}' is truncated")
            gap -= len(chunk)
        self._pos = pos


class NpzDataset:
    """One ``.npz`` file: one key per model input, plus an optional ``labels`` key."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        inputs: Sequence[TensorSpec],
        max_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self._path = Path(path)
        self._specs = tuple(inputs)
        self._max_samples = max_samples
        self._seed = int(seed)
        self._fingerprint: str | None = None
        self._members = self._read_headers()
        self._labels = self._load_labels()
        total = self._check()
        self._total = total
        self._indices = select_indices(total, max_samples, seed)

    def _zip(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self._path)
        except FileNotFoundError:
            raise DataError(f"data '{self._path}': no such file or directory") from None
        except _STREAM_ERRORS as exc:
            raise DataError(f"cannot read '{self._path}' as .npz: {exc}; save it with numpy.savez") from exc

    def _read_headers(self) -> dict[str, _Member]:
        with self._zip() as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            members = {}
            for name in names:
                m = _read_member_header(zf, name, self._path)
                members[m.key] = m
        return members

    def _load_labels(self) -> np.ndarray | None:
        m = self._members.get(LABELS_KEY)
        if m is None:
            return None
        if m.dtype.kind not in "iu" or len(m.shape) != 1:
            raise DataError(
                f"array 'labels' in '{self._path}' has shape {_fmt_shape(m.shape)} and dtype {m.dtype}; "
                "labels must be one integer class index per sample (1-D integers)"
            )
        try:
            with np.load(self._path, allow_pickle=False) as npz:
                return np.asarray(npz[LABELS_KEY], dtype=np.int64)
        except _STREAM_ERRORS as exc:
            raise DataError(f"cannot read array 'labels' in '{self._path}': {exc}") from exc

    def _check(self) -> int:
        found = sorted(self._members)
        names = [s.name for s in self._specs]
        for spec in self._specs:
            if spec.name not in self._members:
                raise DataError(
                    f"data '{self._path}' has no array for model input '{spec.name}' (keys found: "
                    f"{', '.join(repr(k) for k in found) or 'none'}); save one key per input name"
                )
        extra = [k for k in found if k not in names and k != LABELS_KEY]
        if extra:
            raise DataError(
                f"data '{self._path}' has array '{extra[0]}', which is not a model input (inputs: "
                f"{', '.join(repr(n) for n in names)}); remove it or rename it (labels go in 'labels')"
            )
        for spec in self._specs:
            m = self._members[spec.name]
            _check_array(str(self._path), m.key, m.shape, m.dtype, spec)
        counts = {s.name: self._members[s.name].shape[0] for s in self._specs}
        total = next(iter(counts.values()))
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"'{k}': {v}" for k, v in counts.items())
            raise DataError(
                f"data '{self._path}': arrays have different numbers of samples ({detail}); "
                "every key needs the same first dimension"
            )
        if self._labels is not None and len(self._labels) != total:
            raise DataError(
                f"data '{self._path}': 'labels' has {len(self._labels)} entries but the inputs have "
                f"{total} samples; give one label per sample"
            )
        if total == 0:
            raise DataError(f"data '{self._path}': the arrays have no samples")
        return total

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._specs)

    @property
    def has_labels(self) -> bool:
        return self._labels is not None

    def __len__(self) -> int:
        return len(self._indices)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        check_batch_size(batch_size)
        return self._iterate(int(batch_size))

    def _iterate(self, batch_size: int) -> Iterator[Batch]:
        try:
            yield from self._iterate_unchecked(batch_size)
        except _STREAM_ERRORS as exc:
            raise DataError(
                f"cannot read '{self._path}': {exc}; the file is damaged, save it again with numpy.savez"
            ) from exc

    def _iterate_unchecked(self, batch_size: int) -> Iterator[Batch]:
        with ExitStack() as stack:
            zf = stack.enter_context(self._zip())
            readers: dict[str, _RowReader] = {}
            whole: dict[str, np.ndarray] = {}
            for spec in self._specs:
                m = self._members[spec.name]
                if m.fortran_order and len(m.shape) > 1:
                    logger.info(
                        "array '%s' in '%s' is Fortran-ordered: loading it whole (%d bytes) for this pass",
                        m.key,
                        self._path,
                        int(np.prod(m.shape)) * m.dtype.itemsize,
                    )
                    with np.load(self._path, allow_pickle=False) as npz:
                        whole[spec.name] = npz[m.key]
                    continue
                fh = stack.enter_context(zf.open(m.zip_name))
                fh.read(m.data_offset)
                readers[spec.name] = _RowReader(fh, m)
            for start in range(0, len(self._indices), batch_size):
                idx = self._indices[start : start + batch_size]
                feed: dict[str, np.ndarray] = {}
                for spec in self._specs:
                    rows = (
                        whole[spec.name][idx]
                        if spec.name in whole
                        else readers[spec.name].take(idx, self._path)
                    )
                    feed[spec.name] = _copy_rows(rows, np.dtype(spec.dtype))
                labels = None if self._labels is None else self._labels[idx].copy()
                yield Batch(feed=feed, labels=labels)

    def sample_range(self, start: int, stop: int) -> NpzDataset:
        """The same data set restricted to selected samples ``start`` to ``stop - 1`` (a shard:
        :mod:`quant.datasets.shard`); only those rows are read."""
        part = copy.copy(self)
        part._indices = self._indices[start:stop]
        part._fingerprint = None
        return part

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(
                "npz", self._path, self.input_names, self._max_samples, self._seed
            )
        return self._fingerprint

    def summary(self) -> DataSummary:
        return DataSummary(source=str(self._path), kind="npz", num_samples=len(self._indices))
