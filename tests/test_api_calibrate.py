"""api.calibrate / calibrate_from_stats / merge_stats: reuse, staleness, recompute, merge.

The model really runs in ONNX Runtime here; "the model was not run" is proved by counting the
OrtRunner sessions that calibration opens (the counting subclass still runs the real runner).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant import api
from quant.cache.io import read_cache
from quant.calibrators.methods import CalibConfig, compute_amax
from quant.calibrators.stats_io import load_stats, stats_path
from quant.config import METHODS, CalibrationOptions, DataOptions
from quant.errors import CacheError, OutputError
from tests.models import make_model, mlp

# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


def tiny_cnn(*, seed: int = 0, extra_relu: bool = False) -> onnx.ModelProto:
    """input (N, 1, 8, 8) -> Conv -> Relu -> Conv -> output; ``extra_relu`` changes only the graph."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((2, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["conv1_out"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1_out"], ["relu1_out"]),
        helper.make_node("Conv", ["relu1_out", "w2"], ["conv2_out" if extra_relu else "output"], pads=[1, 1, 1, 1]),
    ]
    if extra_relu:
        nodes.append(helper.make_node("Relu", ["conv2_out"], ["output"]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2, 8, 8])]
    return make_model(nodes, inputs, outputs, inits, name="tiny_cnn")


def write_png(path: Path, seed: int) -> None:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(model path, image folder with 12 PNGs, cache path)."""
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(), model)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        write_png(images / f"img{i:02d}.png", i)
    return model, images, tmp_path / "tiny.cache"


class SessionCounter:
    """Counts OrtRunner sessions opened by calibration (each still runs the real OrtRunner)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import quant.backends.onnxruntime as ort_backend

        real = ort_backend.OrtRunner
        self.count = 0
        counter = self

        class Counting(real):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                counter.count += 1
                super().__init__(*args, **kwargs)

        monkeypatch.setattr(ort_backend, "OrtRunner", Counting)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> SessionCounter:
    return SessionCounter(monkeypatch)


def calib(model: Path, data: Path | str, cache: Path, **kw: object) -> api.CalibrateOutcome:
    data_kw = {k: kw.pop(k) for k in ("preprocess", "max_samples", "seed") if k in kw}
    force = bool(kw.pop("force", False))
    return api.calibrate(
        model, DataOptions(str(data), **data_kw), cache=cache, options=CalibrationOptions(**kw), force=force  # type: ignore[arg-type]
    )


# --------------------------------------------------------------------------------------------
# Reuse and staleness, one test per fingerprint part
# --------------------------------------------------------------------------------------------


def test_first_run_writes_cache_sidecar_and_stats(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    out = calib(model, images, cache)
    assert out.action == "calibrated" and out.ran_model and not out.reused
    assert sessions.count == 1
    assert out.stats_path == stats_path(cache) and out.stats_path.is_file()
    assert out.sidecar_path.is_file()
    stats, meta = load_stats(out.stats_path)
    assert meta["num_samples"] == 12 and meta["data_manifest"]["num_files"] == 12
    assert set(stats) == set(out.result.amax) | set(out.result.no_range)
    assert "calibrated 4 tensors on 12 samples" in out.message


def test_unchanged_cache_is_reused_and_reports_stats(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    first = calib(model, images, cache)
    again = calib(model, images, cache)
    assert sessions.count == 1
    assert again.reused and again.action == "reused" and not again.ran_model
    assert "up to date" in again.message and "reused" in again.message
    assert again.stats_path == stats_path(cache)
    assert again.result.amax == first.result.amax
    assert again.stale_reasons == ()


def _stale(out: api.CalibrateOutcome) -> str:
    assert out.action == "calibrated", out.message
    assert "not reused" in out.message
    return out.message


def test_graph_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    onnx.save(tiny_cnn(extra_relu=True), model)
    msg = _stale(calib(model, images, cache))
    assert "model graph changed" in msg and "weights" not in msg


def test_weight_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    onnx.save(tiny_cnn(seed=1), model)
    out = calib(model, images, cache)
    msg = _stale(out)
    assert "model weights changed" in msg and "graph" not in msg
    assert out.stale_reasons == ("model weights changed",)


def test_data_file_added_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    write_png(images / "img99.png", 99)
    out = calib(model, images, cache)
    assert "data files added or removed (12 -> 13 files)" in _stale(out)
    assert out.result.num_samples == 13


def test_data_file_removed_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    (images / "img03.png").unlink()
    assert "data files added or removed (12 -> 11 files)" in _stale(calib(model, images, cache))


def test_data_file_renamed_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    (images / "img03.png").rename(images / "renamed.png")
    assert "data file list changed" in _stale(calib(model, images, cache))


def test_data_file_mtime_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    target = images / "img05.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert "data file contents changed" in _stale(calib(model, images, cache))


def test_data_file_content_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    write_png(images / "img05.png", 1234)
    assert "data file contents changed" in _stale(calib(model, images, cache))


def test_preprocessing_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    assert "preprocessing changed (scale)" in _stale(calib(model, images, cache, preprocess="scale=0.5"))


def test_max_samples_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    out = calib(model, images, cache, max_samples=8)
    msg = _stale(out)
    assert "--max-samples changed (all -> 8)" in msg
    assert "files" not in msg  # the selection changed the file list; the message names the cause
    assert out.result.num_samples == 8


def test_seed_change_is_named(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache, max_samples=8, seed=0)
    msg = _stale(calib(model, images, cache, max_samples=8, seed=1))
    assert "--seed changed (0 -> 1)" in msg and "max-samples" not in msg


def test_old_sidecar_without_manifest_still_detects_data_change(setup: tuple[Path, Path, Path]) -> None:
    import json

    model, images, cache = setup
    calib(model, images, cache)
    side = Path(str(cache) + ".json")
    doc = json.loads(side.read_text())
    del doc["calibration"]["data_manifest"]
    side.write_text(json.dumps(doc))
    stats_path(cache).unlink()
    write_png(images / "img99.png", 99)
    assert "calibration data changed" in _stale(calib(model, images, cache))


def test_cache_without_sidecar_is_not_reused(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    cache.write_text("TRT-8600-EntropyCalibration2\ninput: 3c010a14\n")
    out = calib(model, images, cache)
    assert out.action == "calibrated"
    assert "no quant sidecar" in out.message
    assert read_cache(cache).sidecar is not None


def test_force_reruns_the_model(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    out = calib(model, images, cache, force=True)
    assert out.action == "calibrated" and sessions.count == 2
    assert "--force" in out.message


def test_trt_version_rewrites_header_of_reused_cache(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    first = calib(model, images, cache, trt_version="10.3")
    assert cache.read_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    out = calib(model, images, cache, trt_version="8.6")
    assert out.reused and sessions.count == 1
    assert "rewrote its header for TensorRT 8.6.0" in out.message
    loaded = read_cache(cache)
    assert loaded.parsed.header == "TRT-8600-EntropyCalibration2"
    assert loaded.amax == first.result.amax
    assert loaded.calibration is not None and "data_manifest" in loaded.calibration
    # no --trt-version: the header is left as it is
    assert calib(model, images, cache).reused
    assert cache.read_text().startswith("TRT-8600-")


def test_cache_over_model_is_refused(setup: tuple[Path, Path, Path]) -> None:
    model, images, _cache = setup
    with pytest.raises(OutputError, match="same file as input"):
        calib(model, images, model)


# --------------------------------------------------------------------------------------------
# Recompute from statistics
# --------------------------------------------------------------------------------------------


def test_method_change_recomputes_from_stats_without_running(
    setup: tuple[Path, Path, Path], sessions: SessionCounter
) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    out = calib(model, images, cache, method="percentile", percentile=99.9)
    assert sessions.count == 1
    assert out.action == "recomputed" and not out.ran_model and not out.reused
    assert "method changed (entropy -> percentile)" in out.message
    assert "the model was not run" in out.message
    assert out.stats_path == stats_path(cache)
    # a parameter change alone also recomputes, and is named
    out2 = calib(model, images, cache, method="percentile", percentile=99.0)
    assert out2.action == "recomputed" and "method parameters changed (percentile)" in out2.message
    assert sessions.count == 1


def test_missing_cache_with_matching_stats_recomputes(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    first = calib(model, images, cache)
    cache.unlink()
    Path(str(cache) + ".json").unlink()
    out = calib(model, images, cache)
    assert out.action == "recomputed" and sessions.count == 1
    assert out.result.amax == first.result.amax


def test_stale_stats_are_not_used(setup: tuple[Path, Path, Path], sessions: SessionCounter) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    cache.unlink()
    write_png(images / "img99.png", 99)
    out = calib(model, images, cache)
    assert out.action == "calibrated" and sessions.count == 2
    assert "statistics" in out.message and "data files added or removed (12 -> 13 files)" in out.message


def test_corrupt_stats_fall_back_to_running(setup: tuple[Path, Path, Path]) -> None:
    model, images, cache = setup
    calib(model, images, cache)
    stats_path(cache).write_bytes(b"not a zip")
    cache.unlink()
    out = calib(model, images, cache)
    assert out.action == "calibrated" and "not used" in out.message
    load_stats(stats_path(cache))  # rewritten and readable again


@pytest.mark.parametrize("method", METHODS)
def test_recompute_on_demo_equals_fresh_run(tmp_path: Path, method: str, sessions: SessionCounter) -> None:
    """Demo: amax recomputed from saved statistics == a fresh run with that method, and the model
    is not run for the recompute."""
    base = tmp_path / "base.cache"
    fresh = tmp_path / "fresh.cache"
    other = "minmax" if method != "minmax" else "entropy"
    calib(Path("demo"), "demo:calib", base, method=other)
    assert sessions.count == 1
    recomputed = calib(Path("demo"), "demo:calib", base, method=method)
    assert sessions.count == 1, "recomputing from statistics must not run the model"
    assert recomputed.action == "recomputed"
    ran = calib(Path("demo"), "demo:calib", fresh, method=method)
    assert sessions.count == 2 and ran.action == "calibrated"
    assert recomputed.result.amax == ran.result.amax
    assert recomputed.result.no_range == ran.result.no_range
    assert read_cache(base).amax == read_cache(fresh).amax
    assert base.read_text() == fresh.read_text()


# --------------------------------------------------------------------------------------------
# from-stats and merge
# --------------------------------------------------------------------------------------------


def _npz(path: Path, x: np.ndarray) -> Path:
    np.savez(path, input=x.astype(np.float32))
    return path


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(mlp model, shard1.npz, shard2.npz, union.npz); shard2 has a wider range (histograms grow)."""
    model = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((24, 16))
    b = rng.standard_normal((20, 16)) * 3.0 + 0.5
    return (
        model,
        _npz(tmp_path / "shard1.npz", a),
        _npz(tmp_path / "shard2.npz", b),
        _npz(tmp_path / "union.npz", np.concatenate([a, b])),
    )


def test_merge_of_shards_equals_one_run_over_both(tmp_path: Path, shards: tuple[Path, Path, Path, Path]) -> None:
    model, s1, s2, union = shards
    o1 = calib(model, s1, tmp_path / "s1.cache")
    o2 = calib(model, s2, tmp_path / "s2.cache")
    ou = calib(model, union, tmp_path / "u.cache")
    assert o1.stats_path and o2.stats_path and ou.stats_path
    merged = api.merge_stats([o1.stats_path, o2.stats_path], output=tmp_path / "all.stats.npz")
    assert merged.num_samples == 44 and merged.num_shards == 2
    m_stats, m_meta = load_stats(merged.output)
    u_stats, _ = load_stats(ou.stats_path)
    assert list(m_stats) == list(u_stats)
    for name in u_stats:
        assert m_stats[name] == u_stats[name], name
    for method in METHODS:
        config = CalibConfig(method=method)
        assert compute_amax(m_stats, config) == compute_amax(u_stats, config), method
        from_merged = api.calibrate_from_stats(
            model, merged.output, cache=tmp_path / f"m-{method}.cache",
            options=CalibrationOptions(method=method),  # type: ignore[arg-type]
        )
        one_run = calib(model, union, tmp_path / f"u-{method}.cache", method=method, force=True)
        assert from_merged.result.amax == one_run.result.amax, method
        assert from_merged.result.num_samples == one_run.result.num_samples == 44
        assert from_merged.action == "from-stats"
    # order-independent data fingerprint, and the same histograms either way
    swapped = api.merge_stats([o2.stats_path, o1.stats_path], output=tmp_path / "swapped.stats.npz")
    assert swapped.data_fingerprint == merged.data_fingerprint
    s_stats, s_meta = load_stats(swapped.output)
    assert all(s_stats[n] == m_stats[n] for n in m_stats)
    assert s_meta["data_shards"] == m_meta["data_shards"]


def test_from_stats_writes_cache_and_stats_beside_it(tmp_path: Path, shards: tuple[Path, Path, Path, Path]) -> None:
    model, s1, _s2, _u = shards
    o1 = calib(model, s1, tmp_path / "s1.cache")
    assert o1.stats_path is not None
    out = api.calibrate_from_stats(
        model, o1.stats_path, cache=tmp_path / "new.cache", options=CalibrationOptions(method="mse", trt_version="8.6")
    )
    assert (tmp_path / "new.cache").read_text().startswith("TRT-8600-EntropyCalibration2\n")
    assert out.stats_path == stats_path(tmp_path / "new.cache")
    assert out.stats_path.read_bytes() == o1.stats_path.read_bytes()
    loaded = read_cache(tmp_path / "new.cache", require_sidecar=True)
    assert loaded.method == "mse" and loaded.data_fingerprint == o1.result.data_fingerprint
    assert "no data was read" in out.message


def test_from_stats_of_another_model_fails(tmp_path: Path, shards: tuple[Path, Path, Path, Path]) -> None:
    model, s1, _s2, _u = shards
    o1 = calib(model, s1, tmp_path / "s1.cache")
    other = tmp_path / "other.onnx"
    onnx.save(mlp(seed=9), other)
    with pytest.raises(CacheError, match=r"not collected on model 'other.onnx' \(model weights changed\)"):
        api.calibrate_from_stats(other, o1.stats_path or "", cache=tmp_path / "x.cache")
    assert not (tmp_path / "x.cache").exists()


def test_from_stats_with_narrower_scope_fails(tmp_path: Path, shards: tuple[Path, Path, Path, Path]) -> None:
    model, s1, _s2, _u = shards
    o1 = calib(model, s1, tmp_path / "q.cache", scope="qdq")
    with pytest.raises(CacheError, match="have no histogram for .* pass --scope qdq"):
        api.calibrate_from_stats(model, o1.stats_path or "", cache=tmp_path / "x.cache")
    # a wider file serves a narrower scope
    o_all = calib(model, s1, tmp_path / "a.cache")
    sub = api.calibrate_from_stats(
        model, o_all.stats_path or "", cache=tmp_path / "sub.cache", options=CalibrationOptions(scope="qdq")
    )
    assert sub.result.amax == o1.result.amax


def test_merge_of_different_models_fails(tmp_path: Path, shards: tuple[Path, Path, Path, Path]) -> None:
    model, s1, s2, _u = shards
    o1 = calib(model, s1, tmp_path / "s1.cache")
    other = tmp_path / "other.onnx"
    shutil.copy(model, other)
    onnx.save(mlp(seed=9), other)
    o2 = calib(other, s2, tmp_path / "s2.cache")
    with pytest.raises(CacheError, match="another model .*model weights differ"):
        api.merge_stats([o1.stats_path or "", o2.stats_path or ""], output=tmp_path / "all.stats.npz")
    assert not (tmp_path / "all.stats.npz").exists()
