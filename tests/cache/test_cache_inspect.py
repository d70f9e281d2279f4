"""quant.cache.inspect: rows, summary and text of a loaded cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from cache_fixtures import AMAX

from quant.cache.inspect import cache_table, describe_cache, render_cache_description
from quant.cache.io import LoadedCache, read_cache, write_cache
from quant.calibrators.result import CalibrationResult
from quant.errors import UsageError


@pytest.fixture
def trt_cache(tmp_path: Path) -> LoadedCache:
    path = tmp_path / "t.cache"
    path.write_text("TRT-8600-EntropyCalibration2\nb: 3f800000\nzero: 0\na: 40000000\nc: 3c010a14\n")
    return read_cache(path)


def test_rows_in_file_order(trt_cache: LoadedCache) -> None:
    rows = cache_table(trt_cache)
    assert [r["name"] for r in rows] == ["b", "a", "c", "zero"]
    assert rows[0] == {"name": "b", "amax": 127.0, "scale": 1.0, "hex": "3f800000"}
    assert rows[2]["hex"] == "3c010a14"
    assert rows[3] == {"name": "zero", "amax": None, "scale": 0.0, "hex": "00000000"}


def test_rows_sorted(trt_cache: LoadedCache) -> None:
    assert [r["name"] for r in cache_table(trt_cache, sort="name")] == ["a", "b", "c", "zero"]
    assert [r["name"] for r in cache_table(trt_cache, sort="amax")] == ["a", "b", "c", "zero"]


def test_bad_sort(trt_cache: LoadedCache) -> None:
    with pytest.raises(UsageError, match="--sort 'size'"):
        cache_table(trt_cache, sort="size")  # type: ignore[arg-type]


def test_describe_without_sidecar(trt_cache: LoadedCache) -> None:
    desc = describe_cache(trt_cache)
    assert desc["format"] == "tensorrt"
    assert desc["trt_version"] == 8600 and desc["trt_version_text"] == "8.6.0"
    assert desc["algorithm"] == "EntropyCalibration2"
    assert (desc["tensors"], desc["with_range"], desc["zero_scale"]) == (4, 3, 1)
    assert desc["sidecar"] is None
    text = render_cache_description(desc, cache_table(trt_cache))
    assert "TensorRT   8.6.0 (header 8600)" in text
    assert "sidecar    none" in text
    assert "4 (3 with a range, 1 zero-scale)" in text
    lines = text.splitlines()
    assert lines[-1].split() == ["zero", "-", "0", "00000000"]
    assert any(line.split() == ["b", "127", "1", "3f800000"] for line in lines)


def test_describe_with_sidecar(tmp_path: Path, result: CalibrationResult) -> None:
    cache, _ = write_cache(tmp_path / "m.cache", result)
    loaded = read_cache(cache)
    desc = describe_cache(loaded)
    assert desc["trt_version_text"] == "10.13.0"
    assert desc["sidecar"]["method"] == "entropy"
    assert desc["sidecar"]["num_samples"] == 64
    assert desc["sidecar"]["created"] == "2025-01-31T12:00:00+00:00"
    assert desc["sidecar"]["no_range"] == 1
    rows = cache_table(loaded, sort="amax")
    assert rows[0]["name"] == "conv1:0" and rows[0]["amax"] == AMAX["conv1:0"]
    text = render_cache_description(desc, rows)
    assert "method     entropy (num_bins=2048)" in text
    assert "samples    64" in text
    assert "(Unnamed Layer* 37) [Constant]_output" in text


def test_describe_ort_table_and_odd_version(tmp_path: Path) -> None:
    (tmp_path / "calibration.cache").write_text("a 1e+45\n")
    loaded = read_cache(tmp_path / "calibration.cache")
    desc = describe_cache(loaded)
    assert desc["trt_version"] is None and desc["algorithm"] is None
    rows = cache_table(loaded)
    assert rows == [{"name": "a", "amax": 1e45, "scale": None, "hex": None}]
    text = render_cache_description(desc, rows)
    assert "TensorRT" not in text and "format     onnxruntime-text" in text
    (tmp_path / "odd.cache").write_text("TRT-12345-EntropyCalibration2\na: 1\n")
    odd = describe_cache(read_cache(tmp_path / "odd.cache"))
    assert odd["trt_version_text"] == "unknown (12345)"
    assert "warning    header version 12345" in render_cache_description(odd, [])
