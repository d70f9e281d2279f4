"""The TensorRT backend on a real GPU with TensorRT (marker ``tensorrt``; skipped elsewhere).

Run on a machine with TensorRT 8.6+ and an NVIDIA GPU::

    pip install -e '.[tensorrt,test]'
    pytest -m "tensorrt or cuda" tests/backends/tensorrt -rs

Covers: FP32 / FP16 / INT8 engine builds, TensorRT's calibrator writing quant's cache and reusing
it with zero get_batch calls, caches of another TensorRT version (header rewritten) and of
another algorithm (refused, or forced), dynamic ranges, Q/DQ models, the runner against ONNX
Runtime, latency, engine sidecar checks, timing cache, plugins, parser errors, inspection.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trt_fixtures import ListDataset

from quant.backends.tensorrt import (
    TrtRunner,
    build_engine,
    inspect_engine,
    installed_version,
    render_engine_inspection,
)
from quant.backends.tensorrt.options import EngineBuildOptions, parse_shape_spec
from quant.backends.tensorrt.sidecar import engine_sidecar_path, read_engine_sidecar
from quant.cache.io import read_cache, write_cache
from quant.errors import BackendUnavailableError, DataError, ModelError, QuantError, UsageError
from tests.models import conv_bn_relu_cnn, mlp, run_model

pytestmark = pytest.mark.tensorrt

CNN_SHAPES = (parse_shape_spec("input:1x3x16x16,8x3x16x16,16x3x16x16"),)
MLP_SHAPES = (parse_shape_spec("input:1x16,4x16,8x16"),)


def _trt_major() -> int | None:
    """The installed TensorRT's major version; None without TensorRT (the marker then skips)."""
    try:
        return installed_version().major
    except BackendUnavailableError:
        return None


def _implicit_int8() -> bool:
    return installed_version().has_implicit_int8


needs_implicit = pytest.mark.skipif(
    "(_trt_major() or 0) >= 11", reason="TensorRT 11 has no INT8 calibrators or dynamic ranges"
)
needs_11 = pytest.mark.skipif("_trt_major() is not None and _trt_major() < 11", reason="TensorRT 11 only")


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _write_quant_cache(model: onnx.ModelProto, path: Path, *, method: str = "minmax", trt_version: int | None = None) -> Path:
    """A quant cache for ``model``: max |x| of every node output on a few samples."""
    names = [o for n in model.graph.node for o in n.output if o]
    outs = run_model(model, {"input": _images(32)}, extra_outputs=names)
    amax = {k: float(np.abs(v).max()) for k, v in outs.items() if k in names and np.abs(v).max() > 0}
    amax["input"] = float(np.abs(_images(32)).max())
    version = trt_version or installed_version().cache_header_number
    write_cache(path, {"method": method, "amax": amax}, trt_version=version)
    return path


# --------------------------------------------------------------------------------------------
# FP32 / FP16 and the runner
# --------------------------------------------------------------------------------------------


def test_fp32_engine_agrees_with_onnxruntime(tmp_path: Path) -> None:
    model = mlp()
    res = build_engine(
        _save(model, tmp_path / "mlp.onnx"),
        output=tmp_path / "mlp.engine",
        options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, workspace_mb=256),
    )
    assert res.mode == "fp32" and res.engine.is_file() and res.sidecar == engine_sidecar_path(res.engine)
    side = read_engine_sidecar(res.engine)
    assert side is not None
    assert side.trt_version == str(installed_version()) and side.gpu == res.gpu and side.precision == "fp32"
    assert side.build_options["workspace_mb"] == 256 and side.model_sha256 and side.engine_sha256

    rng = np.random.default_rng(1)
    with TrtRunner(res.engine, warmup=2) as runner:
        (spec,) = runner.input_specs()
        assert spec.name == "input" and spec.shape == (None, 16) and spec.dtype == np.float32
        assert runner.output_names() == ["output"]
        for batch in (4, 8, 1, 4):
            feed = {"input": rng.standard_normal((batch, 16)).astype(np.float32)}
            out = runner.infer(feed)
            ref = run_model(model, feed)
            assert out["output"].shape == (batch, 4)
            np.testing.assert_allclose(out["output"], ref["output"], rtol=1e-4, atol=1e-5)
            assert runner.last_latency_ms is not None and runner.last_latency_ms > 0
        stats = runner.latency_stats()
        assert stats is not None and stats.count == 4 and stats.min_ms > 0


def test_runner_input_errors(tmp_path: Path) -> None:
    res = build_engine(
        _save(mlp(), tmp_path / "mlp.onnx"),
        output=tmp_path / "mlp.engine",
        options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES),
    )
    with TrtRunner(res.engine) as runner:
        with pytest.raises(DataError, match="missing input"):
            runner.infer({})
        with pytest.raises(DataError, match="outside the engine's profile"):
            runner.infer({"input": np.zeros((32, 16), np.float32)})
        with pytest.raises(DataError, match="the engine expects 16"):
            runner.infer({"input": np.zeros((2, 15), np.float32)})
    with pytest.raises(QuantError, match="used after close"):
        runner.infer({"input": np.zeros((2, 16), np.float32)})


def test_fp16_engine(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    res = build_engine(
        _save(model, tmp_path / "cnn.onnx"),
        output=tmp_path / "cnn.fp16.engine",
        options=EngineBuildOptions(precision="fp16", shapes=CNN_SHAPES),
    )
    assert res.mode == ("fp16" if _implicit_int8() else "fp16-converted")
    feed = {"input": _images(8, seed=3)}
    with TrtRunner(res.engine) as runner:
        out = runner.infer(feed)["logits"]
    assert _cosine(out, run_model(model, feed)["logits"]) > 0.999


def test_engine_from_another_gpu_or_version_is_refused(tmp_path: Path) -> None:
    res = build_engine(
        _save(mlp(), tmp_path / "mlp.onnx"),
        output=tmp_path / "mlp.engine",
        options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES),
    )
    side_path = engine_sidecar_path(res.engine)
    doc = json.loads(side_path.read_text())
    doc["gpu"]["name"] = "Some Other GPU"
    side_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="not portable"):
        TrtRunner(res.engine)
    with TrtRunner(res.engine, check_sidecar=False) as runner:  # the user insists
        assert runner.output_names() == ["output"]
    doc["gpu"] = res.gpu.to_dict()
    doc["trt_version"] = "8.6.0.12" if installed_version().major >= 10 else "10.0.0.6"
    side_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"built for TensorRT .* \(this machine has"):
        TrtRunner(res.engine)


def test_corrupt_engine(tmp_path: Path) -> None:
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"not an engine at all")
    with pytest.raises(ModelError, match="cannot load engine"):
        TrtRunner(bad)
    with pytest.raises(ModelError, match="no such file"):
        TrtRunner(tmp_path / "missing.engine")


def test_timing_cache_is_written_and_reused(tmp_path: Path) -> None:
    path = _save(mlp(), tmp_path / "mlp.onnx")
    timing = tmp_path / "timing.cache"
    opts = EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, timing_cache=timing, optimization_level=1)
    first = build_engine(path, output=tmp_path / "a.engine", options=opts)
    assert first.timing_cache == timing and timing.stat().st_size > 0
    second = build_engine(path, output=tmp_path / "b.engine", options=opts)
    assert second.engine.is_file() and timing.stat().st_size > 0


# --------------------------------------------------------------------------------------------
# INT8 on TensorRT 8.6-10.x: calibrators and caches
# --------------------------------------------------------------------------------------------


@needs_implicit
def test_calibration_writes_quant_cache_and_second_build_reuses_it(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    path = _save(model, tmp_path / "cnn.onnx")
    cache = tmp_path / "cnn.cache"
    images = _images(64)
    opts = EngineBuildOptions(precision="int8", shapes=CNN_SHAPES)

    first_data = ListDataset({"input": images})
    r1 = build_engine(path, output=tmp_path / "a.engine", options=opts, cache=cache, calib_dataset=first_data)
    assert r1.mode == "int8-calibrator" and r1.calibrator == "entropy2"
    assert r1.calibration_batches == 8 and r1.calibration_samples == 64  # opt batch 8
    assert r1.cache_written == cache and not r1.cache_reused
    loaded = read_cache(cache)  # quant's sidecar matches the bytes
    assert loaded.parsed.algorithm == "EntropyCalibration2"
    assert loaded.parsed.trt_version == installed_version().cache_header_number
    assert loaded.calibration is not None and loaded.calibration["method"] == "tensorrt-entropy2"
    assert loaded.calibration["num_samples"] == 64
    cache_bytes = cache.read_bytes()

    second_data = ListDataset({"input": images})
    r2 = build_engine(path, output=tmp_path / "b.engine", options=opts, cache=cache, calib_dataset=second_data)
    assert r2.calibration_batches == 0 and r2.cache_reused
    assert second_data.batches_calls == 0 and second_data.batches_served == 0  # zero get_batch data
    assert cache.read_bytes() == cache_bytes  # untouched
    assert any("without recalibrating" in m for m in r2.messages)

    feed = {"input": _images(8, seed=5)}
    ref = run_model(model, feed)["logits"]
    for engine in (r1.engine, r2.engine):
        with TrtRunner(engine) as runner:
            assert _cosine(runner.infer(feed)["logits"], ref) > 0.95


@needs_implicit
def test_quant_cache_builds_without_data(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    path = _save(model, tmp_path / "cnn.onnx")
    cache = _write_quant_cache(model, tmp_path / "q.cache", method="minmax")
    r = build_engine(path, output=tmp_path / "q.engine", options=EngineBuildOptions(shapes=CNN_SHAPES), cache=cache)
    assert r.calibrator == "minmax" and r.cache_reused and r.calibration_batches == 0 and r.cache == cache
    feed = {"input": _images(8, seed=6)}
    with TrtRunner(r.engine) as runner:
        assert _cosine(runner.infer(feed)["logits"], run_model(model, feed)["logits"]) > 0.95


@needs_implicit
def test_cache_of_another_tensorrt_version_is_used_with_its_header_rewritten(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    other = 8601 if installed_version().major >= 10 else 101300
    cache = _write_quant_cache(model, tmp_path / "old.cache", method="entropy", trt_version=other)
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES), cache=cache)
    assert r.cache_reused and r.calibration_batches == 0
    assert any("header rewritten" in m and "TensorRT version" in m for m in r.messages)


@needs_implicit
def test_cache_of_another_algorithm_is_refused_or_forced(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    path = _save(model, tmp_path / "cnn.onnx")
    cache = _write_quant_cache(model, tmp_path / "mm.cache", method="minmax")
    with pytest.raises(UsageError, match="--force-cache"):
        build_engine(path, output=tmp_path / "x.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2"))
    assert not (tmp_path / "x.engine").exists()
    forced = build_engine(path, output=tmp_path / "f.engine", cache=cache,
                          options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2", force_cache=True))
    assert forced.cache_reused and forced.calibration_batches == 0
    # With data instead, TensorRT recalibrates and the user's cache is left alone.
    before = cache.read_bytes()
    recal = build_engine(path, output=tmp_path / "r.engine", cache=cache, calib_dataset=ListDataset({"input": _images(16)}),
                         options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2"))
    assert recal.calibration_batches == 2 and cache.read_bytes() == before
    assert recal.cache_written == Path(str(tmp_path / "r.engine") + ".cache")


@needs_implicit
@pytest.mark.parametrize("calibrator", ["minmax", "entropy"])
def test_other_calibrators(tmp_path: Path, calibrator: str) -> None:
    r = build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "c.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator=calibrator),  # type: ignore[arg-type]
                     calib_dataset=ListDataset({"input": _images(16)}))
    assert r.calibrator == calibrator and r.calibration_batches == 2
    algo = {"minmax": "MinMaxCalibration", "entropy": "EntropyCalibration"}[calibrator]
    assert read_cache(Path(str(r.engine) + ".cache")).parsed.algorithm == algo


@needs_implicit
def test_dynamic_range_engine(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    cache = _write_quant_cache(model, tmp_path / "q.cache")
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "dr.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES, dynamic_range=True))
    assert r.mode == "int8-dynamic-range" and r.dynamic_ranges_set > 0 and r.calibrator is None
    feed = {"input": _images(8, seed=7)}
    with TrtRunner(r.engine) as runner:
        assert _cosine(runner.infer(feed)["logits"], run_model(model, feed)["logits"]) > 0.95


def test_int8_without_cache_or_data_fails_before_building(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs a calibration cache|has no INT8 calibrators"):
        build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "x.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES))


def test_dynamic_input_without_shapes_fails_with_an_example(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--shapes input:1x3x16x16,8x3x16x16,32x3x16x16"):
        build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "x.engine",
                     options=EngineBuildOptions(precision="fp32"))


# --------------------------------------------------------------------------------------------
# Explicit quantization (Q/DQ) and TensorRT 11
# --------------------------------------------------------------------------------------------


def test_qdq_model_engine_and_inspection(tmp_path: Path) -> None:
    from quant.graph.cleanup import cleanup
    from quant.graph.qdq import insert_qdq

    model = conv_bn_relu_cnn()
    cache = _write_quant_cache(model, tmp_path / "q.cache")
    qdq = insert_qdq(cleanup(model), read_cache(cache).amax, target="tensorrt").model
    r = build_engine(_save(qdq, tmp_path / "cnn.qdq.onnx"), output=tmp_path / "qdq.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES))
    assert r.mode == "int8-qdq"
    feed = {"input": _images(8, seed=8)}
    with TrtRunner(r.engine) as runner:
        assert _cosine(runner.infer(feed)["logits"], run_model(model, feed)["logits"]) > 0.95

    info = inspect_engine(r.engine)
    assert info.detailed and info.layers and info.trt_version == str(installed_version())
    assert info.precision_counts.get("INT8", 0) > 0
    assert "layers by precision" in render_engine_inspection(info)


@needs_11
def test_plain_model_and_cache_on_tensorrt_11(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    cache = _write_quant_cache(model, tmp_path / "q.cache")
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES))
    assert r.mode == "int8-qdq-from-cache"
    assert any("Q/DQ model from the cache first" in m for m in r.messages)
    assert inspect_engine(r.engine).precision_counts.get("INT8", 0) > 0


# --------------------------------------------------------------------------------------------
# Parser errors and plugins
# --------------------------------------------------------------------------------------------


def test_unknown_op_fails_with_a_plugin_hint(tmp_path: Path) -> None:
    node = helper.make_node("FancyOp", ["input"], ["output"], domain="com.example")
    graph = helper.make_graph(
        [node], "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ModelError, match=r"TensorRT cannot parse .*--plugins"):
        build_engine(_save(model, tmp_path / "custom.onnx"), output=tmp_path / "c.engine",
                     options=EngineBuildOptions(precision="fp32"))


def test_plugin_library_errors(tmp_path: Path) -> None:
    path = _save(mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(UsageError, match="--plugins .*no such file"):
        build_engine(path, output=tmp_path / "a.engine",
                     options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, plugins=(tmp_path / "nope.so",)))
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared library")
    with pytest.raises(ModelError, match="cannot load plugin library"):
        build_engine(path, output=tmp_path / "a.engine",
                     options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, plugins=(junk,)))
