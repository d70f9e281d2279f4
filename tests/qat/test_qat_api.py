"""quant.qat.api: the QAT workflow end to end (demo, factory models, caches) and its errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from qat_fixtures import blobs, small_cnn  # noqa: E402

from quant.errors import DataError, UsageError  # noqa: E402
from quant.qat.api import (  # noqa: E402
    FP32,
    PTQ,
    QAT,
    QAT_INIT,
    QatOptions,
    load_factory_model,
    load_weights,
    parse_input_shape,
    qat_model,
    verify_qdq,
)
from quant.qat.train import TrainConfig  # noqa: E402

pytestmark = pytest.mark.torch


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(6 * 4 * 4, 4)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))

    def build():
        return Net()

    NOT_CALLABLE = 3

    def not_a_module():
        return 42
    """
)


@pytest.fixture
def user_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package-less user module in the current directory, its weights and npz data."""
    name = f"qat_user_models_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    model = load_factory_model(f"{name}:build")
    # train the float model briefly so that accuracies mean something
    x, y = blobs(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        for i in range(0, 512, 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.from_numpy(x[i:i + 64])), torch.from_numpy(y[i:i + 64])).backward()
            opt.step()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "weights.pt")
    np.savez(tmp_path / "train.npz", input=x, labels=y)
    xe, ye = blobs(200, seed=2)
    np.savez(tmp_path / "val.npz", input=xe, labels=ye)
    (tmp_path / "module_name").write_text(name)
    return tmp_path


def test_factory_model_with_npz_data_and_a_quant_cache(user_project: Path) -> None:
    """The CLI's --model package.module:factory path, initialised from a PTQ cache of the same
    model exported to ONNX: every quantizer finds its tensor in the cache."""
    from quant.backends.base import TensorSpec
    from quant.cache.io import write_cache
    from quant.calibrators.calibrate import calibrate
    from quant.calibrators.methods import CalibConfig
    from quant.datasets.loader import open_dataset
    from quant.fingerprint import model_fingerprint
    from quant.graph.cleanup import cleanup
    from quant.graph.qdq import calibration_tensors
    from quant.qat.export import export_float_onnx

    name = (user_project / "module_name").read_text()
    model = load_factory_model(f"{name}:build", user_project / "weights.pt")
    fp32 = cleanup(export_float_onnx(model, torch.zeros(1, 1, 8, 8)))
    spec = TensorSpec("input", ("N", 1, 8, 8), np.dtype(np.float32))
    result, _ = calibrate(fp32, open_dataset(user_project / "train.npz", inputs=[spec], max_samples=128),
                          calibration_tensors(fp32, scope="all"), CalibConfig("entropy"),
                          model_fingerprint=model_fingerprint(fp32).to_dict())
    write_cache(user_project / "model.cache", result)

    outcome = qat_model(
        f"{name}:build", weights=user_project / "weights.pt", data=str(user_project / "train.npz"),
        eval_data=str(user_project / "val.npz"), input_shape=(1, 8, 8), cache=user_project / "model.cache",
        output=user_project / "model.qat.onnx",
        options=QatOptions(calib_samples=64, train=TrainConfig(epochs=1, lr=1e-3)), device="cpu",
    )
    assert outcome.init.unmatched == ()
    assert all(s.startswith("cache:") for s in outcome.init.source.values())
    assert outcome.ptq["source"] == "cache"
    assert set(outcome.accuracy) == {FP32, PTQ, QAT_INIT, QAT}
    assert float(outcome.accuracy[QAT]) >= 90.0  # type: ignore[arg-type]
    assert verify_qdq(onnx.load(user_project / "model.qat.onnx"))["int8_layers"] == 2


def test_factory_and_weights_errors(user_project: Path) -> None:
    name = (user_project / "module_name").read_text()
    with pytest.raises(UsageError, match="expected 'package.module:function'"):
        load_factory_model("no_colon")
    with pytest.raises(UsageError, match="cannot import module 'no_such_module_xyz'"):
        load_factory_model("no_such_module_xyz:build")
    with pytest.raises(UsageError, match="has no attribute 'missing'"):
        load_factory_model(f"{name}:missing")
    with pytest.raises(UsageError, match="is not callable"):
        load_factory_model(f"{name}:NOT_CALLABLE")
    with pytest.raises(UsageError, match=r"not_a_module\(\) returned int, not a torch.nn.Module"):
        load_factory_model(f"{name}:not_a_module")
    model = load_factory_model(f"{name}:build")
    with pytest.raises(DataError, match="no such file"):
        load_weights(model, user_project / "missing.pt")
    (user_project / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a PyTorch state dict"):
        load_weights(model, user_project / "garbage.pt")
    torch.save(small_cnn().state_dict(), user_project / "other.pt")
    with pytest.raises(DataError, match="does not fit the model"):
        load_weights(model, user_project / "other.pt")
    torch.save([1, 2], user_project / "list.pt")
    with pytest.raises(DataError, match="holds a list, not a state dict"):
        load_weights(model, user_project / "list.pt")


def test_qat_model_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        qat_model("pkg:build", data="x", output=tmp_path / "o.onnx")
    with pytest.raises(UsageError, match="an ONNX model has its weights"):
        qat_model("model.onnx", data="x", weights="w.pt", output=tmp_path / "o.onnx")


@pytest.mark.parametrize(("text", "shape"), [("3,224,224", (3, 224, 224)), ("1x3x32x32", (3, 32, 32)), ("16", (16,))])
def test_parse_input_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_input_shape(text) == shape


@pytest.mark.parametrize("text", ["", "a,b", "3,0,4"])
def test_parse_input_shape_errors(text: str) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shape(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"method": "kl"}, "--method"), ({"calib_samples": 0}, "--calib-samples"), ({"batch_size": 0}, "batch-size"),
     ({"opset": 11}, "--opset")],
)
def test_options_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        QatOptions(**kwargs)  # type: ignore[arg-type]
