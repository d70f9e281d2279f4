"""quant.calibrators.stats_io: the statistics file, its checks, and merging shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.calibrators.methods import METHODS, CalibConfig, compute_amax
from quant.calibrators.stats import StatsCollector, TensorStats
from quant.calibrators.stats_io import (
    STATS_SCHEMA_VERSION,
    data_shards,
    load_stats,
    merge_statistics,
    merge_stats_files,
    merged_data_fingerprint,
    save_stats,
    stats_path,
    stats_to_bytes,
    summarize_stats,
)
from quant.errors import CacheError, OutputError, UsageError

MODEL_FP = {"graph": "g" * 64, "weights": "w" * 64}


def collect(arrays: dict[str, list[np.ndarray]], num_bins: int = 256) -> dict[str, TensorStats]:
    c = StatsCollector(num_bins)
    for name, batches in arrays.items():
        for b in batches:
            c.collect(name, b)
    return c.stats()


def meta(data_fp: str, n: int, **extra: object) -> dict[str, object]:
    return {"num_samples": n, "model_fingerprint": MODEL_FP, "data_fingerprint": data_fp, "scope": "all", **extra}


def shard(seed: int, scale: float) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        "a": [(rng.standard_normal((4, 8)) * scale).astype(np.float32) for _ in range(3)],
        "relu": [np.maximum(rng.standard_normal((4, 8)) * scale, 0).astype(np.float32) for _ in range(3)],
        "zeros": [np.zeros((4, 8), np.float32)],
    }


def test_stats_path() -> None:
    assert stats_path("runs/m.cache") == Path("runs/m.cache.stats.npz")


def test_round_trip(tmp_path: Path) -> None:
    stats = collect(shard(0, 2.0))
    stats["never"] = TensorStats.empty(256)
    p = save_stats(tmp_path / "s.stats.npz", stats, meta("d" * 64, 12, data_manifest={"num_files": 3}))
    back, m = load_stats(p)
    assert list(back) == list(stats)
    assert all(back[n] == stats[n] for n in stats)
    assert back["never"].min is None and back["zeros"].absmax == 0.0
    assert m["num_samples"] == 12 and m["num_bins"] == 256 and m["names"] == list(stats)
    assert m["data_shards"] == ["d" * 64] and m["schema_version"] == STATS_SCHEMA_VERSION
    assert m["data_manifest"] == {"num_files": 3}


def _rewrite(path: Path, **changes: np.ndarray | None) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def _meta_of(path: Path) -> dict[str, object]:
    with np.load(path, allow_pickle=False) as z:
        return dict(json.loads(str(z["meta"])))


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "no such file"),
        ("directory", "is a directory"),
        ("garbage", "not a readable statistics file"),
        ("no_counts", "array 'counts' is missing"),
        ("schema", "not a quant statistics file"),
        ("newer", "upgrade quant"),
        ("sum", "histogram counts do not sum"),
        ("names", "arrays do not match the 3 tensor names"),
        ("range", "does not fit absmax"),
        ("num_samples", "'num_samples' is missing or invalid"),
        ("model_fp", "'model_fingerprint' is missing"),
        ("bins", "not a valid bin count"),
    ],
)
def test_load_errors_name_the_file(tmp_path: Path, case: str, match: str) -> None:
    p = tmp_path / "s.stats.npz"
    save_stats(p, collect({"a": shard(1, 1.0)["a"], "b": shard(2, 1.0)["a"]}), meta("d" * 64, 4))
    m = _meta_of(p)
    if case == "missing":
        p = tmp_path / "nope.stats.npz"
    elif case == "directory":
        p = tmp_path
    elif case == "garbage":
        p.write_bytes(b"PK\x03\x04 truncated")
    elif case == "no_counts":
        _rewrite(p, counts=None)
    elif case in ("schema", "newer", "num_samples", "model_fp", "names"):
        if case == "schema":
            m["schema"] = "other"
        elif case == "newer":
            m["schema_version"] = STATS_SCHEMA_VERSION + 1
        elif case == "num_samples":
            del m["num_samples"]
        elif case == "model_fp":
            m["model_fingerprint"] = {"graph": "g"}
        else:
            m["names"] = ["a", "b", "c"]
        _rewrite(p, meta=np.array(json.dumps(m)))
    elif case == "sum":
        with np.load(p) as z:
            counts = z["counts"].copy()
        counts[1, 0] += 1
        _rewrite(p, counts=counts)
    elif case == "range":
        _rewrite(p, hist_range=np.array([1024.0, 1024.0]))
    elif case == "bins":
        with np.load(p) as z:
            counts = z["counts"][:, :100].copy()
        _rewrite(p, counts=counts)
    with pytest.raises(CacheError, match=match) as exc:
        load_stats(p)
    assert str(p) in str(exc.value)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------------


def test_merge_equals_collecting_everything_for_every_method() -> None:
    s1, s2 = shard(3, 1.0), shard(4, 5.0)  # the second shard's range is larger: histograms grow
    union = {n: s1[n] + s2[n] for n in s1}
    merged, m = merge_statistics(
        [("one", collect(s1), meta("1" * 64, 12)), ("two", collect(s2), meta("2" * 64, 12))]
    )
    whole = collect(union)
    assert all(merged[n] == whole[n] for n in whole)
    for method in METHODS:
        config = CalibConfig(method=method, num_bins=256)
        assert compute_amax(merged, config) == compute_amax(whole, config), method
    assert m["num_samples"] == 24
    assert m["data_shards"] == ["1" * 64, "2" * 64]
    assert m["model_fingerprint"] == MODEL_FP


def test_merge_is_order_independent_and_associative() -> None:
    parts = [(f"s{i}", collect(shard(10 + i, 1.0 + i)), meta(str(i) * 64, 4)) for i in range(3)]
    ab, m_ab = merge_statistics(parts[:2])
    ba, m_ba = merge_statistics(parts[1::-1])
    assert m_ab["data_fingerprint"] == m_ba["data_fingerprint"]
    assert all(ab[n] == ba[n] for n in ab)
    abc, m_abc = merge_statistics(parts)
    nested, m_nested = merge_statistics([("ab", ab, m_ab), parts[2]])
    assert m_abc["data_fingerprint"] == m_nested["data_fingerprint"]
    assert m_abc["data_shards"] == m_nested["data_shards"] == sorted(str(i) * 64 for i in range(3))
    assert all(abc[n] == nested[n] for n in abc)


def test_merged_data_fingerprint() -> None:
    assert merged_data_fingerprint(["a" * 64]) == "a" * 64
    assert merged_data_fingerprint(["a", "b"]) == merged_data_fingerprint(["b", "a"])
    assert merged_data_fingerprint(["a", "b"]) != merged_data_fingerprint(["a", "c"])
    assert data_shards({"data_fingerprint": "x"}) == ["x"]
    assert data_shards({"data_fingerprint": "x", "data_shards": ["p", "q"]}) == ["p", "q"]
    with pytest.raises(UsageError):
        merged_data_fingerprint([])


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=4),
    scales=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=4, max_size=4),
)
def test_merge_property(sizes: list[int], scales: list[float]) -> None:
    rng = np.random.default_rng(len(sizes))
    shards = [[(rng.standard_normal((n, 5)) * scales[i]).astype(np.float32)] for i, n in enumerate(sizes)]
    parts = [(f"s{i}", collect({"t": b}, 128), meta(f"{i:064d}", 1)) for i, b in enumerate(shards)]
    merged, _ = merge_statistics(parts)
    whole = collect({"t": [b for s in shards for b in s]}, 128)
    assert merged["t"] == whole["t"]


@pytest.mark.parametrize(
    "change, match",
    [
        ("weights", "another model than 'one' \\(model weights differ\\)"),
        ("graph", "model graph differ"),
        ("bins", "same --num-bins"),
        ("tensors", "other tensors than 'one' \\(first difference: 'extra'\\)"),
        ("duplicate", "hold a data shard that 'one' holds too"),
    ],
)
def test_merge_errors_name_the_file(change: str, match: str) -> None:
    base = collect(shard(5, 1.0))
    other_stats = collect(shard(6, 1.0))
    m1 = meta("1" * 64, 4, num_bins=256)
    m2 = meta("2" * 64, 4, num_bins=256)
    if change == "weights":
        m2["model_fingerprint"] = {**MODEL_FP, "weights": "x" * 64}
    elif change == "graph":
        m2["model_fingerprint"] = {**MODEL_FP, "graph": "x" * 64}
    elif change == "bins":
        m2["num_bins"] = 512
    elif change == "tensors":
        other_stats["extra"] = TensorStats.empty(256)
    elif change == "duplicate":
        m2["data_fingerprint"] = "1" * 64
    with pytest.raises(CacheError, match=match) as exc:
        merge_statistics([("one", base, m1), ("two", other_stats, m2)])
    assert "'two'" in str(exc.value)


def test_merge_needs_two() -> None:
    with pytest.raises(UsageError, match="at least two"):
        merge_statistics([("one", collect(shard(1, 1.0)), meta("1" * 64, 1))])


def test_merge_files(tmp_path: Path) -> None:
    a = save_stats(tmp_path / "a.stats.npz", collect(shard(7, 1.0)), meta("1" * 64, 4))
    b = save_stats(tmp_path / "b.stats.npz", collect(shard(8, 3.0)), meta("2" * 64, 6))
    out, m, merged = merge_stats_files([a, b], tmp_path / "all.stats.npz")
    back, m_back = load_stats(out)
    assert all(back[n] == merged[n] for n in merged)
    assert m_back["num_samples"] == 10 == m["num_samples"]
    assert m_back["data_fingerprint"] == merged_data_fingerprint(["1" * 64, "2" * 64])
    assert m_back["merged"] is True
    with pytest.raises(OutputError, match="same file as input"):
        merge_stats_files([a, b], a)
    with pytest.raises(UsageError, match="at least two"):
        merge_stats_files([a], tmp_path / "x.npz")
    with pytest.raises(CacheError, match="no such file"):
        merge_stats_files([a, tmp_path / "missing.stats.npz"], tmp_path / "x.npz")


def test_summarize_sorts() -> None:
    stats = collect(shard(9, 2.0))
    rows = summarize_stats(stats, {}, sort="amax")
    assert [r["absmax"] for r in rows] == sorted((s.absmax for s in stats.values()), reverse=True)
    assert [r["name"] for r in summarize_stats(stats, {}, sort="name")] == sorted(stats)
    assert [r["name"] for r in summarize_stats(stats, {})] == list(stats)
    with pytest.raises(UsageError, match="--sort"):
        summarize_stats(stats, {}, sort="size")


def test_mixed_bins_cannot_be_saved() -> None:
    with pytest.raises(CacheError, match="mix bin counts"):
        stats_to_bytes({"a": TensorStats.empty(128), "b": TensorStats.empty(256)}, meta("1" * 64, 1))
