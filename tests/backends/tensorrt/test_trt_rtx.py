"""Real TensorRT-RTX (NVIDIA's ONNX parser and strongly typed builder) on every kind of Q/DQ model
quant produces, on this CPU-only machine: no stand-in, no GPU. The engines are built ahead of
time and not run (engine execution needs a supported GPU: test_trt_rtx_gpu.py).

Every build goes through quant's one strongly typed build path (builder.build_engine with
flavor="tensorrt-rtx"), the same code TensorRT 10.x/11.x builds Q/DQ models with.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quant.backends.tensorrt import tensorrt_rtx_available
from quant.backends.tensorrt.builder import build_engine
from quant.backends.tensorrt.check import check_with_tensorrt, trt_network_view
from quant.backends.tensorrt.network import render_network_view
from quant.backends.tensorrt.options import EngineBuildOptions, parse_shape_spec
from quant.backends.tensorrt.sidecar import read_engine_sidecar
from quant.errors import ModelError, QuantError, UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.models import (
    conv_bn_relu_cnn,
    identity_weights_cnn,
    mlp,
    random_feed,
    residual_block,
    run_model,
    shared_input_convs,
    transformer_block,
    two_input_two_output,
)

pytestmark = [
    pytest.mark.tensorrt_rtx,
    pytest.mark.skipif(not tensorrt_rtx_available(), reason="TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]'"),
]

RTX = "tensorrt-rtx"


def _amax(model: onnx.ModelProto) -> dict[str, float]:
    """Max calibration on one random batch (enough for placement and building)."""
    tensors = calibration_tensors(model)
    outs = run_model(model, random_feed(model, batch=2), tensors)
    return {t: max(float(np.abs(outs[t]).max()), 1e-3) for t in tensors}


def _qdq(model: onnx.ModelProto, exclude: tuple[str, ...] = ()) -> onnx.ModelProto:
    clean = cleanup(model)
    return insert_qdq(clean, _amax(clean), exclude=exclude).model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _assert_engine(engine: Path, *, mode: str) -> dict[str, object]:
    assert engine.is_file() and engine.stat().st_size > 10_000
    side = json.loads(Path(str(engine) + ".json").read_text())
    assert side["trt_flavor"] == "tensorrt-rtx" and side["trt_version"].startswith("1.")
    assert side["mode"] == mode and side["engine_bytes"] == engine.stat().st_size
    return side


# --------------------------------------------------------------------------------------------
# Every test model of the suite, as quant's Q/DQ model: parsed and built
# --------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "conv_bn_relu_cnn": conv_bn_relu_cnn,
    "residual_block": residual_block,
    "identity_weights_cnn": identity_weights_cnn,
    "mlp": mlp,
    "two_input_two_output": two_input_two_output,  # two inputs, two outputs
    "transformer_block": transformer_block,
    "shared_input_convs": shared_input_convs,
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_test_model_builds_as_an_int8_engine(name: str, tmp_path: Path) -> None:
    qdq = _qdq(BUILDERS[name]())
    n_q = sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node)
    assert n_q > 0
    path = _save(qdq, tmp_path / f"{name}.int8.onnx")
    res = build_engine(path, output=tmp_path / f"{name}.engine", flavor=RTX)
    assert res.mode == "int8-qdq" and res.trt_flavor == RTX
    side = _assert_engine(res.engine, mode="int8-qdq")
    assert side["compute_capabilities"] == []
    # TensorRT's own network has one QUANTIZE layer per quant QuantizeLinear.
    view = trt_network_view(path, flavor=RTX)
    assert view.parsed and len(view.quantize_layers) == n_q and view.layer_types["DEQUANTIZE"] >= n_q


def test_fallback_build_with_excluded_layers(tmp_path: Path) -> None:
    """A plain model + cache with an exclusion: quant inserts Q/DQ (minus the excluded Gemm), then
    TensorRT-RTX builds it; the excluded layer has no Q/DQ in TensorRT's network either."""
    from quant.cache.trt import format_trt_cache

    model = cleanup(conv_bn_relu_cnn())
    path = _save(model, tmp_path / "cnn.onnx")
    cache = tmp_path / "cnn.cache"  # TensorRT's own text format, as TensorRT would write it
    cache.write_text(format_trt_cache(_amax(model), trt_version=101300, algorithm="MinMaxCalibration"))
    full = build_engine(path, output=tmp_path / "full.engine", cache=cache, flavor=RTX)
    part = build_engine(path, output=tmp_path / "part.engine", cache=cache, flavor=RTX,
                        options=EngineBuildOptions(exclude=("fc",)))
    assert full.mode == part.mode == "int8-qdq-from-cache"
    assert any("inserted Q/DQ for" in m for m in part.messages)
    assert read_engine_sidecar(part.engine).build_options["exclude"] == ["fc"]  # type: ignore[union-attr]
    # The same exclusion in quant's Q/DQ ONNX, parsed by TensorRT: the fc input has no Q/DQ pair.
    with_fc = trt_network_view(_save(_qdq(conv_bn_relu_cnn()), tmp_path / "a.onnx"), flavor=RTX)
    without = trt_network_view(_save(_qdq(conv_bn_relu_cnn(), exclude=("fc",)), tmp_path / "b.onnx"), flavor=RTX)
    assert len(without.quantize_layers) == len(with_fc.quantize_layers) - 1


def test_dynamic_hw_model_builds_with_a_profile_and_fails_clearly_without(tmp_path: Path) -> None:
    model = _qdq(conv_bn_relu_cnn())
    for i, dim in ((2, "H"), (3, "W")):
        model.graph.input[0].type.tensor_type.shape.dim[i].dim_param = dim
    path = _save(model, tmp_path / "dyn.int8.onnx")
    out = tmp_path / "dyn.engine"
    with pytest.raises(UsageError) as err:
        build_engine(path, output=out, flavor=RTX)
    msg = str(err.value)
    assert "input 'input' has a dynamic shape (?x3x?x?)" in msg and "--shapes input:1x3x<size>x<size>" in msg
    assert not out.exists() and not Path(str(out) + ".json").exists()
    shapes = (parse_shape_spec("input:1x3x16x16,4x3x32x32,8x3x64x64"),)
    res = build_engine(path, output=out, flavor=RTX, options=EngineBuildOptions(shapes=shapes))
    side = _assert_engine(res.engine, mode="int8-qdq")
    assert side["build_options"]["shapes"] == [{"name": "input", "min": [1, 3, 16, 16], "opt": [4, 3, 32, 32], "max": [8, 3, 64, 64]}]  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Models that TensorRT refuses: one line with the node and TensorRT's words, no engine
# --------------------------------------------------------------------------------------------


def _with_zero_point(model: onnx.ModelProto, value: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear")
    for init in out.graph.initializer:
        if init.name == q.input[2]:
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return out


@pytest.mark.parametrize(
    "zero_point",
    [np.array(3, np.int8), np.array(128, np.uint8)],
    ids=["non-zero-int8-zero-point", "asymmetric-uint8"],
)
def test_asymmetric_quantization_fails_with_tensorrts_message(zero_point: np.ndarray, tmp_path: Path) -> None:
    path = _save(_with_zero_point(_qdq(residual_block()), zero_point), tmp_path / "bad.onnx")
    out = tmp_path / "bad.engine"
    with pytest.raises(ModelError) as err:
        build_engine(path, output=out, flavor=RTX)
    msg = str(err.value)
    assert msg.startswith("TensorRT-RTX cannot parse '") and "\n" not in msg
    assert "node 'input_QuantizeLinear' (QuantizeLinear)" in msg
    assert "Non-zero zero point is not supported" in msg  # TensorRT's own words
    assert "zero point 0" in msg  # quant's fix
    assert not out.exists() and not Path(str(out) + ".json").exists()
    with pytest.raises(ModelError, match="Non-zero zero point is not supported"):
        check_with_tensorrt(path, flavor=RTX)


def test_per_channel_activation_scale_is_refused_before_tensorrt(tmp_path: Path) -> None:
    """TensorRT-RTX 1.7 builds a per-channel activation Q/DQ without complaint; quant refuses it
    (TensorRT quantizes INT8 activations per tensor), naming the node."""
    model = _qdq(residual_block())
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    scale = float(numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == q.input[1])))
    for init in model.graph.initializer:
        if init.name == q.input[1]:
            init.CopyFrom(numpy_helper.from_array(np.full(3, scale, np.float32), init.name))
        elif init.name == q.input[2]:
            init.CopyFrom(numpy_helper.from_array(np.zeros(3, np.int8), init.name))
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and list(node.input[1:]) == list(q.input[1:]):
            node.attribute.append(onnx.helper.make_attribute("axis", 1))
    path = _save(model, tmp_path / "perchannel.onnx")
    assert trt_network_view(path, flavor=RTX).parsed  # TensorRT's parser itself accepts it
    out = tmp_path / "pc.engine"
    with pytest.raises(ModelError) as err:
        build_engine(path, output=out, flavor=RTX)
    msg = str(err.value)
    assert "node 'input_QuantizeLinear' (QuantizeLinear): activation 'input' has 3 scales (per-channel, axis 1)" in msg
    assert "\n" not in msg and not out.exists()


def test_unsupported_target_is_tensorrts_builder_message(tmp_path: Path) -> None:
    """Turing (SM75) has no FP32 GEMM in TensorRT-RTX: the builder names the layer; no engine."""
    path = _save(_qdq(mlp()), tmp_path / "mlp.int8.onnx")
    out = tmp_path / "sm75.engine"
    with pytest.raises(QuantError) as err:
        build_engine(path, output=out, flavor=RTX, options=EngineBuildOptions(compute_capabilities=("7.5",)))
    msg = str(err.value)
    assert msg.startswith("TensorRT-RTX could not build an engine") and "Turing (SM75)" in msg and "\n" not in msg
    assert not out.exists()


def test_compute_capability_current_needs_a_gpu(tmp_path: Path) -> None:
    from quant.backends.tensorrt.builder import local_gpu_problem

    problem = local_gpu_problem()
    if problem is None:
        pytest.skip("this machine has a GPU: --compute-capability current is meaningful here")
    path = _save(_qdq(mlp()), tmp_path / "mlp.int8.onnx")
    with pytest.raises(UsageError, match=r"--compute-capability current builds for this machine's GPU, and .*e\.g\. --compute-capability 8\.9,12\.0"):
        build_engine(path, output=tmp_path / "cur.engine", flavor=RTX, options=EngineBuildOptions(compute_capabilities=("current",)))
    assert not (tmp_path / "cur.engine").exists()


# --------------------------------------------------------------------------------------------
# Options of the shared path: targets, FP16/FP32, timing cache, network view
# --------------------------------------------------------------------------------------------


def test_targets_fp16_fp32_and_no_timing_cache(tmp_path: Path) -> None:
    plain = _save(cleanup(mlp()), tmp_path / "mlp.onnx")
    for precision, mode in (("fp16", "fp16-converted"), ("fp32", "fp32")):
        res = build_engine(plain, output=tmp_path / f"{precision}.engine", flavor=RTX,
                           options=EngineBuildOptions(precision=precision, compute_capabilities=("8.9", "12.0")))  # type: ignore[arg-type]
        side = _assert_engine(res.engine, mode=mode)
        assert side["compute_capabilities"] == ["8.9", "12.0"]
    # TensorRT-RTX's timing cache is a no-op (deprecated since 1.2): refused, not silently ignored.
    with pytest.raises(UsageError, match="--timing-cache: TensorRT-RTX has no timing cache"):
        build_engine(plain, output=tmp_path / "tc.engine", flavor=RTX,
                     options=EngineBuildOptions(precision="fp32", timing_cache=tmp_path / "mlp.timing"))
    assert not (tmp_path / "tc.engine").exists()


def test_errors_reach_quant_after_many_builds(tmp_path: Path) -> None:
    """TensorRT keeps the first logger it is given for the whole process; quant's message still
    carries TensorRT's error on a later build."""
    path = _save(_qdq(mlp()), tmp_path / "mlp.int8.onnx")
    for i in range(2):
        build_engine(path, output=tmp_path / f"ok{i}.engine", flavor=RTX)
    with pytest.raises(QuantError, match=r"Turing \(SM75\)"):
        build_engine(path, output=tmp_path / "sm75.engine", flavor=RTX, options=EngineBuildOptions(compute_capabilities=("7.5",)))


def test_check_and_network_view(tmp_path: Path) -> None:
    path = _save(_qdq(two_input_two_output()), tmp_path / "two.int8.onnx")
    view = check_with_tensorrt(path, flavor=RTX)
    assert view.built and view.engine_bytes and view.engine_bytes > 10_000
    assert [i[0] for i in view.inputs] == ["input", "input2"] and [o[0] for o in view.outputs] == ["sum_out", "prod_out"]
    assert any("batch 1, 8, 32 assumed" in m for m in view.messages)
    text = render_network_view(view)
    assert "TensorRT-RTX 1." in text and "quantize layers" in text and "(not written)" in text
    assert list(tmp_path.iterdir()) == [path]  # the check writes nothing


# --------------------------------------------------------------------------------------------
# The TensorRT API the shared code uses exists in TensorRT-RTX (the runner's and inspector's
# too, which cannot run here): every ``trt.A.B`` chain in those modules, looked up for real.
# --------------------------------------------------------------------------------------------

#: Used only where the flavour has it: EXPLICIT_BATCH before TensorRT 10 (Capabilities decides).
TENSORRT_ONLY = {"NetworkDefinitionCreationFlag.EXPLICIT_BATCH"}


def _trt_chains(path: Path) -> set[str]:
    import ast

    chains: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute):
            parts: list[str] = []
            cur: ast.expr = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "trt":
                chains.add(".".join(reversed(parts)))
    # keep only the longest chains (A.B, not also A)
    return {c for c in chains if not any(o.startswith(c + ".") for o in chains)}


@pytest.mark.parametrize("module", ["network.py", "builder.py", "check.py", "runner.py", "inspect.py"])
def test_tensorrt_api_used_by_the_shared_code_exists_in_tensorrt_rtx(module: str) -> None:
    import tensorrt_rtx

    import quant.backends.tensorrt as pkg

    chains = _trt_chains(Path(pkg.__file__).parent / module) - TENSORRT_ONLY
    assert chains or module == "check.py"
    missing = []
    for chain in sorted(chains):
        obj: object = tensorrt_rtx
        for part in chain.split("."):
            if not hasattr(obj, part):
                missing.append(chain)
                break
            obj = getattr(obj, part)
    assert missing == []


def test_runner_and_inspector_calls_exist_in_tensorrt_rtx() -> None:
    """The engine, context, runtime and inspector methods TrtRunner and inspect_engine call (found
    in their source), on TensorRT-RTX's classes: the GPU-only code at least names real API."""
    import re

    import tensorrt_rtx

    import quant.backends.tensorrt as pkg

    classes = {
        "engine": tensorrt_rtx.ICudaEngine, "context": tensorrt_rtx.IExecutionContext,
        "runtime": tensorrt_rtx.Runtime, "inspector": tensorrt_rtx.EngineInspector,
    }
    base = Path(pkg.__file__).parent
    text = (base / "runner.py").read_text() + (base / "inspect.py").read_text()
    calls = set(re.findall(r"\b(engine|context|runtime|inspector)\.([a-z_0-9]+)", text))
    assert len(calls) > 10
    missing = sorted(f"{owner}.{name}" for owner, name in calls if not hasattr(classes[owner], name))
    assert missing == []
