"""open_dataset dispatch, its errors, and the embedded demo."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from datasets_fixtures import image_input, write_gray_png

from quant.backends.base import TensorSpec
from quant.datasets import open_dataset
from quant.datasets.arrays import NpyDataset, NpzDataset
from quant.datasets.image_folder import ImageFolderDataset
from quant.datasets.preprocess import PreprocessSpec, parse_preprocess
from quant.demo import demo_calib_dir, demo_eval_dir, demo_info, demo_model_path
from quant.errors import DataError, UsageError

F32 = np.dtype(np.float32)
MNIST_INPUT = TensorSpec("input", ("batch", 1, 28, 28), F32)


def test_dispatch(tmp_path: Path, class_folder: Path) -> None:
    ds = open_dataset(class_folder, inputs=[image_input()], max_samples=5, seed=2)
    assert isinstance(ds, ImageFolderDataset) and len(ds) == 5
    assert ds.preprocess.color == "gray" and ds.preprocess.height == 4
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 8), np.float32))
    assert isinstance(open_dataset(str(npy), inputs=[TensorSpec("v", ("N", 8), F32)]), NpyDataset)
    npz = tmp_path / "x.NPZ"  # suffixes are case-insensitive
    with open(npz, "wb") as fh:
        np.savez(fh, v=np.zeros((3, 8), np.float32))
    assert isinstance(open_dataset(npz, inputs=[TensorSpec("v", ("N", 8), F32)]), NpzDataset)


def test_preprocess_forms(class_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = image_input(channels=3, h=6, w=6)
    by_text = open_dataset(class_folder, inputs=[spec], preprocess="imagenet")
    assert isinstance(by_text, ImageFolderDataset)
    assert by_text.preprocess.mean == (0.485, 0.456, 0.406) and by_text.preprocess.height == 6
    by_overrides = open_dataset(
        class_folder, inputs=[spec], preprocess=parse_preprocess("preset=raw,color=bgr")
    )
    assert isinstance(by_overrides, ImageFolderDataset) and by_overrides.preprocess.color == "bgr"
    full = PreprocessSpec(height=6, width=6, scale=1.0)
    ds = open_dataset(class_folder, inputs=[spec], preprocess=full)
    assert isinstance(ds, ImageFolderDataset) and ds.preprocess == full
    batch = next(iter(ds.batches(2)))
    assert batch.feed["input"].shape == (2, 3, 6, 6)
    with pytest.raises(DataError, match=r"preprocessing makes samples of shape \[3, 5, 5\]"):
        open_dataset(class_folder, inputs=[spec], preprocess=PreprocessSpec(height=5, width=5))
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 8), np.float32))
    with caplog.at_level(logging.WARNING, logger="quant.datasets.loader"):
        open_dataset(npy, inputs=[TensorSpec("v", ("N", 8), F32)], preprocess="imagenet")
    assert "image preprocessing (imagenet) is not applied" in caplog.text


def test_errors(tmp_path: Path, class_folder: Path) -> None:
    with pytest.raises(DataError, match=r"^data 'x': no such file or directory$"):
        open_dataset("x", inputs=[image_input()])
    two = [image_input("a"), image_input("b")]
    with pytest.raises(
        DataError,
        match=r"folder of images, which feeds exactly one model input, but the model has 2 inputs \('a', 'b'\); "
        r"use an .npz file with one key per input name",
    ):
        open_dataset(class_folder, inputs=two)
    with pytest.raises(DataError, match=r"input 'v' has shape \['N', 8\], not a 4-D image batch"):
        open_dataset(class_folder, inputs=[TensorSpec("v", ("N", 8), F32)])
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((3, 1, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"single .npy array but the model has 2 inputs \('a', 'b'\)"):
        open_dataset(npy, inputs=two)
    txt = tmp_path / "x.csv"
    txt.write_text("1,2")
    with pytest.raises(DataError, match=r"data '.*x.csv': unsupported file type; give a folder of images"):
        open_dataset(txt, inputs=[image_input()])
    with pytest.raises(
        DataError, match=r"data 'demo:train': unknown demo split; use demo:calib or demo:eval"
    ):
        open_dataset("demo:train", inputs=[MNIST_INPUT])
    with pytest.raises(UsageError, match="max_samples must be a positive integer"):
        open_dataset(class_folder, inputs=[image_input()], max_samples=0)
    with pytest.raises(UsageError, match="needs the model's input specs"):
        open_dataset(class_folder, inputs=[])
    with pytest.raises(UsageError, match="on_bad_image must be 'fail' or 'skip'"):
        open_dataset(class_folder, inputs=[image_input()], on_bad_image="warn")


def test_single_image_file_is_not_a_dataset(tmp_path: Path) -> None:
    png = write_gray_png(tmp_path / "one.png", 3)
    with pytest.raises(DataError, match="unsupported file type"):
        open_dataset(png, inputs=[image_input()])


# --- the embedded demo ----------------------------------------------------------------------


def test_demo_files_and_record() -> None:
    model = onnx.load(str(demo_model_path()))
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert {op.op_type for op in model.graph.node} >= {"Conv", "BatchNormalization", "MaxPool", "Gemm"}
    assert model.opset_import[0].version == 17
    info = demo_info()
    assert (info["train_size"], info["calib_size"], info["eval_size"]) == (3200, 300, 1500)
    assert info["fp32_eval_accuracy"] >= 0.97
    assert info["seed"] == 0 and "torch_version" in info and "command" in info
    total = sum(
        p.stat().st_size for p in demo_model_path().parent.rglob("*") if p.is_file() and p.suffix != ".pyc"
    )
    assert total < 3 * 1024 * 1024


@pytest.mark.parametrize(("split", "per_class"), [("demo:calib", 30), ("demo:eval", 150)])
def test_demo_splits(split: str, per_class: int) -> None:
    ds = open_dataset(split, inputs=[MNIST_INPUT])
    assert isinstance(ds, ImageFolderDataset)
    assert ds.class_names == tuple(str(d) for d in range(10))
    assert ds.labels is not None
    np.testing.assert_array_equal(np.bincount(ds.labels), [per_class] * 10)
    assert ds.summary().kind == "demo" and len(ds) == 10 * per_class
    # default preprocessing = the training preprocessing: gray, [0, 1]
    batch = next(iter(ds.batches(16)))
    x = batch.feed["input"]
    assert x.shape == (16, 1, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert ds.fingerprint() == open_dataset(split, inputs=[MNIST_INPUT]).fingerprint()


def test_demo_dirs_hold_pngs() -> None:
    for root, n in ((demo_calib_dir(), 300), (demo_eval_dir(), 1500)):
        files = sorted(root.glob("*/*.png"))
        assert len(files) == n
        from PIL import Image

        with Image.open(files[0]) as img:
            assert img.mode == "L" and img.size == (28, 28)


def test_demo_model_accuracy_on_calib() -> None:
    """The shipped model classifies the shipped calibration digits (300, fast) well."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(demo_model_path()), providers=["CPUExecutionProvider"])
    ds = open_dataset("demo:calib", inputs=[MNIST_INPUT])
    correct = 0
    for b in ds.batches(100):
        assert b.labels is not None
        correct += int((sess.run(["logits"], b.feed)[0].argmax(1) == b.labels).sum())
    assert correct / len(ds) == pytest.approx(demo_info()["fp32_calib_accuracy"], abs=1e-6)


def test_import_stays_cheap() -> None:
    code = (
        "import sys, quant.datasets, quant.demo\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'matplotlib', 'PIL') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []
