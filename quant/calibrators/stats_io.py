"""The statistics file: collected per-tensor histograms saved next to the cache.

``<cache>.stats.npz`` holds everything needed to recompute amax with any method without running
the model again, and to merge calibrations of data shards (histograms merge exactly, see
quant.calibrators.stats). Layout (NumPy .npz, no pickles):

* ``meta``: a 0-d unicode array holding JSON: {"schema": "quant.stats", "schema_version": 1,
  "names": [...], "num_bins", "num_samples", "model_fingerprint", "data_fingerprint", "scope",
  "quant_version", ...}.
* ``counts``: int64 [num_tensors, num_bins]; ``hist_range``, ``absmax``: float64 [num_tensors];
  ``count``: int64 [num_tensors]; ``min``, ``max``: float64 [num_tensors] (NaN = no element seen).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from quant._io import atomic_write
from quant.calibrators.stats import TensorStats
from quant.errors import CacheError

STATS_SCHEMA = "quant.stats"
STATS_SCHEMA_VERSION = 1


def stats_path(cache_path: str | Path) -> Path:
    """Where the statistics of ``cache_path`` live: ``<cache>.stats.npz``."""
    return Path(str(cache_path) + ".stats.npz")


def stats_to_bytes(stats: Mapping[str, TensorStats], meta: Mapping[str, Any]) -> bytes:
    """Serialise statistics (file order = mapping order) and metadata to .npz bytes."""
    names = list(stats)
    num_bins = {s.num_bins for s in stats.values()}
    if len(num_bins) > 1:
        raise CacheError(f"statistics mix bin counts {sorted(num_bins)}; cannot save them together")
    bins = num_bins.pop() if num_bins else 0
    n = len(names)
    counts = np.zeros((n, bins), dtype=np.int64)
    hist_range = np.zeros(n, dtype=np.float64)
    absmax = np.zeros(n, dtype=np.float64)
    count = np.zeros(n, dtype=np.int64)
    lo = np.full(n, np.nan, dtype=np.float64)
    hi = np.full(n, np.nan, dtype=np.float64)
    for i, name in enumerate(names):
        s = stats[name]
        counts[i] = s.counts
        hist_range[i] = s.hist_range
        absmax[i] = s.absmax
        count[i] = s.count
        if s.min is not None:
            lo[i] = s.min
        if s.max is not None:
            hi[i] = s.max
    full_meta = {**meta, "schema": STATS_SCHEMA, "schema_version": STATS_SCHEMA_VERSION, "names": names, "num_bins": bins}
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        meta=np.array(json.dumps(full_meta, sort_keys=True)),
        counts=counts,
        hist_range=hist_range,
        absmax=absmax,
        count=count,
        min=lo,
        max=hi,
    )
    return buf.getvalue()


def save_stats(path: str | Path, stats: Mapping[str, TensorStats], meta: Mapping[str, Any]) -> Path:
    """Write the statistics file atomically."""
    return atomic_write(path, stats_to_bytes(stats, meta))


def load_stats(path: str | Path) -> tuple[dict[str, TensorStats], dict[str, Any]]:
    """Read a statistics file; CacheError naming the file for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise CacheError(f"statistics '{p}': no such file; run 'quant calibrate' to create it")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("meta", "counts", "hist_range", "absmax", "count", "min", "max")}
    except KeyError as exc:
        raise CacheError(f"statistics '{p}': array {exc} is missing; the file is incomplete, recalibrate") from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CacheError(f"statistics '{p}': not a readable statistics file ({exc}); recalibrate") from exc
    try:
        meta = json.loads(str(arrays["meta"]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CacheError(f"statistics '{p}': metadata is not valid JSON; recalibrate") from exc
    if not isinstance(meta, dict) or meta.get("schema") != STATS_SCHEMA:
        raise CacheError(f"statistics '{p}': not a quant statistics file (schema {meta.get('schema') if isinstance(meta, dict) else None!r})")
    version = meta.get("schema_version")
    if not isinstance(version, int) or version > STATS_SCHEMA_VERSION:
        raise CacheError(
            f"statistics '{p}' has schema version {version}; this quant reads up to {STATS_SCHEMA_VERSION}; upgrade quant"
        )
    names = meta.get("names")
    n = len(names) if isinstance(names, list) else -1
    counts = arrays["counts"]
    if n < 0 or counts.ndim != 2 or counts.shape[0] != n or any(arrays[k].shape != (n,) for k in ("hist_range", "absmax", "count", "min", "max")):
        raise CacheError(f"statistics '{p}': arrays do not match the {n} tensor names; the file is corrupt, recalibrate")
    if len(set(names)) != n:  # type: ignore[arg-type]
        raise CacheError(f"statistics '{p}': duplicate tensor names; the file is corrupt, recalibrate")
    stats: dict[str, TensorStats] = {}
    for i, name in enumerate(names):  # type: ignore[arg-type]
        lo, hi = float(arrays["min"][i]), float(arrays["max"][i])
        stats[str(name)] = TensorStats.from_dict(
            {
                "num_bins": int(counts.shape[1]),
                "hist_range": float(arrays["hist_range"][i]),
                "count": int(arrays["count"][i]),
                "min": None if np.isnan(lo) else lo,
                "max": None if np.isnan(hi) else hi,
                "absmax": float(arrays["absmax"][i]),
                "counts": counts[i].tolist(),
            },
            source=f"statistics '{p}', tensor '{name}'",
        )
    return stats, meta
