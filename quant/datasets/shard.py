"""Shards: a deterministic 1/N of a data set's samples, in whole batches.

Shard ``K/N`` (K from 1 to N) of a data set of ``n`` samples read in batches of ``b`` holds the
batches ``floor((K-1) * B / N)`` to ``floor(K * B / N) - 1`` of the ``B = ceil(n / b)`` batches
of one unsharded pass: contiguous, disjoint, covering every sample once, each shard within one
batch of the others in size. Because a shard's batches are *the same batches* an unsharded run
sees (same samples, same batch boundaries), every model output is computed on the same inputs
and the shards' sums and counts add up to the unsharded run's (:mod:`quant.report.merge`).

A data set with a ``sample_range(start, stop)`` method (image folders, .npy, .npz) reads only its
shard's samples; any other data set is read in full and the other batches are dropped.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from quant.datasets.base import Batch, Dataset, DataSummary
from quant.errors import UsageError

__all__ = ["Shard", "ShardedDataset", "shard_dataset"]

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based: ``1/4`` is the first quarter)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if (
            isinstance(self.index, bool)
            or isinstance(self.count, bool)
            or not isinstance(self.index, int)
            or not isinstance(self.count, int)
            or self.count < 1
            or not 1 <= self.index <= self.count
        ):
            raise UsageError(
                f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {self.index}/{self.count}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` -> Shard; UsageError naming --shard otherwise."""
        m = _SHARD_RE.match(text)
        if m is None:
            raise UsageError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), got {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def batch_bounds(self, num_batches: int) -> tuple[int, int]:
        """First and one-past-last batch index of this shard among ``num_batches``."""
        return (self.index - 1) * num_batches // self.count, self.index * num_batches // self.count

    def bounds(self, num_samples: int, batch_size: int) -> tuple[int, int]:
        """First and one-past-last sample index of this shard (whole batches of ``batch_size``)."""
        if batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, not {batch_size!r}")
        first, last = self.batch_bounds(math.ceil(num_samples / batch_size))
        return min(first * batch_size, num_samples), min(last * batch_size, num_samples)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "count": self.count}


class ShardedDataset:
    """One shard of ``dataset`` for batches of ``batch_size`` (see the module docstring).

    ``fingerprint()`` is the shard's own (the whole data set's plus the shard), so that a cache
    or statistics file made from a shard is never taken for the whole set's;
    :meth:`full_fingerprint` is the whole data set's, which partial reports record so that
    shards of one data set can be recognised.
    """

    def __init__(self, dataset: Dataset, shard: Shard, *, batch_size: int) -> None:
        self._full = dataset
        self.shard = shard
        self.batch_size = int(batch_size)
        self.total = len(dataset)
        self.start, self.stop = shard.bounds(self.total, self.batch_size)
        narrow = getattr(dataset, "sample_range", None)
        self._inner: Dataset | None = narrow(self.start, self.stop) if callable(narrow) else None
        self._fingerprint: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._full.input_names

    @property
    def has_labels(self) -> bool:
        return self._full.has_labels

    def __len__(self) -> int:
        return self.stop - self.start

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if batch_size != self.batch_size:
            raise UsageError(
                f"shard {self.shard} was cut for batches of {self.batch_size}, not {batch_size}; "
                "read it with the batch size it was made for"
            )
        if self._inner is not None:
            yield from self._inner.batches(batch_size)
            return
        first, last = self.start // batch_size, math.ceil(self.stop / batch_size)
        for i, batch in enumerate(self._full.batches(batch_size)):
            if i >= last:
                return
            if i >= first:
                yield batch

    def full_fingerprint(self) -> str:
        """The whole data set's fingerprint."""
        return self._full.fingerprint()

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256(self._full.fingerprint().encode())
            h.update(f"\0shard {self.shard} batch {self.batch_size}".encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def summary(self) -> DataSummary:
        from dataclasses import replace

        if self._inner is not None:
            return self._inner.summary()
        # Read in full and filtered: the whole set's summary, with this shard's sample count.
        return replace(self._full.summary(), num_samples=len(self))

    def describe(self) -> dict[str, Any]:
        """The ``shard`` record of a partial report: which samples of how many, in which batches."""
        return {
            "kind": "samples",
            **self.shard.to_dict(),
            "start": self.start,
            "stop": self.stop,
            "total_samples": self.total,
            "batch_size": self.batch_size,
        }


def shard_dataset(dataset: Dataset, shard: Shard | str, *, batch_size: int) -> ShardedDataset:
    """Shard ``shard`` (a :class:`Shard` or ``"K/N"``) of ``dataset`` read in batches of ``batch_size``."""
    s = Shard.parse(shard) if isinstance(shard, str) else shard
    return ShardedDataset(dataset, s, batch_size=batch_size)
