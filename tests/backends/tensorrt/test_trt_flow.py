"""build_engine / TrtRunner / inspect_engine end to end on the CPU stand-ins for TensorRT and CUDA.

The stand-ins (fake_tensorrt.py, trt_fixtures.FakeCudart) implement the API slice quant calls, so
these tests check quant's orchestration: flags per version, profiles, calibrator callbacks and
cache files, engine files and sidecars, I/O binding, error paths. What TensorRT itself does with
all that is checked by test_trt_gpu.py on a GPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trt_fixtures import FakeCudart, ListDataset

from quant.backends.tensorrt import TrtRunner, build_engine, inspect_engine, render_engine_inspection
from quant.backends.tensorrt.options import EngineBuildOptions, parse_shape_spec
from quant.backends.tensorrt.sidecar import engine_sidecar_path, read_engine_sidecar
from quant.cache.io import read_cache, write_cache
from quant.errors import CacheError, DataError, ModelError, QuantError, UsageError
from tests.models import conv_bn_relu_cnn, mlp, run_model

FakeTrt = Callable[..., ModuleType]
CNN_SHAPES = (parse_shape_spec("input:1x3x16x16,8x3x16x16,16x3x16x16"),)
MLP_SHAPES = (parse_shape_spec("input:1x16,4x16,8x16"),)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _quant_cache(model: onnx.ModelProto, path: Path, *, method: str = "minmax", trt_version: int = 100300) -> Path:
    names = [o for n in model.graph.node for o in n.output if o]
    outs = run_model(model, {"input": _images(8)}, extra_outputs=names)
    amax = {k: float(np.abs(v).max()) for k, v in outs.items() if k in names and np.abs(v).max() > 0}
    write_cache(path, {"method": method, "amax": amax}, trt_version=trt_version)
    return path


def _builder(mod: ModuleType) -> Any:
    return mod.Builder.last


# --------------------------------------------------------------------------------------------
# FP32 / FP16 and the runner
# --------------------------------------------------------------------------------------------


def test_fp32_build_and_run(fake_trt: FakeTrt, fake_cudart: FakeCudart, tmp_path: Path) -> None:
    mod = fake_trt("10.3.0.26")
    model = mlp()
    res = build_engine(
        _save(model, tmp_path / "mlp.onnx"),
        output=tmp_path / "mlp.engine",
        options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, workspace_mb=256, optimization_level=1),
    )
    b = _builder(mod)
    config = b.config
    assert config.flags == set()  # TF32 cleared, no precision flag
    assert config.pool_limits == {mod.MemoryPoolType.WORKSPACE: 256 << 20}
    assert config.builder_optimization_level == 1
    assert config.profiling_verbosity == mod.ProfilingVerbosity.DETAILED
    assert config.profiles[0].shapes == {"input": ((1, 16), (4, 16), (8, 16))}
    assert b.network_flags == 0  #TensorRT 10: no EXPLICIT_BATCH

    assert res.mode == "fp32" and res.engine.read_bytes().startswith(b"FAKEPLAN")
    side = read_engine_sidecar(res.engine)
    assert side is not None and side.trt_version == "10.3.0.26" and side.gpu == res.gpu
    assert side.gpu.name == "Fake GPU 80GB" and side.precision == "fp32" and side.cache is None
    assert side.build_options["workspace_mb"] == 256

    rng = np.random.default_rng(0)
    with TrtRunner(res.engine, warmup=2) as runner:
        assert [(s.name, s.shape) for s in runner.input_specs()] == [("input", (None, 16))]
        assert runner.output_names() == ["output"]
        for batch in (4, 8, 4, 1):
            feed = {"input": rng.standard_normal((batch, 16)).astype(np.float32)}
            out = runner.infer(feed)
            np.testing.assert_allclose(out["output"], run_model(model, feed)["output"], rtol=1e-6)
        # Warm-up: 2 untimed runs per new shape (4, 8, 1), then 1 timed run per call.
        assert runner.context.engine.context.executions == 3 * 2 + 4
        assert runner.last_latency_ms == 1.25
        stats = runner.latency_stats()
        assert stats is not None and stats.count == 4
        buffers = len(fake_cudart.buffers)
    assert len(fake_cudart.buffers) == buffers - 2  # input + output buffers freed
    with pytest.raises(QuantError, match="used after close"):
        runner.infer({"input": np.zeros((1, 16), np.float32)})


def test_runner_input_errors(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    res = build_engine(_save(mlp(), tmp_path / "m.onnx"), output=tmp_path / "m.engine",
                       options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    with TrtRunner(res.engine) as runner:
        with pytest.raises(DataError, match=r"missing input\(s\) \['input'\]"):
            runner.infer({})
        with pytest.raises(DataError, match=r"unknown input\(s\) \['other'\]"):
            runner.infer({"input": np.zeros((1, 16), np.float32), "other": np.zeros(1)})
        with pytest.raises(DataError, match="outside the engine's profile"):
            runner.infer({"input": np.zeros((9, 16), np.float32)})
        with pytest.raises(DataError, match="dimension 1 is 15, the engine expects 16"):
            runner.infer({"input": np.zeros((2, 15), np.float32)})
        out = runner.infer({"input": np.zeros((2, 16), np.float64)})  # converted to the engine's dtype
        assert out["output"].dtype == np.float32


def test_fp16_flag_on_10_and_conversion_on_11(fake_trt: FakeTrt, tmp_path: Path) -> None:
    mod = fake_trt("10.3.0")
    model = conv_bn_relu_cnn()
    path = _save(model, tmp_path / "cnn.onnx")
    r10 = build_engine(path, output=tmp_path / "a.engine", options=EngineBuildOptions(precision="fp16", shapes=CNN_SHAPES))
    assert r10.mode == "fp16" and mod.BuilderFlag.FP16 in _builder(mod).config.flags
    mod11 = fake_trt("11.0.0")
    r11 = build_engine(path, output=tmp_path / "b.engine", options=EngineBuildOptions(precision="fp16", shapes=CNN_SHAPES))
    assert r11.mode == "fp16-converted"
    b = _builder(mod11)
    assert b.network_flags == 1 << 1  #STRONGLY_TYPED
    assert not hasattr(mod11.BuilderFlag, "FP16")
    with TrtRunner(r11.engine) as runner:
        engine_model = runner.context.engine.model
        assert any(i.type.tensor_type.elem_type == TensorProto.FLOAT16 for i in engine_model.graph.value_info) or any(
            t.data_type == TensorProto.FLOAT16 for t in engine_model.graph.initializer
        )
        feed = {"input": _images(4)}
        out = runner.infer(feed)["logits"]
    np.testing.assert_allclose(out, run_model(model, feed)["logits"], rtol=0.05, atol=0.05)


def test_explicit_batch_flag_on_8_6(fake_trt: FakeTrt, tmp_path: Path) -> None:
    mod = fake_trt("8.6.1.6")
    build_engine(_save(mlp(), tmp_path / "m.onnx"), output=tmp_path / "m.engine",
                 options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    assert _builder(mod).network_flags == 1 << 0


# --------------------------------------------------------------------------------------------
# INT8 with TensorRT's calibrator
# --------------------------------------------------------------------------------------------


def test_calibration_writes_quant_cache_then_second_build_reuses_it(fake_trt: FakeTrt, fake_cudart: FakeCudart, tmp_path: Path) -> None:
    mod = fake_trt("10.3.0.26")
    path = _save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx")
    cache = tmp_path / "cnn.cache"
    images = _images(20)
    opts = EngineBuildOptions(shapes=CNN_SHAPES)

    r1 = build_engine(path, output=tmp_path / "a.engine", options=opts, cache=cache, calib_dataset=ListDataset({"input": images}))
    b1 = _builder(mod)
    assert mod.BuilderFlag.INT8 in b1.config.flags and mod.BuilderFlag.FP16 in b1.config.flags
    # Calibration runs at the opt shape: 2 batches of 8; the last 4 samples are dropped.
    assert b1.config.calibration_profile.shapes == {"input": ((8, 3, 16, 16),) * 3}
    assert b1.calibration_batches == 2
    assert (r1.calibration_batches, r1.calibration_samples) == (2, 16)
    assert r1.calibrator == "entropy2" and r1.cache_written == cache and r1.cache == cache and not r1.cache_reused
    assert not fake_cudart.buffers  # calibration buffers freed after the build

    loaded = read_cache(cache)
    assert loaded.parsed.header == "TRT-100300-EntropyCalibration2"
    assert loaded.calibration is not None and loaded.calibration["method"] == "tensorrt-entropy2"
    assert loaded.calibration["num_samples"] == 16 and loaded.calibration["model_fingerprint"]["graph"]
    assert "input" in loaded.amax
    side = read_engine_sidecar(r1.engine)
    assert side is not None and side.cache == str(cache) and side.cache_sha256 is not None
    before = cache.read_bytes()

    again = ListDataset({"input": images})
    r2 = build_engine(path, output=tmp_path / "b.engine", options=opts, cache=cache, calib_dataset=again)
    assert _builder(mod).calibration_batches == 0
    assert r2.calibration_batches == 0 and r2.cache_reused and r2.cache_written is None
    assert again.batches_calls == 0  # zero get_batch data served
    assert cache.read_bytes() == before  # TensorRT's write-back did not touch it
    assert any("without recalibrating" in m for m in r2.messages)


def test_quant_cache_of_an_older_tensorrt_builds_without_data(fake_trt: FakeTrt, tmp_path: Path) -> None:
    mod = fake_trt("10.8.0.43")
    model = conv_bn_relu_cnn()
    cache = _quant_cache(model, tmp_path / "q.cache", method="minmax", trt_version=8601)
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES), cache=cache)
    assert r.calibrator == "minmax" and r.cache_reused and _builder(mod).calibration_batches == 0
    assert any("TensorRT version 8.6.1 -> 10.8.0" in m for m in r.messages)
    assert read_cache(cache).parsed.header == "TRT-8601-MinMaxCalibration"  # the file itself is unchanged


def test_cache_of_another_algorithm(fake_trt: FakeTrt, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mod = fake_trt("10.3.0")
    model = conv_bn_relu_cnn()
    path = _save(model, tmp_path / "cnn.onnx")
    cache = _quant_cache(model, tmp_path / "mm.cache", method="minmax")
    with pytest.raises(UsageError, match=r"not the EntropyCalibration2 calibrator .*--force-cache.*--data"):
        build_engine(path, output=tmp_path / "x.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2"))
    assert not (tmp_path / "x.engine").exists()

    forced = build_engine(path, output=tmp_path / "f.engine", cache=cache,
                          options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2", force_cache=True))
    assert forced.cache_reused and _builder(mod).calibration_batches == 0

    before = cache.read_bytes()
    with caplog.at_level(logging.WARNING, logger="quant"):
        recal = build_engine(path, output=tmp_path / "r.engine", cache=cache, calib_dataset=ListDataset({"input": _images(16)}),
                             options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator="entropy2"))
    assert "is not used" in caplog.text
    assert recal.calibration_batches == 2 and cache.read_bytes() == before
    assert recal.cache_written == tmp_path / "r.engine.cache"
    assert read_cache(tmp_path / "r.engine.cache").parsed.algorithm == "EntropyCalibration2"


@pytest.mark.parametrize(("kind", "algorithm"), [("minmax", "MinMaxCalibration"), ("entropy", "EntropyCalibration")])
def test_other_calibrators_without_a_cache_path(fake_trt: FakeTrt, tmp_path: Path, kind: str, algorithm: str) -> None:
    fake_trt()
    r = build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "c.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES, calibrator=kind),  # type: ignore[arg-type]
                     calib_dataset=ListDataset({"input": _images(8)}))
    assert r.calibrator == kind and r.calibration_batches == 1
    assert read_cache(tmp_path / "c.engine.cache").parsed.algorithm == algorithm


def test_calibration_data_errors_surface_after_the_build(fake_trt: FakeTrt, fake_cudart: FakeCudart, tmp_path: Path) -> None:
    fake_trt()
    bad = ListDataset({"input": np.zeros((16, 3, 8, 8), np.float32)})
    with pytest.raises(DataError, match=r"has shape \(8, 3, 8, 8\), the engine calibrates with \(8, 3, 16, 16\)"):
        build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES), calib_dataset=bad)
    assert not (tmp_path / "e.engine").exists() and not fake_cudart.buffers


def test_stale_cache_warns_or_fails_with_strict(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    model = conv_bn_relu_cnn()
    cache = tmp_path / "q.cache"
    write_cache(cache, {"method": "minmax", "amax": {"input": 4.0}, "model_fingerprint": "0" * 64}, trt_version=100300)
    path = _save(model, tmp_path / "cnn.onnx")
    r = build_engine(path, output=tmp_path / "e.engine", options=EngineBuildOptions(shapes=CNN_SHAPES), cache=cache)
    assert any("is stale: model changed" in m for m in r.messages)
    with pytest.raises(CacheError, match="is stale"):
        build_engine(path, output=tmp_path / "e.engine", options=EngineBuildOptions(shapes=CNN_SHAPES, strict=True), cache=cache)


def test_missing_cache_without_data(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    with pytest.raises(CacheError, match="no such file; run 'quant calibrate' first"):
        build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES), cache=tmp_path / "missing.cache")


# --------------------------------------------------------------------------------------------
# Dynamic ranges, Q/DQ, TensorRT 11
# --------------------------------------------------------------------------------------------


def test_dynamic_range(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    model = conv_bn_relu_cnn()
    cache = _quant_cache(model, tmp_path / "q.cache")
    amax = read_cache(cache).amax
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES, dynamic_range=True))
    assert r.mode == "int8-dynamic-range" and r.calibrator is None
    assert r.dynamic_ranges_set == len(amax)
    assert r.ranges_missing == ("input",)  # the network input has no range in this cache
    with TrtRunner(r.engine) as runner:
        ranges = runner.context.engine.doc["dynamic_ranges"]
    name, value = next(iter(amax.items()))
    assert ranges[name] == [-value, value]
    with pytest.raises(CacheError, match="has no range for 1 network tensors"):
        build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES, dynamic_range=True, strict=True))


def test_qdq_model(fake_trt: FakeTrt, tmp_path: Path) -> None:
    from quant.graph.cleanup import cleanup
    from quant.graph.qdq import insert_qdq

    mod = fake_trt("10.3.0")
    model = conv_bn_relu_cnn()
    cache = _quant_cache(model, tmp_path / "q.cache")
    qdq = insert_qdq(cleanup(model), read_cache(cache).amax, target="tensorrt").model
    r = build_engine(_save(qdq, tmp_path / "qdq.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES))
    assert r.mode == "int8-qdq" and r.cache is None
    assert any("cache is ignored" in m for m in r.messages)
    assert mod.BuilderFlag.INT8 in _builder(mod).config.flags
    assert _builder(mod).config.int8_calibrator is None


def test_plain_model_and_cache_on_tensorrt_11(fake_trt: FakeTrt, tmp_path: Path) -> None:
    mod = fake_trt("11.0.0.1")
    model = conv_bn_relu_cnn()
    cache = _quant_cache(model, tmp_path / "q.cache")
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES))
    assert r.mode == "int8-qdq-from-cache" and r.cache == cache
    assert any("inserted Q/DQ for" in m for m in r.messages)
    b = _builder(mod)
    assert b.config.flags == {mod.BuilderFlag.TF32} and b.network_flags == 1 << 1
    with TrtRunner(r.engine) as runner:
        ops = {n.op_type for n in runner.context.engine.model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        feed = {"input": _images(4, seed=2)}
        out = runner.infer(feed)["logits"]
    ref = run_model(model, feed)["logits"]
    assert float(np.corrcoef(out.ravel(), ref.ravel())[0, 1]) > 0.95
    with pytest.raises(UsageError, match="has no INT8 calibrators"):
        build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "x.engine",
                     options=EngineBuildOptions(shapes=CNN_SHAPES), calib_dataset=ListDataset({"input": _images(8)}))


# --------------------------------------------------------------------------------------------
# Engines, sidecars, inspection
# --------------------------------------------------------------------------------------------


def test_engine_for_another_gpu_or_version(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt("10.3.0.26")
    res = build_engine(_save(mlp(), tmp_path / "m.onnx"), output=tmp_path / "m.engine",
                       options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    side = engine_sidecar_path(res.engine)
    doc = json.loads(side.read_text())
    doc["gpu"]["name"], doc["gpu"]["compute_capability"] = "NVIDIA A100-SXM4-80GB", "8.0"
    side.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"built for GPU NVIDIA A100-SXM4-80GB \(sm_80\) \(this machine has Fake GPU 80GB \(sm_90\)\)"):
        TrtRunner(res.engine)
    with TrtRunner(res.engine, check_sidecar=False) as runner:
        assert runner.output_names() == ["output"]
    fake_trt("10.8.0.43")  # "upgrade" TensorRT
    doc = json.loads(side.read_text())
    doc["gpu"]["name"], doc["gpu"]["compute_capability"] = "Fake GPU 80GB", "9.0"
    side.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"TensorRT 10\.3\.0\.26 \(this machine has 10\.8\.0\.43\)"):
        TrtRunner(res.engine)


def test_engine_without_sidecar_warns(fake_trt: FakeTrt, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fake_trt()
    res = build_engine(_save(mlp(), tmp_path / "m.onnx"), output=tmp_path / "m.engine",
                       options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    engine_sidecar_path(res.engine).unlink()
    with caplog.at_level(logging.WARNING, logger="quant"), TrtRunner(res.engine) as runner:
        assert runner.sidecar is None
    assert "has no sidecar" in caplog.text


def test_bad_engine_files(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    with pytest.raises(ModelError, match="no such file"):
        TrtRunner(tmp_path / "missing.engine")
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"garbage")
    with pytest.raises(ModelError, match=r"cannot load engine .*Magic tag does not match"):
        TrtRunner(bad)
    with pytest.raises(ModelError, match="is a directory"):
        TrtRunner(tmp_path)


def test_inspect(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt("10.3.0.26")
    model = conv_bn_relu_cnn()
    cache = _quant_cache(model, tmp_path / "q.cache")
    r = build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine", cache=cache,
                     options=EngineBuildOptions(shapes=CNN_SHAPES))
    info = inspect_engine(r.engine)
    assert info.detailed and len(info.layers) == len(model.graph.node)
    assert info.precision_counts == {"INT8": len(model.graph.node)}
    assert info.trt_version == "10.3.0.26" and info.gpu == "Fake GPU 80GB (sm_90)" and info.mode == "int8-calibrator"
    assert info.io_tensors == ("input", "logits")
    assert "layers by precision: INT8" in render_engine_inspection(info)


# --------------------------------------------------------------------------------------------
# Build-time errors
# --------------------------------------------------------------------------------------------


def test_unknown_op_names_the_node_and_suggests_plugins(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    node = helper.make_node("FancyOp", ["input"], ["output"], domain="com.example", name="fancy0")
    graph = helper.make_graph(
        [node], "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(ModelError, match=r"TensorRT cannot parse '.*custom.onnx': node 'fancy0': No importer registered .*--plugins lib.so"):
        build_engine(_save(model, tmp_path / "custom.onnx"), output=tmp_path / "c.engine",
                     options=EngineBuildOptions(precision="fp32"))


def test_plugins(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    path = _save(mlp(), tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--plugins '.*nope.so': no such file"):
        build_engine(path, output=tmp_path / "a.engine",
                     options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, plugins=(tmp_path / "nope.so",)))
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a shared library")
    with pytest.raises(ModelError, match="cannot load plugin library '.*junk.so'"):
        build_engine(path, output=tmp_path / "a.engine",
                     options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, plugins=(junk,)))


def test_dynamic_batch_only_gets_a_default_profile(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    res = build_engine(_save(conv_bn_relu_cnn(), tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                       options=EngineBuildOptions(precision="fp32"))
    assert any("profile input:1x3x16x16,8x3x16x16,32x3x16x16" in m for m in res.messages)


def test_missing_profile_for_dynamic_hw_fails_before_building(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    model = conv_bn_relu_cnn()
    for i, name in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    with pytest.raises(UsageError, match=r"input 'input' has a dynamic shape \(\?x3x\?x\?\).*--shapes input:1x3x<size>x<size>"):
        build_engine(_save(model, tmp_path / "cnn.onnx"), output=tmp_path / "e.engine",
                     options=EngineBuildOptions(precision="fp32"))
    assert not (tmp_path / "e.engine").exists()


def test_build_failure_reports_tensorrts_error(fake_trt: FakeTrt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = fake_trt()

    def refuse(self: Any, network: object, config: object) -> None:
        self.logger.log(mod.ILogger.Severity.ERROR, "Error Code 4: Internal Error (no implementation for layer fc)")
        return None

    monkeypatch.setattr(mod.Builder, "build_serialized_network", refuse)
    with pytest.raises(QuantError, match=r"could not build an engine .*no implementation for layer fc"):
        build_engine(_save(mlp(), tmp_path / "m.onnx"), output=tmp_path / "m.engine",
                     options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    assert not (tmp_path / "m.engine").exists()


def test_output_checks(fake_trt: FakeTrt, tmp_path: Path) -> None:
    fake_trt()
    path = _save(mlp(), tmp_path / "m.onnx")
    with pytest.raises(QuantError, match="same file as input"):
        build_engine(path, output=path, options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))
    with pytest.raises(QuantError, match="does not exist; create it first"):
        build_engine(path, output=tmp_path / "no" / "dir" / "m.engine", options=EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES))


def test_timing_cache(fake_trt: FakeTrt, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mod = fake_trt()
    path = _save(mlp(), tmp_path / "m.onnx")
    timing = tmp_path / "timing.cache"
    opts = EngineBuildOptions(precision="fp32", shapes=MLP_SHAPES, timing_cache=timing)
    r = build_engine(path, output=tmp_path / "a.engine", options=opts)
    assert r.timing_cache == timing and timing.read_bytes().startswith(b"fake-timing-cache:")
    build_engine(path, output=tmp_path / "b.engine", options=opts)
    assert _builder(mod).config.timing_cache.data.startswith(b"fake-timing-cache:")
    timing.write_bytes(b"other-gpu timing cache")
    with caplog.at_level(logging.WARNING, logger="quant"):
        build_engine(path, output=tmp_path / "c.engine", options=opts)
    assert "made by another TensorRT version or GPU; starting a new one" in caplog.text
    assert timing.read_bytes().startswith(b"fake-timing-cache:")
