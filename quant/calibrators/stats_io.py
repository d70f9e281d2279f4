"""The statistics file: collected per-tensor histograms saved next to the cache.

``<cache>.stats.npz`` holds everything needed to recompute amax with any method without running
the model again, and to merge calibrations of data shards (histograms merge exactly, see
quant.calibrators.stats). Layout (NumPy .npz, no pickles):

* ``meta``: a 0-d unicode array holding JSON: {"schema": "quant.stats", "schema_version": 1,
  "names": [...], "num_bins", "num_samples", "model_fingerprint", "data_fingerprint", "scope",
  "quant_version", "data_shards", "data_manifest", ...}.
* ``counts``: int64 [num_tensors, num_bins]; ``hist_range``, ``absmax``: float64 [num_tensors];
  ``count``: int64 [num_tensors]; ``min``, ``max``: float64 [num_tensors] (NaN = no element seen).

Merging (:func:`merge_statistics`, :func:`merge_stats_files`): the shards must come from the same
model (equal model fingerprints), the same tensors and the same bin count. The merged file's
``data_shards`` is the sorted set of the shards' data fingerprints (a file that was never merged
counts as one shard: its own ``data_fingerprint``), and its ``data_fingerprint`` is
:func:`merged_data_fingerprint` of that set; so merging is order-independent and associative:
merge(a, b) == merge(b, a) and merge(merge(a, b), c) == merge(a, b, c). A shard given twice would
be counted twice and is refused.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quant._io import atomic_write, check_output_not_input
from quant.calibrators.stats import MIN_NUM_BINS, TensorStats, pow2_ceil
from quant.errors import CacheError, UsageError

STATS_SCHEMA = "quant.stats"
STATS_SCHEMA_VERSION = 1

_ARRAYS = ("meta", "counts", "hist_range", "absmax", "count", "min", "max")
_MERGED_TAG = "quant-merged-data-v1"


def stats_path(cache_path: str | Path) -> Path:
    """Where the statistics of ``cache_path`` live: ``<cache>.stats.npz``."""
    return Path(str(cache_path) + ".stats.npz")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def stats_to_bytes(stats: Mapping[str, TensorStats], meta: Mapping[str, Any]) -> bytes:
    """Serialise statistics (file order = mapping order) and metadata to .npz bytes.

    ``meta`` should hold ``num_samples``, ``model_fingerprint`` and ``data_fingerprint`` (what
    :func:`load_stats` requires); ``schema``, ``names`` and ``num_bins`` are filled in here, and
    ``data_shards`` defaults to ``[data_fingerprint]``.
    """
    names = list(stats)
    num_bins = {s.num_bins for s in stats.values()}
    if len(num_bins) > 1:
        raise CacheError(f"statistics mix bin counts {sorted(num_bins)}; cannot save them together")
    bins = num_bins.pop() if num_bins else MIN_NUM_BINS
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
    full_meta = dict(meta)
    if "data_shards" not in full_meta and isinstance(full_meta.get("data_fingerprint"), str):
        full_meta["data_shards"] = [full_meta["data_fingerprint"]]
    full_meta.update(schema=STATS_SCHEMA, schema_version=STATS_SCHEMA_VERSION, names=names, num_bins=bins)
    try:
        meta_text = json.dumps(full_meta, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"statistics metadata is not plain JSON data ({exc})") from exc
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        meta=np.array(meta_text),
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


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _check_meta(p: Path, meta: dict[str, Any]) -> None:
    """The provenance fields every quant statistics file has; CacheError naming the field."""
    num_samples = meta.get("num_samples")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise CacheError(f"statistics '{p}': metadata field 'num_samples' is missing or invalid; recalibrate")
    if not isinstance(meta.get("data_fingerprint"), str) or not meta["data_fingerprint"]:
        raise CacheError(f"statistics '{p}': metadata field 'data_fingerprint' is missing; recalibrate")
    fp = meta.get("model_fingerprint")
    if not (isinstance(fp, str) and fp) and not (
        isinstance(fp, dict) and isinstance(fp.get("graph"), str) and isinstance(fp.get("weights"), str)
    ):
        raise CacheError(f"statistics '{p}': metadata field 'model_fingerprint' is missing or invalid; recalibrate")
    shards = meta.get("data_shards", [meta["data_fingerprint"]])
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) and s for s in shards):
        raise CacheError(f"statistics '{p}': metadata field 'data_shards' is invalid; recalibrate")
    meta["data_shards"] = shards


def load_stats(path: str | Path) -> tuple[dict[str, TensorStats], dict[str, Any]]:
    """Read a statistics file; CacheError naming the file for anything malformed.

    Returns the statistics (file order) and the metadata (with ``data_shards`` filled in).
    The arrays are checked as :meth:`TensorStats.from_dict` would, but vectorised.
    """
    p = Path(path)
    if p.is_dir():
        raise CacheError(f"statistics '{p}' is a directory; give the .stats.npz file")
    if not p.is_file():
        raise CacheError(f"statistics '{p}': no such file; run 'quant calibrate' to create it")
    try:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if magic != b"PK\x03\x04":  # every .npz is a zip archive
            raise CacheError(f"statistics '{p}': not a NumPy .npz archive; pass the .stats.npz file quant wrote")
        with np.load(p, allow_pickle=False) as z:
            absent = [k for k in _ARRAYS if k not in z.files]
            if absent:
                raise CacheError(
                    f"statistics '{p}': array '{absent[0]}' is missing; the file is incomplete, recalibrate"
                )
            arrays = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as exc:
        # zlib.error: a damaged compressed member; NotImplementedError: zipfile on a garbled version
        # or compression method field.
        raise CacheError(f"statistics '{p}': not a readable statistics file ({exc}); recalibrate") from exc
    try:
        meta = json.loads(str(arrays["meta"]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CacheError(f"statistics '{p}': metadata is not valid JSON; recalibrate") from exc
    if not isinstance(meta, dict) or meta.get("schema") != STATS_SCHEMA:
        schema = meta.get("schema") if isinstance(meta, dict) else None
        raise CacheError(f"statistics '{p}': not a quant statistics file (schema {schema!r})")
    version = meta.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CacheError(f"statistics '{p}': no valid schema_version; recalibrate")
    if version > STATS_SCHEMA_VERSION:
        raise CacheError(
            f"statistics '{p}' has schema version {version}; this quant reads up to {STATS_SCHEMA_VERSION}; upgrade quant"
        )
    names = meta.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CacheError(f"statistics '{p}': metadata has no list of tensor names; the file is corrupt, recalibrate")
    n = len(names)
    counts = arrays["counts"]
    if (
        counts.ndim != 2
        or counts.shape[0] != n
        or any(arrays[k].shape != (n,) for k in ("hist_range", "absmax", "count", "min", "max"))
    ):
        raise CacheError(f"statistics '{p}': arrays do not match the {n} tensor names; the file is corrupt, recalibrate")
    if len(set(names)) != n:
        raise CacheError(f"statistics '{p}': duplicate tensor names; the file is corrupt, recalibrate")
    num_bins = int(counts.shape[1])
    if num_bins < MIN_NUM_BINS or num_bins & (num_bins - 1) or meta.get("num_bins", num_bins) != num_bins:
        raise CacheError(f"statistics '{p}': {num_bins} histogram bins is not a valid bin count; the file is corrupt")
    _check_meta(p, meta)
    _check_arrays(p, names, arrays)
    stats: dict[str, TensorStats] = {}
    for i, name in enumerate(names):
        c = int(arrays["count"][i])
        lo, hi = float(arrays["min"][i]), float(arrays["max"][i])
        stats[name] = TensorStats(
            num_bins=num_bins,
            hist_range=float(arrays["hist_range"][i]),
            counts=counts[i],
            count=c,
            min=None if c == 0 else lo,
            max=None if c == 0 else hi,
            absmax=float(arrays["absmax"][i]),
        )
    return stats, meta


def _check_arrays(p: Path, names: list[str], a: Mapping[str, np.ndarray]) -> None:
    """Vectorised version of TensorStats.from_dict's checks; CacheError naming the first bad tensor."""

    def fail(i: int, what: str) -> CacheError:
        return CacheError(f"statistics '{p}', tensor '{names[i]}': {what}; the file is corrupt, recalibrate")

    counts, count = a["counts"], a["count"]
    for key in ("hist_range", "absmax", "min", "max"):
        if a[key].dtype.kind not in "fiu":
            raise CacheError(f"statistics '{p}': '{key}' holds {a[key].dtype} values, not real numbers; the file is corrupt, recalibrate")
    if not np.issubdtype(counts.dtype, np.integer) or not np.issubdtype(count.dtype, np.integer):
        raise CacheError(f"statistics '{p}': counts are not integers; the file is corrupt, recalibrate")
    for key in ("hist_range", "absmax"):
        bad = np.flatnonzero(~np.isfinite(a[key]) | (a[key] < 0))
        if bad.size:
            raise fail(int(bad[0]), f"'{key}' is {a[key][bad[0]]}")
    bad = np.flatnonzero((counts < 0).any(axis=1) | (count < 0) | (counts.sum(axis=1) != count))
    if bad.size:
        raise fail(int(bad[0]), "histogram counts do not sum to the element count")
    empty = count == 0
    lo, hi = a["min"], a["max"]
    bad = np.flatnonzero(~empty & ~(np.isfinite(lo) & np.isfinite(hi)))
    if bad.size:
        raise fail(int(bad[0]), "min/max missing although elements were counted")
    for i, (r, m) in enumerate(zip(a["hist_range"].tolist(), a["absmax"].tolist(), strict=True)):
        if r != (pow2_ceil(m) if m > 0 else 0.0):
            raise fail(i, f"histogram range {r} does not fit absmax {m}")


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def data_shards(meta: Mapping[str, Any]) -> list[str]:
    """The data fingerprints a statistics file covers (one for a file that was never merged)."""
    shards = meta.get("data_shards")
    if isinstance(shards, list) and shards:
        return [str(s) for s in shards]
    return [str(meta["data_fingerprint"])]


def merged_data_fingerprint(shards: Iterable[str]) -> str:
    """Order-independent fingerprint of several data shards; one shard keeps its own fingerprint."""
    from quant.fingerprint import combine

    unique = sorted(set(shards))
    if not unique:
        raise UsageError("merged_data_fingerprint needs at least one shard fingerprint")
    if len(unique) == 1:
        return unique[0]
    return combine(_MERGED_TAG, *unique)


def _model_difference(a: Any, b: Any) -> str | None:
    """None when two stored model fingerprints are equal, else which part differs."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        parts = [f"model {k} differ" for k in ("graph", "weights") if a.get(k) != b.get(k)]
        return " and ".join(parts) or None
    if isinstance(a, Mapping):
        a = a.get("combined")
    if isinstance(b, Mapping):
        b = b.get("combined")
    return None if a == b else "model fingerprints differ"


def merge_statistics(
    parts: Sequence[tuple[str, Mapping[str, TensorStats], Mapping[str, Any]]],
) -> tuple[dict[str, TensorStats], dict[str, Any]]:
    """Merge the statistics of data shards of one model (pure): ``parts`` = (source, stats, meta).

    Returns the merged statistics (tensor order of the first part) and metadata: ``num_samples``
    summed, ``data_shards`` the sorted union, ``data_fingerprint`` from
    :func:`merged_data_fingerprint`. CacheError naming the offending source when the models,
    tensors, bin counts or scopes differ, or when a data shard appears twice.
    """
    if len(parts) < 2:
        raise UsageError("merging statistics needs at least two files (data shards of one model)")
    first_src, first_stats, first_meta = parts[0]
    names = list(first_stats)
    name_set = set(names)
    merged = dict(first_stats)
    shard_owner = dict.fromkeys(data_shards(first_meta), first_src)
    num_samples = int(first_meta.get("num_samples", 0))
    for src, stats, meta in parts[1:]:
        diff = _model_difference(first_meta.get("model_fingerprint"), meta.get("model_fingerprint"))
        if diff is not None:
            raise CacheError(
                f"statistics '{src}' were collected on another model than '{first_src}' ({diff}); "
                f"merge only shards of the same model"
            )
        if meta.get("num_bins") != first_meta.get("num_bins"):
            raise CacheError(
                f"statistics '{src}' have {meta.get('num_bins')} histogram bins, '{first_src}' "
                f"{first_meta.get('num_bins')}; collect every shard with the same --num-bins"
            )
        if meta.get("scope") != first_meta.get("scope") or set(stats) != name_set:
            only = sorted(set(stats) ^ name_set)
            first = f" (first difference: '{only[0]}')" if only else ""
            raise CacheError(
                f"statistics '{src}' cover other tensors than '{first_src}'{first}; collect every "
                f"shard with the same --scope"
            )
        for shard in data_shards(meta):
            if shard in shard_owner:
                raise CacheError(
                    f"statistics '{src}' hold a data shard that '{shard_owner[shard]}' holds too "
                    f"(same data fingerprint {shard[:12]}); the same samples would be counted twice"
                )
            shard_owner[shard] = src
        for name in names:
            merged[name] = merged[name].merge(stats[name])
        num_samples += int(meta.get("num_samples", 0))
    from quant import __version__

    shards = sorted(shard_owner)
    meta_out: dict[str, Any] = {
        "num_samples": num_samples,
        "model_fingerprint": first_meta.get("model_fingerprint"),
        "data_fingerprint": merged_data_fingerprint(shards),
        "data_shards": shards,
        "scope": first_meta.get("scope"),
        "quant_version": __version__,
        "merged": True,
    }
    return merged, meta_out


def merge_stats_files(inputs: Sequence[str | Path], output: str | Path) -> tuple[Path, dict[str, Any], dict[str, TensorStats]]:
    """Load statistics files, merge them (:func:`merge_statistics`) and write ``output`` atomically.

    Returns (output path, merged metadata as written, merged statistics).
    """
    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise UsageError("merge-stats needs at least two statistics files (data shards of one model)")
    check_output_not_input(output, *paths)
    parts = []
    for p in paths:
        stats, meta = load_stats(p)
        parts.append((str(p), stats, meta))
    merged, meta = merge_statistics(parts)
    out = save_stats(output, merged, meta)
    full = {**meta, "names": list(merged), "num_bins": next(iter(merged.values())).num_bins if merged else None}
    return out, full, merged


def summarize_stats(stats: Mapping[str, TensorStats], meta: Mapping[str, Any], *, sort: str = "file") -> list[dict[str, Any]]:
    """One row per tensor (name, count, min, max, absmax, hist_range) for ``quant inspect``.

    ``sort``: ``file`` (file order), ``name``, or ``amax`` (largest absmax first).
    """
    rows: list[dict[str, Any]] = [
        {
            "name": name,
            "count": s.count,
            "min": s.min,
            "max": s.max,
            "absmax": s.absmax,
            "hist_range": s.hist_range,
        }
        for name, s in stats.items()
    ]
    if sort == "name":
        rows.sort(key=lambda r: r["name"])
    elif sort == "amax":
        rows.sort(key=lambda r: -float(r["absmax"]))
    elif sort != "file":
        raise UsageError(f"--sort '{sort}' is not a sort order; use one of file, name, amax")
    return rows


__all__ = [
    "STATS_SCHEMA",
    "STATS_SCHEMA_VERSION",
    "data_shards",
    "load_stats",
    "merge_statistics",
    "merge_stats_files",
    "merged_data_fingerprint",
    "save_stats",
    "stats_path",
    "stats_to_bytes",
    "summarize_stats",
]
