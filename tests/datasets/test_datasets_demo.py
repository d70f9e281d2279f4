"""quant.demo: package paths, their errors, and the PyTorch LeNet <-> ONNX round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import quant.demo as demo
from quant.backends.base import TensorSpec
from quant.errors import DataError


def test_missing_demo_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_DIR", tmp_path)
    with pytest.raises(
        DataError, match=r"demo file '.*model.onnx' is missing from the installed quant package"
    ):
        demo.demo_model_path()
    with pytest.raises(DataError, match=r"demo file '.*calib' is missing"):
        demo.demo_calib_dir()
    with pytest.raises(DataError, match=r"demo file '.*eval' is missing"):
        demo.demo_eval_dir()
    (tmp_path / "demo.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"demo record '.*demo.json' is not a JSON object; reinstall quant"):
        demo.demo_info()
    (tmp_path / "demo.json").write_text("{broken")
    with pytest.raises(DataError, match=r"cannot read demo record '.*demo.json'"):
        demo.demo_info()


@pytest.mark.torch
def test_lenet_round_trip_matches_onnx_runtime() -> None:
    torch = pytest.importorskip("torch")
    import onnx
    import onnxruntime as ort

    from quant.datasets import open_dataset
    from quant.datasets.base import Batch
    from quant.demo.lenet import from_onnx, to_onnx

    proto = onnx.load(str(demo.demo_model_path()))
    model = from_onnx(proto)
    inputs = [TensorSpec("input", ("batch", 1, 28, 28), np.dtype(np.float32))]
    batch: Batch = next(iter(open_dataset("demo:calib", inputs=inputs).batches(32)))
    x = batch.feed["input"]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(["logits"], {"input": x})[0], torch_out, atol=1e-4)
    again = to_onnx(model)
    assert {t.name for t in again.graph.initializer} == {t.name for t in proto.graph.initializer}
    sess2 = ort.InferenceSession(again.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess2.run(["logits"], {"input": x})[0], torch_out, atol=1e-4)
    del again.graph.initializer[0]
    with pytest.raises(ValueError, match="ONNX model lacks LeNet weights"):
        from_onnx(again)
