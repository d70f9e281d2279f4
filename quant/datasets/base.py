"""The dataset interface shared by calibration, evaluation and QAT."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One batch: model inputs by name (each array owns its memory, never a view of a shared
    buffer) and, when the dataset has them, integer class labels of shape (batch,)."""

    feed: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.feed.values())).shape[0])


@dataclass(frozen=True)
class DataSummary:
    """What a dataset iteration saw: for reports and fingerprints."""

    source: str
    kind: str  # "image-folder" | "npy" | "npz" | "demo"
    num_samples: int
    num_skipped: int = 0
    skipped: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    preprocess: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "kind": self.kind,
            "num_samples": self.num_samples,
            "num_skipped": self.num_skipped,
            "skipped": list(self.skipped),
            "class_names": list(self.class_names),
            "preprocess": dict(self.preprocess),
        }


@runtime_checkable
class Dataset(Protocol):
    """A re-iterable, deterministic source of batches.

    Iterating ``batches(n)`` twice yields the same samples in the same order. Batches stream:
    implementations never hold the whole data set in memory.
    """

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def has_labels(self) -> bool: ...

    def __len__(self) -> int:
        """Number of samples that iteration yields (after --max-samples; before skipping bad images)."""
        ...

    def batches(self, batch_size: int) -> Iterator[Batch]: ...

    def fingerprint(self) -> str:
        """A hex digest that changes when the samples, their order or the preprocessing change."""
        ...

    def summary(self) -> DataSummary:
        """Summary of the data; num_skipped counts bad images skipped in the last full iteration."""
        ...


def partition_batches(
    batches: Iterator[Batch], part_of: np.ndarray, parts: int, batch_size: int
) -> Iterator[tuple[int, Batch]]:
    """The samples of ``batches`` regrouped by part: (part, batch) with batches of ``batch_size``
    (each part's last one may be smaller), each part's samples in data order. ``part_of[i]`` is
    the part of sample ``i`` of the iteration (-1: none; samples past its end: none). A batch
    wholly of one part, with nothing of that part pending, passes through uncopied; every other
    batch is built from copies. Memory: at most ``parts x batch_size`` samples pending."""
    pending: list[list[tuple[dict[str, np.ndarray], np.ndarray | None]]] = [[] for _ in range(parts)]
    count = [0] * parts
    offset = 0

    def emit(k: int, rows: int) -> Batch:
        feeds = [f for f, _ in pending[k]]
        labels = [lab for _, lab in pending[k] if lab is not None]
        cat = {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}
        lab: np.ndarray | None = np.concatenate(labels) if labels else None
        out = Batch(feed={n: v[:rows].copy() for n, v in cat.items()}, labels=None if lab is None else lab[:rows].copy())
        count[k] -= rows
        pending[k] = [({n: v[rows:] for n, v in cat.items()}, None if lab is None else lab[rows:])] if count[k] else []
        return out

    for batch in batches:
        size = batch.size
        pos = np.arange(offset, offset + size)
        offset += size
        inside = pos < part_of.size
        which = np.full(size, -1, dtype=np.int64)
        which[inside] = part_of[pos[inside]]
        for k in range(parts):
            idx = np.flatnonzero(which == k)
            if idx.size == 0:
                continue
            if idx.size == size == batch_size and not pending[k]:
                yield k, batch
                continue
            pending[k].append(({n: v[idx] for n, v in batch.feed.items()},  # fancy indexing copies
                               None if batch.labels is None else batch.labels[idx]))
            count[k] += int(idx.size)
            while count[k] >= batch_size:
                yield k, emit(k, batch_size)
    for k in range(parts):
        if count[k]:
            yield k, emit(k, count[k])
