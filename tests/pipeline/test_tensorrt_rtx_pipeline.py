"""The pipeline side of TensorRT-RTX: quant run's acceptance check of its INT8 model, and the
api facade (check, network view, engine build with --exclude-from). Real TensorRT-RTX, no GPU."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant import api
from quant.backends.tensorrt import tensorrt_rtx_available
from quant.errors import UsageError
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from quant.pipeline.run import _check_with_tensorrt
from tests.models import conv_bn_relu_cnn, random_feed, run_model

pytestmark = [
    pytest.mark.tensorrt_rtx,
    pytest.mark.skipif(not tensorrt_rtx_available(), reason="TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]'"),
]


def _amax(model: onnx.ModelProto) -> dict[str, float]:
    tensors = calibration_tensors(model)
    outs = run_model(model, random_feed(model), tensors)
    return {t: max(float(np.abs(outs[t]).max()), 1e-3) for t in tensors}


def _qdq(tmp_path: Path, *, dynamic_hw: bool = False) -> Path:
    clean = cleanup(conv_bn_relu_cnn())
    qdq = insert_qdq(clean, _amax(clean)).model
    if dynamic_hw:
        for i, name in ((2, "H"), (3, "W")):
            qdq.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    path = tmp_path / ("dyn.int8.onnx" if dynamic_hw else "cnn.int8.onnx")
    onnx.save(qdq, str(path))
    return path


def test_run_checks_its_int8_model_by_default(tmp_path: Path) -> None:
    path = _qdq(tmp_path)
    view = _check_with_tensorrt(path, None)
    assert view is not None and view.built and view.trt.startswith("TensorRT-RTX")
    assert _check_with_tensorrt(path, False) is None


def test_run_skips_the_check_of_a_dynamic_hw_model_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _qdq(tmp_path, dynamic_hw=True)
    with caplog.at_level(logging.WARNING, logger="quant"):
        assert _check_with_tensorrt(path, None) is None
    assert "TensorRT check skipped: input 'input' has a dynamic shape" in caplog.text
    with pytest.raises(UsageError, match="--shapes input:1x3x<size>x<size>"):
        _check_with_tensorrt(path, True)


def test_api_facade(tmp_path: Path) -> None:
    path = _qdq(tmp_path)
    assert api.check_tensorrt(path).built
    view = api.inspect_tensorrt_network(path)
    assert view.parsed and view.built is None and len(view.quantize_layers) > 0
    # an engine from a plain model + cache, with the exclusions of a fallback file
    from quant.backends.tensorrt.options import EngineBuildOptions
    from quant.cache.trt import format_trt_cache

    clean = cleanup(conv_bn_relu_cnn())
    model = tmp_path / "cnn.onnx"
    onnx.save(clean, str(model))
    cache = tmp_path / "cnn.cache"
    cache.write_text(format_trt_cache(_amax(clean), trt_version=101300, algorithm="MinMaxCalibration"))
    fallback = tmp_path / "fallback.json"
    fallback.write_text(json.dumps(["fc"]))
    res = api.build_tensorrt_engine(model, output=tmp_path / "cnn.engine", trt_options=EngineBuildOptions(),
                                    cache=cache, flavor="tensorrt-rtx", exclude_from=fallback)
    side = json.loads((tmp_path / "cnn.engine.json").read_text())
    assert res.mode == "int8-qdq-from-cache" and side["build_options"]["exclude"] == ["fc"]
