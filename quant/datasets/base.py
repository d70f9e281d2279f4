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
