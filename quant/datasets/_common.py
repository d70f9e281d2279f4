"""Helpers shared by the datasets: deterministic sample selection, argument checks, hashing."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from quant.errors import DataError, UsageError

_CHUNK = 1 << 20


def check_max_samples(max_samples: int | None) -> None:
    if max_samples is None:
        return
    if isinstance(max_samples, bool) or not isinstance(max_samples, int | np.integer) or max_samples <= 0:
        raise UsageError(f"max_samples must be a positive integer or None (all samples), got {max_samples!r}")


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size <= 0:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")


def select_indices(total: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Indices of the samples to use, ascending.

    All of them when ``max_samples`` is None or not smaller than ``total``; otherwise a random
    subset drawn with ``numpy.random.default_rng(seed)`` and kept in the original order, so the
    same seed always selects the same samples.
    """
    check_max_samples(max_samples)
    if max_samples is None or max_samples >= total:
        return np.arange(total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=int(max_samples), replace=False)).astype(np.int64)


def selection_key(max_samples: int | None, seed: int) -> dict[str, object]:
    # The seed only matters when a subset is drawn; keep it anyway so the key is explicit.
    return {"max_samples": max_samples, "seed": int(seed)}


def hash_file(path: str | os.PathLike[str], digest: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed a file's content into ``digest`` (a new sha256 by default) in 1 MiB chunks."""
    h = digest if digest is not None else hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise DataError(f"cannot read data '{path}': {exc.strerror or exc}") from exc
    return h


def canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")
