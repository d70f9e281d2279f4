"""Real TensorRT-RTX builds of the larger Q/DQ models quant produces: a ResNet-50 (the layout of
scripts/_bench_common.py, 25.6 M weights) with a static input and with dynamic H/W, and the QAT
export (PyTorch fake quantization -> Q/DQ ONNX). CPU only, no GPU: built, not run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.backends.tensorrt import tensorrt_rtx_available
from quant.backends.tensorrt.builder import build_engine
from quant.backends.tensorrt.check import trt_network_view
from quant.backends.tensorrt.options import EngineBuildOptions, parse_shape_spec
from quant.errors import UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.models import run_model

pytestmark = [
    pytest.mark.tensorrt_rtx,
    pytest.mark.skipif(not tensorrt_rtx_available(), reason="TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]'"),
]

RTX = "tensorrt-rtx"


@pytest.fixture(scope="module")
def resnet50_qdq(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """quant's Q/DQ ResNet-50 (max calibration on one random image): (fixed 1x3x224x224 input,
    dynamic Nx3xHxW input)."""
    from scripts._bench_common import resnet50

    clean = cleanup(resnet50())
    tensors = calibration_tensors(clean)
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)}
    outs = run_model(clean, feed, tensors)
    qdq = insert_qdq(clean, {t: max(float(np.abs(outs[t]).max()), 1e-3) for t in tensors}).model
    d = tmp_path_factory.mktemp("resnet50")
    dims = qdq.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = 1
    static = d / "resnet50_static.int8.onnx"
    onnx.save(qdq, str(static))
    for i, name in ((0, "N"), (2, "H"), (3, "W")):
        dims[i].dim_param = name
    dynamic = d / "resnet50_dynamic.int8.onnx"
    onnx.save(qdq, str(dynamic))
    return static, dynamic


def test_resnet50_static_builds(resnet50_qdq: tuple[Path, Path], tmp_path: Path) -> None:
    static, _ = resnet50_qdq
    res = build_engine(static, output=tmp_path / "r50.engine", flavor=RTX)
    assert res.mode == "int8-qdq" and res.num_layers > 600
    assert res.engine_bytes > 20_000_000  # INT8 weights: ~25.6 M bytes, well under FP32's 102 MB
    view = trt_network_view(static, flavor=RTX)
    assert view.layer_types["CONVOLUTION"] == 53 and len(view.quantize_layers) >= 53


def test_resnet50_dynamic_hw_needs_and_takes_a_profile(resnet50_qdq: tuple[Path, Path], tmp_path: Path) -> None:
    _, dynamic = resnet50_qdq
    out = tmp_path / "r50dyn.engine"
    with pytest.raises(UsageError, match=r"input 'input' has a dynamic shape \(\?x3x\?x\?\).*--shapes input:1x3x<size>x<size>"):
        build_engine(dynamic, output=out, flavor=RTX)
    assert not out.exists()
    shapes = (parse_shape_spec("input:1x3x160x160,4x3x224x224,8x3x288x288"),)
    res = build_engine(dynamic, output=out, flavor=RTX,
                       options=EngineBuildOptions(shapes=shapes, compute_capabilities=("8.6", "8.9", "12.0")))
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["trt_flavor"] == RTX and side["compute_capabilities"] == ["8.6", "8.9", "12.0"]
    assert res.engine_bytes == out.stat().st_size


@pytest.mark.torch
def test_qat_export_builds(tmp_path: Path) -> None:
    """quant qat's export (Q/DQ from PyTorch fake quantization, ConvTranspose and a residual Add
    included) is a model TensorRT-RTX parses and builds as INT8."""
    pytest.importorskip("torch")
    import torch

    from quant.qat.calibrate import calibrate_model
    from quant.qat.export import export_onnx
    from quant.qat.swap import quantize_model
    from tests.qat.qat_fixtures import blobs, small_cnn

    x, _ = blobs(32, seed=3)
    q = quantize_model(small_cnn())
    calibrate_model(q, [torch.from_numpy(x[i:i + 16]) for i in range(0, 32, 16)], method="minmax")
    exported = export_onnx(q, torch.from_numpy(x[:2]), output_names=["logits"])
    path = tmp_path / "qat.onnx"
    onnx.save(exported, str(path))
    res = build_engine(path, output=tmp_path / "qat.engine", flavor=RTX)
    assert res.mode == "int8-qdq"
    view = trt_network_view(path, flavor=RTX)
    assert view.layer_types.get("DECONVOLUTION") == 1 and len(view.quantize_layers) > 0
