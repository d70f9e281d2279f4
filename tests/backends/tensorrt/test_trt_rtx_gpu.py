"""TensorRT-RTX engines running on a GPU: built by quant (ahead of time, as on any machine), run
by TrtRunner, compared with ONNX Runtime's exact INT8 arithmetic (Q/DQ as float maths).

Marked ``tensorrt_rtx_gpu``: they need TensorRT-RTX, cuda-python and a GPU TensorRT-RTX engines
run on (compute capability 8.0, 8.6, 8.9, 12.0, 12.1); they skip with the reason elsewhere,
including on this project's CPU machine and on its H200 (compute capability 9.0, which
TensorRT-RTX refuses). Never run yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.backends.tensorrt.builder import build_engine
from quant.backends.tensorrt.options import EngineBuildOptions
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.models import conv_bn_relu_cnn, random_feed, run_model

pytestmark = pytest.mark.tensorrt_rtx_gpu


def _qdq_cnn(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    clean = cleanup(conv_bn_relu_cnn())
    tensors = calibration_tensors(clean)
    outs = run_model(clean, random_feed(clean, batch=4), tensors)
    qdq = insert_qdq(clean, {t: max(float(np.abs(outs[t]).max()), 1e-3) for t in tensors}).model
    path = tmp_path / "cnn.int8.onnx"
    onnx.save(qdq, str(path))
    return path, qdq


def test_int8_engine_agrees_with_exact_int8_onnx_runtime(tmp_path: Path) -> None:
    from quant.backends.tensorrt.runner import TrtRunner

    path, qdq = _qdq_cnn(tmp_path)
    res = build_engine(path, output=tmp_path / "cnn.engine", flavor="tensorrt-rtx")
    feed = random_feed(qdq, batch=8, seed=1)
    want = run_model(qdq, feed)["logits"]
    with TrtRunner(res.engine) as runner:
        got = runner.infer(feed)["logits"]
        assert runner.last_latency_ms is not None and runner.last_latency_ms > 0
    # Same INT8 grid; TensorRT may fuse and reorder float maths: within a few quantization steps.
    step = float(np.abs(want).max()) / 127
    assert np.abs(got - want).max() <= 4 * step


def test_engine_for_another_compute_capability_is_refused_with_the_rebuild_command(tmp_path: Path) -> None:
    from quant.backends.tensorrt import cuda as cu
    from quant.backends.tensorrt.runner import TrtRunner
    from quant.errors import ModelError

    path, _ = _qdq_cnn(tmp_path)
    here = cu.device_info(0).compute_capability
    other = "12.0" if here != "12.0" else "8.9"
    res = build_engine(path, output=tmp_path / "other.engine", flavor="tensorrt-rtx",
                       options=EngineBuildOptions(compute_capabilities=(other,)))
    with pytest.raises(ModelError, match=f"--backend tensorrt-rtx --compute-capability {here}"):
        TrtRunner(res.engine)
