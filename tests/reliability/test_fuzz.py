"""Property tests of the parsers (hypothesis): round trips that must be exact, and arbitrary input
that must either parse or fail with quant's own error type. The long session is
scripts/fuzz_parsers.py (counts in docs/RELIABILITY.md); these keep a few hundred examples each."""

from __future__ import annotations

import io
import json
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant.cache.detect import parse_cache_bytes
from quant.cache.io import read_cache, write_cache
from quant.cache.trt import format_trt_cache, parse_trt_cache, scale_for_amax
from quant.calibrators.stats import StatsCollector
from quant.calibrators.stats_io import load_stats, save_stats, stats_to_bytes
from quant.datasets.preprocess import PreprocessOverrides, parse_preprocess
from quant.errors import CacheError, QuantError, ReportError, UsageError
from quant.report.schema import Report

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
FILES = settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# Tensor names as exporters make them: colons, slashes, spaces, any unicode (no control characters,
# which a line-based cache cannot hold: those are refused, see test_names_with_control_characters).
NAMES = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from([":", " ", "/", "\t"]),
    min_size=1, max_size=30,
)
# Every positive finite float32 scale (normal and subnormal), as the amax it stands for.
SCALES = st.integers(min_value=1, max_value=0x7F7FFFFF).map(lambda b: struct.unpack(">f", b.to_bytes(4, "big"))[0])
AMAX = st.one_of(
    SCALES.map(lambda s: s * 127.0),
    st.floats(min_value=1e-30, max_value=4e40, allow_nan=False).filter(lambda a: 0 < scale_for_amax(a) < math.inf),
)


@FAST
@given(st.dictionaries(NAMES, AMAX, min_size=1, max_size=8))
def test_trt_cache_text_roundtrip(table: dict[str, float]) -> None:
    text = format_trt_cache(table, trt_version=8600, algorithm="EntropyCalibration2")
    parsed = parse_trt_cache(text, source="rt.cache")
    assert list(parsed.amax) == list(table)  # same names, same order
    for name, amax in table.items():
        assert scale_for_amax(parsed.amax[name]) == scale_for_amax(amax)  # same float32 scale, bit for bit
    assert parsed.zero_scale_names == () and parsed.warnings == ()


@FILES
@given(st.dictionaries(NAMES, AMAX, min_size=1, max_size=6), st.sampled_from(["entropy", "minmax", "percentile"]))
def test_cache_files_roundtrip_exact(table: dict[str, float], method: str) -> None:
    """Through write_cache / read_cache the sidecar gives back the exact float64 amax."""
    with tempfile.TemporaryDirectory() as tmp:
        cache, _side = write_cache(Path(tmp) / "rt.cache", {"method": method, "params": {}, "amax": table})
        loaded = read_cache(cache, require_sidecar=True)
        assert loaded.amax == table
        assert loaded.method == method
        assert not list(Path(tmp).glob(".quant-tmp-*"))


@FAST
@given(st.text(min_size=1, max_size=12))
def test_names_with_control_characters_roundtrip_or_are_refused(name: str) -> None:
    try:
        text = format_trt_cache({name: 1.0}, trt_version=8600, algorithm="MinMaxCalibration")
    except CacheError as exc:
        assert "tensor name" in str(exc)
        return
    assert list(parse_trt_cache(text, source="c").amax) == [name]


@FAST
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_cache_parser_takes_any_bytes(data: bytes) -> None:
    try:
        parsed = parse_cache_bytes(data, source="any.cache")
    except CacheError as exc:
        assert "any.cache" in str(exc)  # the message names the file
        return
    assert all(a > 0 and math.isfinite(a) for a in parsed.amax.values())


_GOOD_CACHE = "TRT-8600-EntropyCalibration2\ninput: 3c010a14\nconv1/Relu:0: 3d000000\nblock 1: out: 3f800000\n"


@FAST
@given(st.integers(0, len(_GOOD_CACHE)), st.binary(max_size=8), st.integers(0, 8))
def test_cache_parser_takes_any_damage(at: int, insert: bytes, delete: int) -> None:
    data = _GOOD_CACHE.encode()
    data = data[:at] + insert + data[at + delete :]
    try:
        parsed = parse_cache_bytes(data, source="damaged.cache")
    except CacheError:
        return
    assert all(a > 0 and math.isfinite(a) for a in parsed.amax.values())


@FILES
@given(
    st.lists(
        st.tuples(NAMES, st.integers(0, 2**31), st.sampled_from([0.0, 1e-6, 1.0, 1e4, 1e30])),
        min_size=1, max_size=4, unique_by=lambda x: x[0],
    )
)
def test_statistics_file_roundtrip(spec: list[tuple[str, int, float]]) -> None:
    collector = StatsCollector(128)
    for name, seed, scale in spec:
        rng = np.random.default_rng(seed)
        for batch in range(2):
            collector.collect(name, (rng.standard_normal(int(rng.integers(1, 40))) * scale).astype(np.float32),
                              batch_index=batch)
    stats = collector.stats()
    with tempfile.TemporaryDirectory() as tmp:
        path = save_stats(Path(tmp) / "rt.stats.npz", stats,
                          {"num_samples": 2, "model_fingerprint": "m", "data_fingerprint": "d"})
        back, meta = load_stats(path)
    assert list(back) == list(stats) and meta["num_samples"] == 2
    for name, s in stats.items():
        b = back[name]
        assert (s.count, s.min, s.max, s.absmax, s.hist_range) == (b.count, b.min, b.max, b.absmax, b.hist_range)
        assert np.array_equal(s.counts, b.counts)


@pytest.fixture(scope="module")
def stats_bytes() -> bytes:
    collector = StatsCollector(128)
    collector.collect("a", np.linspace(-3, 5, 100, dtype=np.float32))
    collector.collect("b:0 x", np.zeros(7, np.float32))
    return stats_to_bytes(collector.stats(), {"num_samples": 3, "model_fingerprint": "m", "data_fingerprint": "d"})


@FILES
@given(st.data())
def test_statistics_loader_takes_any_damage(stats_bytes: bytes, data: st.DataObject) -> None:
    blob = bytearray(stats_bytes)
    for _ in range(data.draw(st.integers(1, 6))):
        if not blob:
            break
        i = data.draw(st.integers(0, len(blob) - 1))
        op = data.draw(st.sampled_from(["set", "cut", "truncate"]))
        if op == "set":
            blob[i] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del blob[i : i + data.draw(st.integers(1, 64))]
        else:
            del blob[i:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.stats.npz"
        path.write_bytes(bytes(blob))
        try:
            load_stats(path)
        except CacheError as exc:
            assert "x.stats.npz" in str(exc)


@FILES
@given(st.sampled_from(["meta", "counts", "hist_range", "absmax", "count", "min", "max"]),
       st.sampled_from(["float32", "int8", "bool", "complex64", "U3", "S2", "uint64"]),
       st.sampled_from([(), (0,), (2,), (2, 3)]))
def test_statistics_loader_takes_any_array(stats_bytes: bytes, key: str, dtype: str, shape: tuple[int, ...]) -> None:
    with np.load(io.BytesIO(stats_bytes), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays[key] = np.zeros(shape, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.stats.npz"
        np.savez(path, **arrays)
        try:  # a few replacements are still a valid file (e.g. float32 zeros for 'min')
            stats, _meta = load_stats(path)
        except CacheError as exc:
            assert "x.stats.npz" in str(exc)
        else:
            assert all(s.counts.sum() == s.count for s in stats.values())


# --------------------------------------------------------------------------------------------
# Preprocessing spec parser
# --------------------------------------------------------------------------------------------


@FAST
@given(st.text(max_size=60))
def test_preprocess_parser_takes_any_text(text: str) -> None:
    try:
        result = parse_preprocess(text)
    except UsageError:
        return
    assert isinstance(result, PreprocessOverrides)


FLOATS = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda f: float(f"{f:.6g}"))


@FAST
@given(
    st.sampled_from(["imagenet", "unit", "raw", "tf", "imagenet-caffe"]),
    st.integers(1, 4096), st.integers(1, 4096),
    st.lists(FLOATS, min_size=1, max_size=3), st.lists(FLOATS.filter(lambda f: f != 0), min_size=1, max_size=3),
    st.sampled_from(["rgb", "bgr", "gray"]), st.sampled_from(["nchw", "nhwc"]),
    st.sampled_from(["KEY", "key", "Key "]),
)
def test_preprocess_parser_reads_back_what_was_written(
    preset: str, h: int, w: int, mean: list[float], std: list[float], color: str, layout: str, case: str
) -> None:
    def k(name: str) -> str:  # keys are case-insensitive and may carry spaces
        return {"KEY": name.upper(), "key": name, "Key ": f" {name.capitalize()} "}[case]

    text = (f"{k('preset')}={preset},{k('size')}={h}x{w},{k('mean')}={'/'.join(map(str, mean))},"
            f"{k('std')}={'/'.join(map(str, std))},{k('color')}={color},{k('layout')}={layout}")
    o = parse_preprocess(text)
    assert (o.preset, o.height, o.width, o.color, o.layout) == (preset, h, w, color, layout)
    assert o.mean == tuple(mean) and o.std == tuple(std)
    assert PreprocessOverrides.from_dict(o.to_dict()) == o


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report_dict(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from quant import api
    from quant.config import DataOptions, EvalOptions

    rep = api.evaluate(None, DataOptions("demo:eval", max_samples=32, batch_size=16),
                       options=EvalOptions(precisions=("fp32", "fp16")))
    return rep.to_dict()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def test_report_roundtrip(report_dict: dict) -> None:
    rep = Report.from_dict(report_dict)
    assert Report.from_dict(json.loads(json.dumps(rep.to_dict()))).to_dict() == rep.to_dict()


@FAST
@given(st.data())
def test_report_loader_takes_any_damage(report_dict: dict, data: st.DataObject) -> None:
    from quant.report.table import render_table

    doc = json.loads(json.dumps(report_dict))
    node = doc
    path: list = []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else list(range(len(node)))))
        path.append(key)
        node = node[key]
    replacement = data.draw(JSON)
    if path:
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = replacement
    else:
        doc = replacement
    try:
        rep = Report.from_dict(doc, source="fuzzed.json")
    except ReportError:
        return
    render_table(rep)  # whatever loads also renders


@FAST
@given(st.binary(max_size=200))
def test_report_file_loader_takes_any_bytes(data: bytes) -> None:
    from quant.report.schema import load_report

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.json"
        path.write_bytes(data)
        try:
            load_report(path)
        except QuantError as exc:
            assert isinstance(exc, ReportError) and "r.json" in str(exc)
