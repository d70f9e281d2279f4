"""Bad calibration caches, sidecars and statistics files through the real CLI: one clear line
naming the file (and the line / tensor), exit 1, and no output written."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.helpers import assert_fails_cleanly, run_cli, snapshot

Capsys = pytest.CaptureFixture[str]


def _lines(cache: Path) -> list[str]:
    return cache.read_text().splitlines(keepends=True)


def _first_entry(cache: Path) -> str:
    return _lines(cache)[1].rsplit(": ", 1)[0]


def _with_scale(hex_bits: str) -> Callable[[Path], bytes]:
    def make(cache: Path) -> bytes:
        lines = _lines(cache)
        return (lines[0] + f"{_first_entry(cache)}: {hex_bits}\n" + "".join(lines[2:])).encode()

    return make


# Each row: how to make the bad cache from a good one, and what the message must name.
# "{first}" stands for the cache's first tensor name.
CACHE_ROWS: list[tuple[str, Callable[[Path], bytes], list[str]]] = [
    ("empty", lambda c: b"", ["is empty"]),
    ("whitespace-only", lambda c: b"\n \n\t\n", ["is empty"]),
    ("truncated-in-name", lambda c: c.read_bytes()[: c.read_bytes().index(b"\n", 40) + 4], ["has no newline", "truncated"]),
    ("truncated-in-scale", lambda c: "".join(_lines(c)[:3]).encode() + _lines(c)[3][:-4].encode(), ["line 4", "short scale", "truncated"]),
    ("garbage-bytes", lambda c: bytes(range(256)) * 4, ["not a calibration cache", "binary data"]),
    ("binary-after-header", lambda c: _lines(c)[0].encode() + b"\x00\x01\xff\xfe" * 10, ["binary data", "corrupted"]),
    ("unknown-algorithm", lambda c: c.read_bytes().replace(b"EntropyCalibration2", b"MagicCalibration3"), ["line 1", "unknown calibration algorithm 'MagicCalibration3'"]),
    ("malformed-header", lambda c: c.read_bytes().replace(b"TRT-101300-", b"TRT-x-"), ["line 1", "malformed header"]),
    ("missing-header", lambda c: "".join(_lines(c)[1:]).encode(), ["line 1", "header missing"]),
    ("duplicate-name", lambda c: c.read_bytes() + _lines(c)[1].encode(), ["appears twice", "first on line 2"]),
    ("negative-scale", _with_scale("bf800000"), ["line 2", "{first}", "negative"]),
    ("nan-scale", _with_scale("7fc00000"), ["line 2", "{first}", "is nan"]),
    ("inf-scale", _with_scale("7f800000"), ["line 2", "{first}", "is inf"]),
    ("minus-inf-scale", _with_scale("ff800000"), ["line 2", "{first}", "-inf"]),
    ("bad-hex", _with_scale("12345678z"), ["line 2", "not a hex float32 scale"]),
    ("no-separator", lambda c: c.read_bytes() + b"just some words\n", ["expected '<tensor name>: <hex scale>'"]),
    ("other-model", lambda c: _lines(c)[0].encode() + b"".join(f"resnet_conv{i}: 3c000000\n".encode() for i in range(20)) + _lines(c)[1].encode(), ["20 of 21 tensors are not in model 'model.onnx'", "resnet_conv0", "another model"]),
]


@pytest.mark.parametrize(("label", "make", "words"), CACHE_ROWS, ids=[r[0] for r in CACHE_ROWS])
def test_bad_cache_build(
    capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path, label: str,
    make: Callable[[Path], bytes], words: list[str],
) -> None:
    bad = tmp_path / "bad.cache"  # no sidecar: the cache text itself is judged
    bad.write_bytes(make(demo_cache))
    words = [w.replace("{first}", _first_entry(demo_cache)) for w in words]
    out = demo_cache.parent
    before = snapshot(out, bad)
    result = run_cli(capsys, "build", demo_model, "--cache", bad, "-o", out / "model.int8.onnx")
    assert_fails_cleanly(result, code=1, names=["bad.cache", *words], before=before, roots=(out, bad))


@pytest.mark.parametrize("label", ["truncated-in-scale", "nan-scale", "other-model"])
def test_bad_cache_eval_and_inspect(
    capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path, label: str
) -> None:
    """The same checks guard `quant eval --cache` and `quant inspect`."""
    make = {r[0]: r[1] for r in CACHE_ROWS}[label]
    bad = tmp_path / "bad.cache"
    bad.write_bytes(make(demo_cache))
    out = demo_cache.parent
    before = snapshot(out)
    result = run_cli(capsys, "eval", demo_model, "--data", "demo:eval", "--max-samples", "8", "--cache", bad,
                     "--report", out / "report.json")
    assert_fails_cleanly(result, code=1, names=["bad.cache"], before=before, roots=(out,))
    if label != "other-model":  # inspect describes any well-formed cache, whatever model it is for
        result = run_cli(capsys, "inspect", bad)
        assert_fails_cleanly(result, code=1, names=["bad.cache"])


def test_cache_missing_or_directory(capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    out = demo_cache.parent
    before = snapshot(out)
    result = run_cli(capsys, "build", demo_model, "--cache", tmp_path / "nope.cache", "-o", out / "m.int8.onnx")
    assert_fails_cleanly(result, code=1, names=["nope.cache", "no such file"], before=before, roots=(out,))
    (tmp_path / "dir.cache").mkdir()
    result = run_cli(capsys, "build", demo_model, "--cache", tmp_path / "dir.cache", "-o", out / "m.int8.onnx")
    assert_fails_cleanly(result, code=2, names=["dir.cache", "directory"], before=before, roots=(out,))


def _edit_sidecar(cache: Path, edit: Callable[[dict], None]) -> None:
    side = Path(str(cache) + ".json")
    doc = json.loads(side.read_text())
    edit(doc)
    side.write_text(json.dumps(doc))


def _scale_amax(doc: dict) -> None:
    amax = doc["calibration"]["amax"]
    first = next(iter(amax))
    amax[first] *= 3


def _extra_amax(doc: dict) -> None:
    doc["calibration"]["amax"]["ghost_tensor"] = 2.0


def _nan_amax(doc: dict) -> None:
    amax = doc["calibration"]["amax"]
    amax[next(iter(amax))] = "NaN"


SIDECAR_ROWS: list[tuple[str, Callable[[Path], object], list[str]]] = [
    ("cache-edited", lambda c: c.write_text(c.read_text().replace(_lines(c)[1].rsplit(": ", 1)[1].strip(), "3d000000", 1)), ["model.cache.json", "does not match cache", "edited"]),
    ("amax-disagrees", lambda c: _edit_sidecar(c, _scale_amax), ["model.cache.json", "disagrees with cache"]),
    ("amax-not-in-cache", lambda c: _edit_sidecar(c, _extra_amax), ["model.cache.json", "'ghost_tensor'", "not in cache"]),
    ("amax-not-a-number", lambda c: _edit_sidecar(c, _nan_amax), ["model.cache.json", "not a finite number"]),
    ("not-json", lambda c: Path(str(c) + ".json").write_text("{ not json"), ["model.cache.json", "not valid JSON", "line 1"]),
    ("not-a-sidecar", lambda c: Path(str(c) + ".json").write_text('{"hello": 1}'), ["model.cache.json", "not a quant calibration sidecar"]),
    ("newer-schema", lambda c: _edit_sidecar(c, lambda d: d.update(schema_version=99)), ["model.cache.json", "schema_version 99", "upgrade quant"]),
    ("binary-sidecar", lambda c: Path(str(c) + ".json").write_bytes(b"\xff\xfe\x00garbage"), ["model.cache.json", "not text"]),
]


@pytest.mark.parametrize(("label", "spoil", "words"), SIDECAR_ROWS, ids=[r[0] for r in SIDECAR_ROWS])
def test_sidecar_that_disagrees(
    capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path, label: str,
    spoil: Callable[[Path], object], words: list[str],
) -> None:
    spoil(demo_cache)
    out = demo_cache.parent
    before = snapshot(out)
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", out / "model.int8.onnx")
    assert_fails_cleanly(result, code=1, names=words, before=before, roots=(out,))


def test_spoiled_pair_is_recalibrated_not_reused(capsys: Capsys, demo_cache: Path, demo_model: Path) -> None:
    """`quant calibrate` on a pair whose sidecar disagrees does not trust it: it recalibrates."""
    _edit_sidecar(demo_cache, _scale_amax)
    result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", demo_cache)
    assert result.code == 0, result.err
    first = result.out.splitlines()[0]
    assert "not reused" in first and "unusable" in first and "does not match" not in first
    assert "disagrees with cache" in first  # it says why
    result = run_cli(capsys, "build", demo_model, "--cache", demo_cache, "-o", demo_cache.parent / "m.int8.onnx")
    assert result.code == 0, result.err


# --------------------------------------------------------------------------------------------
# Statistics files
# --------------------------------------------------------------------------------------------


def _stats(cache: Path) -> Path:
    return Path(str(cache) + ".stats.npz")


def _rewrite_stats(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


STATS_ROWS: list[tuple[str, Callable[[Path], object], list[str]]] = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[:3000]), []),
    ("garbage", lambda p: p.write_bytes(b"\x00garbage" * 100), []),
    ("array-missing", lambda p: _drop_array(p, "counts"), ["'counts'", "missing"]),
    ("meta-not-json", lambda p: _rewrite_stats(p, meta=np.array("{oops")), ["metadata is not valid JSON"]),
    ("negative-counts", lambda p: _negate_counts(p), ["do not sum", "corrupt"]),
    ("nan-absmax", lambda p: _nan_absmax(p), ["'absmax' is nan"]),
]


def _drop_array(path: Path, key: str) -> None:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != key}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _negate_counts(path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        counts = z["counts"].copy()
    counts[0, 0] = -5
    _rewrite_stats(path, counts=counts)


def _nan_absmax(path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        absmax = z["absmax"].copy()
    absmax[0] = np.nan
    _rewrite_stats(path, absmax=absmax)


@pytest.mark.parametrize(("label", "spoil", "words"), STATS_ROWS, ids=[r[0] for r in STATS_ROWS])
def test_bad_statistics_file(
    capsys: Capsys, demo_cache: Path, demo_model: Path, label: str, spoil: Callable[[Path], object], words: list[str]
) -> None:
    """`quant inspect` names the file and the problem; `quant calibrate` does not trust it and
    runs the model again (the cache is stale here: another method)."""
    stats = _stats(demo_cache)
    spoil(stats)
    result = run_cli(capsys, "inspect", stats)
    assert_fails_cleanly(result, code=1, names=[stats.name, *words])
    result = run_cli(capsys, "calibrate", demo_model, "--data", "demo:calib", "--cache", demo_cache, "--method", "minmax")
    assert result.code == 0, result.err
    assert "calibrated 13 tensors on 300 samples with minmax" in result.out
    result = run_cli(capsys, "inspect", stats)  # replaced by a good one
    assert result.code == 0, result.err


def test_copied_pair_keeps_working(capsys: Capsys, demo_cache: Path, demo_model: Path, tmp_path: Path) -> None:
    """Control: a good pair copied elsewhere builds (so the failures above are about the damage)."""
    for suffix in ("", ".json", ".stats.npz"):
        shutil.copy(str(demo_cache) + suffix, str(tmp_path / "copy.cache") + suffix)
    result = run_cli(capsys, "build", demo_model, "--cache", tmp_path / "copy.cache", "-o", tmp_path / "m.int8.onnx")
    assert result.code == 0, result.err
