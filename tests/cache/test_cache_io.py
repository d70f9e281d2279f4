"""quant.cache.io: cache + sidecar writing, reading any format, sidecar checks, model match."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cache_fixtures import AMAX, make_result

import quant.cache.io as cache_io
from quant.cache.io import (
    CacheMatch,
    LoadedCache,
    check_cache_against_model,
    is_trt_internal_name,
    read_cache,
    sidecar_path,
    write_cache,
)
from quant.cache.trt import DEFAULT_TRT_VERSION, parse_trt_cache, scale_for_amax
from quant.calibrators.result import CalibrationResult
from quant.errors import CacheError, OutputError, UsageError


def test_sidecar_path() -> None:
    assert sidecar_path("a/model.cache") == Path("a/model.cache.json")
    assert sidecar_path(Path("x")) == Path("x.json")


def test_write_cache_files(tmp_path: Path, result: CalibrationResult) -> None:
    cache, side = write_cache(tmp_path / "m.cache", result)
    assert cache == tmp_path / "m.cache" and side == tmp_path / "m.cache.json"
    text = cache.read_text()
    assert text.startswith(f"TRT-{DEFAULT_TRT_VERSION}-EntropyCalibration2\n")
    parsed = parse_trt_cache(text, source="m.cache")
    assert list(parsed.amax) == list(AMAX)
    doc = json.loads(side.read_text())
    assert doc["schema"] == "quant.calibration-sidecar" and doc["schema_version"] == 1
    assert doc["cache_file"] == "m.cache"
    assert doc["cache_sha256"] == hashlib.sha256(cache.read_bytes()).hexdigest()
    assert doc["trt_version"] == 101300 and doc["trt_version_text"] == "10.13.0"
    assert doc["algorithm"] == "EntropyCalibration2"
    assert doc["calibration"] == result.to_dict()
    assert CalibrationResult.from_dict(doc["calibration"]) == result


def test_read_back_exact_amax_from_sidecar(tmp_path: Path, result: CalibrationResult) -> None:
    cache, _ = write_cache(tmp_path / "m.cache", result)
    loaded = read_cache(cache)
    assert loaded.format == "tensorrt"
    assert loaded.amax == AMAX  # exact float64, not the float32-rounded cache values
    assert loaded.parsed.amax != AMAX
    assert list(loaded.amax) == list(AMAX)
    assert loaded.method == "entropy"
    assert loaded.model_fingerprint == {"graph": "g" * 64, "weights": "w" * 64}
    assert loaded.data_fingerprint == "d" * 64
    assert loaded.calibration is not None and loaded.calibration["num_samples"] == 64
    assert read_cache(cache, require_sidecar=True).amax == AMAX


def test_without_sidecar_amax_comes_from_scales(tmp_path: Path, result: CalibrationResult) -> None:
    cache, side = write_cache(tmp_path / "m.cache", result)
    side.unlink()
    loaded = read_cache(cache)
    assert loaded.sidecar is None and loaded.method is None and loaded.data_fingerprint is None
    assert loaded.model_fingerprint is None
    for name, a in AMAX.items():
        assert scale_for_amax(loaded.amax[name]) == scale_for_amax(a)


def test_percentile_cache_says_entropy2_sidecar_keeps_method(tmp_path: Path) -> None:
    cache, side = write_cache(tmp_path / "p.cache", make_result("percentile"), trt_version=8600)
    assert cache.read_text().startswith("TRT-8600-EntropyCalibration2\n")
    assert read_cache(cache).method == "percentile"
    assert json.loads(side.read_text())["trt_version_text"] == "8.6.0"


def test_minmax_and_explicit_algorithm(tmp_path: Path) -> None:
    cache, _ = write_cache(tmp_path / "a.cache", make_result("minmax"), trt_version=100300)
    assert cache.read_text().startswith("TRT-100300-MinMaxCalibration\n")
    cache, _ = write_cache(tmp_path / "b.cache", make_result("minmax"), algorithm="EntropyCalibration")
    assert read_cache(cache).parsed.algorithm == "EntropyCalibration"


def test_write_errors(tmp_path: Path, result: CalibrationResult) -> None:
    with pytest.raises(UsageError, match="--algorithm 'Entropy3'"):
        write_cache(tmp_path / "a.cache", result, algorithm="Entropy3")
    with pytest.raises(UsageError, match="12345"):
        write_cache(tmp_path / "a.cache", result, trt_version=12345)
    with pytest.raises(CacheError, match="no 'amax' table"):
        write_cache(tmp_path / "a.cache", {"method": "entropy"})
    with pytest.raises(CacheError, match="not plain JSON data"):
        write_cache(
            tmp_path / "a.cache", {"method": "entropy", "amax": {"t": 1.0}, "params": {"x": object()}}
        )
    (tmp_path / "dir.cache").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        write_cache(tmp_path / "dir.cache", result)
    assert not (tmp_path / "a.cache").exists()


def test_interrupted_write_leaves_previous_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache and sidecar are one set (commit_together): an interrupt while the cache is being
    written, after the new sidecar was already written to its temporary file, leaves the previous
    pair byte-identical and usable, and no temporary file behind."""
    cache, side = write_cache(tmp_path / "m.cache", make_result(amax={"a": 1.0}))
    old, old_side = cache.read_bytes(), side.read_bytes()
    real = cache_io.atomic_write

    def fail_on_cache(path, data, **kw):
        if Path(path) == cache:
            raise KeyboardInterrupt
        return real(path, data, **kw)

    monkeypatch.setattr(cache_io, "atomic_write", fail_on_cache)
    with pytest.raises(KeyboardInterrupt):
        write_cache(cache, make_result(amax={"a": 2.0}))
    monkeypatch.undo()
    assert cache.read_bytes() == old and side.read_bytes() == old_side
    assert read_cache(cache).amax == {"a": 1.0}
    assert not list(tmp_path.glob(".quant-tmp-*"))


# --------------------------------------------------------------------------------------------
# Read errors
# --------------------------------------------------------------------------------------------


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"cache '.*nope.cache': no such file"):
        read_cache(tmp_path / "nope.cache")
    with pytest.raises(CacheError, match="is a directory"):
        read_cache(tmp_path)


def test_sidecar_mismatch(tmp_path: Path, result: CalibrationResult) -> None:
    cache, _ = write_cache(tmp_path / "x.cache", result)
    cache.write_text(cache.read_text().replace("EntropyCalibration2", "MinMaxCalibration"))
    with pytest.raises(CacheError) as info:
        read_cache(cache)
    assert str(info.value) == (
        "sidecar 'x.cache.json' does not match cache 'x.cache' (cache edited after calibration?); "
        "delete the sidecar or recalibrate"
    )


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"sidecar '.*x.cache.json' is not valid JSON \(line 1 column 2"),
        (b"\xff\xfe{}", r"sidecar '.*x.cache.json' is not text"),
        ('{"schema": "other"}', r"is not a quant calibration sidecar"),
        ("[]", r"is not a quant calibration sidecar"),
        ('{"schema": "quant.calibration-sidecar", "schema_version": "1"}', r"no valid schema_version"),
        (
            '{"schema": "quant.calibration-sidecar", "schema_version": 9}',
            r"schema_version 9, newer .*upgrade quant",
        ),
    ],
)
def test_bad_sidecar(tmp_path: Path, result: CalibrationResult, content: str | bytes, match: str) -> None:
    cache, side = write_cache(tmp_path / "x.cache", result)
    if isinstance(content, bytes):
        side.write_bytes(content)
    else:
        side.write_text(content)
    with pytest.raises(CacheError, match=match):
        read_cache(cache)


def _edit_sidecar(side: Path, edit) -> None:
    doc = json.loads(side.read_text())
    edit(doc)
    side.write_text(json.dumps(doc))


def test_sidecar_amax_edited_by_hand(tmp_path: Path, result: CalibrationResult) -> None:
    cache, side = write_cache(tmp_path / "x.cache", result)
    _edit_sidecar(side, lambda d: d["calibration"]["amax"].update({"input": 3.0}))
    with pytest.raises(CacheError, match=r"amax of tensor 'input' \(3.0\) disagrees with cache 'x.cache'"):
        read_cache(cache)
    _edit_sidecar(side, lambda d: d["calibration"]["amax"].update({"input": AMAX["input"], "extra": 1.0}))
    with pytest.raises(CacheError, match=r"tensor 'extra' has an amax but is not in cache"):
        read_cache(cache)
    _edit_sidecar(side, lambda d: d["calibration"]["amax"].update({"extra": "big"}))
    with pytest.raises(CacheError, match=r"amax of tensor 'extra' is 'big', not a finite number"):
        read_cache(cache)
    _edit_sidecar(side, lambda d: d["calibration"].pop("amax"))
    with pytest.raises(CacheError, match=r"no calibration.amax table"):
        read_cache(cache)


def test_require_sidecar(tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_text("TRT-8600-EntropyCalibration2\na: 3f800000\n")
    assert read_cache(cache).amax == {"a": 127.0}
    with pytest.raises(CacheError, match=r"cache '.*trt.cache' has no sidecar 'trt.cache.json'"):
        read_cache(cache, require_sidecar=True)


def test_parse_errors_name_the_path(tmp_path: Path) -> None:
    cache = tmp_path / "bad.cache"
    cache.write_text("TRT-8600-EntropyCalibration2\nconv 3f\n")
    with pytest.raises(CacheError, match=rf"cache '{cache}' line 2"):
        read_cache(cache)


def test_reads_other_formats(tmp_path: Path) -> None:
    (tmp_path / "calibration.cache").write_text("a 1.5\nb 2.0\n")
    loaded = read_cache(tmp_path / "calibration.cache")
    assert loaded.format == "onnxruntime-text" and loaded.amax == {"a": 1.5, "b": 2.0}
    (tmp_path / "legacy.cache").write_text("1 2 3\na: 3f800000\n")
    assert read_cache(tmp_path / "legacy.cache").format == "tensorrt-legacy"


def test_loaded_cache_dict_round_trip(tmp_path: Path, result: CalibrationResult) -> None:
    cache, _ = write_cache(tmp_path / "m.cache", result)
    loaded = read_cache(cache)
    assert LoadedCache.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
    with pytest.raises(CacheError, match="malformed"):
        LoadedCache.from_dict({"path": "x"})


# --------------------------------------------------------------------------------------------
# Cache vs model
# --------------------------------------------------------------------------------------------


def _loaded(tmp_path: Path, text: str) -> LoadedCache:
    cache = tmp_path / "x.cache"
    cache.write_text(text)
    return read_cache(cache)


def test_internal_names() -> None:
    assert is_trt_internal_name("(Unnamed Layer* 37) [Constant]_output")
    assert is_trt_internal_name("(Unnamed Layer* 5) [Shuffle]_output")
    assert not is_trt_internal_name("conv1_out")
    assert not is_trt_internal_name("191")


def test_check_cache_against_model(tmp_path: Path) -> None:
    loaded = _loaded(
        tmp_path,
        "TRT-8600-EntropyCalibration2\ninput: 3f800000\nconv: 3f800000\n"
        "(Unnamed Layer* 3) [Constant]_output: 3f800000\nold_tensor: 3f800000\nrelu: 0\n",
    )
    match = check_cache_against_model(loaded, ["input", "conv", "relu", "fc"], model_name="m.onnx")
    assert match.matched == ("input", "conv")
    assert match.missing == ("relu", "fc")
    assert match.zero_scale == ("relu",)
    assert match.unknown == ("old_tensor",)
    assert match.internal == ("(Unnamed Layer* 3) [Constant]_output",)
    match.raise_if_foreign()  # 1 of 4 unknown: fine
    assert CacheMatch.from_dict(match.to_dict()) == match


def test_cache_for_another_model(tmp_path: Path) -> None:
    names = [f"t{i}" for i in range(15)]
    text = "TRT-8600-EntropyCalibration2\n" + "".join(f"{n}: 3f800000\n" for n in ["conv1_out", *names[:14]])
    loaded = _loaded(tmp_path, text)
    model = ["t0", "t1", "t2", "x", "y"]
    match = check_cache_against_model(loaded, model, model_name="m.onnx")
    with pytest.raises(CacheError) as info:
        match.raise_if_foreign()
    assert str(info.value) == (
        f"cache '{tmp_path / 'x.cache'}': 12 of 15 tensors are not in model 'm.onnx' (first: 'conv1_out'); "
        "was it made for another model?"
    )
    with pytest.raises(CacheError, match="not in model 'other.onnx'"):
        match.raise_if_foreign(model_name="other.onnx")
    match.raise_if_foreign(max_unknown_fraction=0.9)


def test_internal_names_do_not_count_as_foreign(tmp_path: Path) -> None:
    text = "TRT-8600-EntropyCalibration2\na: 3f800000\n" + "".join(
        f"(Unnamed Layer* {i}) [Constant]_output: 3f800000\n" for i in range(10)
    )
    match = check_cache_against_model(_loaded(tmp_path, text), ["a"])
    assert len(match.internal) == 10 and match.unknown == ()
    match.raise_if_foreign()
