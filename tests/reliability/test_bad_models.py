"""Bad models through the real CLI (calibrate, build, eval): one clear line naming the model file
and the cause, the right exit code, nothing written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.models import conv_bn_relu_cnn, mlp
from tests.reliability.helpers import (
    assert_fails_cleanly,
    copy_demo_images,
    custom_op_model,
    integer_model,
    run_cli,
    save,
    snapshot,
    with_input_shape,
    with_opset,
)

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def mlp_data(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.npy"
    np.save(path, np.random.default_rng(0).random((6, 16), dtype=np.float32))
    return path


def _all_commands(model: Path, data: Path, out: Path) -> list[list[str | Path]]:
    """The three commands that load a model, each writing into ``out``."""
    return [
        ["calibrate", model, "--data", data, "--cache", out / "m.cache"],
        ["build", model, "--precision", "fp16", "-o", out / "m.fp16.onnx"],
        ["eval", model, "--data", data, "--precisions", "fp32", "--report", out / "report.json"],
    ]


def _check_all(capsys: Capsys, model: Path, data: Path, out: Path, *, code: int, names: list[str]) -> None:
    out.mkdir(exist_ok=True)
    before = snapshot(out, model.parent)
    for args in _all_commands(model, data, out):
        result = run_cli(capsys, *args)
        assert_fails_cleanly(result, code=code, names=names, before=before, roots=(out, model.parent))


def test_model_missing(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    _check_all(capsys, tmp_path / "nope.onnx", mlp_data, tmp_path / "out", code=1, names=["nope.onnx", "no such file"])


def test_model_is_a_directory(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    (tmp_path / "model.onnx").mkdir()
    _check_all(capsys, tmp_path / "model.onnx", mlp_data, tmp_path / "out", code=2, names=["model.onnx", "directory"])


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not ONNX\n", bytes(range(256)) * 8, b"TRT-8600-EntropyCalibration2\nx: 3f800000\n"],
    ids=["empty", "text", "binary", "a-cache"],
)
def test_not_onnx(capsys: Capsys, tmp_path: Path, mlp_data: Path, content: bytes) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    _check_all(capsys, model, mlp_data, tmp_path / "out", code=1, names=["model.onnx", "not an ONNX model"])


def test_truncated_onnx(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    data = mlp().SerializeToString()
    model = tmp_path / "model.onnx"
    model.write_bytes(data[: len(data) // 2])
    _check_all(capsys, model, mlp_data, tmp_path / "out", code=1, names=["model.onnx", "not an ONNX model", "truncated"])


def test_external_data_missing(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    model = tmp_path / "model.onnx"
    onnx.save_model(mlp(), str(model), save_as_external_data=True, location="model.onnx.weights", size_threshold=0)
    (tmp_path / "model.onnx.weights").unlink()
    _check_all(
        capsys, model, mlp_data, tmp_path / "out", code=1,
        names=["model.onnx", "external data file 'model.onnx.weights'", "not found"],
    )


def test_external_data_present_works(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    model = tmp_path / "model.onnx"
    onnx.save_model(mlp(), str(model), save_as_external_data=True, location="model.onnx.weights", size_threshold=0)
    result = run_cli(capsys, "calibrate", model, "--data", mlp_data, "--cache", tmp_path / "m.cache")
    assert result.code == 0, result.err


def test_empty_graph(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    m = mlp()
    del m.graph.node[:]
    model = save(m, tmp_path / "model.onnx")
    _check_all(capsys, model, mlp_data, tmp_path / "out", code=1, names=["model.onnx", "the graph is empty"])


def test_dynamic_image_size_without_a_shape(capsys: Capsys, tmp_path: Path) -> None:
    """Height and width are dynamic and images have no fixed size: say how to give one, then work."""
    model = save(with_input_shape(conv_bn_relu_cnn(), ["N", 3, "H", "W"]), tmp_path / "dynamic.onnx")
    folder = tmp_path / "images"
    copy_demo_images(folder, 3)
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", folder, "--cache", out / "m.cache")
    assert_fails_cleanly(
        result, code=1, names=["input 'input'", "dynamic height", "--preprocess size="], before=before, roots=(out,)
    )
    result = run_cli(capsys, "calibrate", model, "--data", folder, "--cache", out / "m.cache", "--preprocess", "size=20x24")
    assert result.code == 0, result.err


def test_dynamic_dims_from_arrays_work(capsys: Capsys, tmp_path: Path) -> None:
    """Arrays carry their own shape: every dim dynamic is fine with .npy data."""
    model = save(with_input_shape(conv_bn_relu_cnn(), ["N", "C", "H", "W"]), tmp_path / "dynamic.onnx")
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((4, 3, 12, 12), dtype=np.float32))
    result = run_cli(capsys, "calibrate", model, "--data", data, "--cache", tmp_path / "m.cache")
    assert result.code == 0, result.err


def test_no_float_tensors(capsys: Capsys, tmp_path: Path) -> None:
    model = save(integer_model(), tmp_path / "integer.onnx")
    data = tmp_path / "ints.npy"
    np.save(data, np.arange(16, dtype=np.int64).reshape(4, 4))
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", data, "--cache", out / "m.cache")
    assert_fails_cleanly(result, code=1, names=["integer.onnx", "no float activations"], before=before, roots=(out,))


def test_opset_too_old_for_onnxruntime(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    model = save(with_opset(mlp(), 1), tmp_path / "old.onnx")
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", mlp_data, "--cache", out / "m.cache")
    assert_fails_cleanly(result, code=1, names=["old.onnx", "opset 1", "newer opset"], before=before, roots=(out,))


def test_opset_too_new_for_onnxruntime(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    newest_onnx = onnx.defs.onnx_opset_version()
    model = save(with_opset(mlp(), newest_onnx), tmp_path / "new.onnx")
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", mlp_data, "--cache", out / "m.cache")
    if result.code == 0:
        pytest.skip(f"the installed onnxruntime runs opset {newest_onnx}: nothing is too new for it")
    assert_fails_cleanly(
        result, code=1, names=["new.onnx", f"opset {newest_onnx}", "upgrade onnxruntime"], before=before, roots=(out,)
    )


def test_opset_too_new_for_onnx(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    version = onnx.defs.onnx_opset_version() + 5
    model = save(with_opset(mlp(), version), tmp_path / "future.onnx")
    _check_all(capsys, model, mlp_data, tmp_path / "out", code=1, names=["future.onnx", f"opset {version}", "upgrade onnx"])


def test_custom_op_not_registered(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    model = save(custom_op_model(), tmp_path / "plugin.onnx")
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    commands: list[list[str | Path]] = [
        ["calibrate", model, "--data", mlp_data, "--cache", out / "m.cache"],
        ["eval", model, "--data", mlp_data, "--precisions", "fp32", "--report", out / "r.json"],
    ]
    for args in commands:
        result = run_cli(capsys, *args)
        assert_fails_cleanly(
            result, code=1, names=["plugin.onnx", "'MyPluginOp'", "com.example", "custom-op library"],
            before=before, roots=(out,),
        )


def test_ir_version_too_new(capsys: Capsys, tmp_path: Path, mlp_data: Path) -> None:
    m = mlp()
    m.ir_version = 99
    model = save(m, tmp_path / "ir99.onnx")
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(out)
    result = run_cli(capsys, "calibrate", model, "--data", mlp_data, "--cache", out / "m.cache")
    assert_fails_cleanly(result, code=1, names=["ir99.onnx", "IR version 99"], before=before, roots=(out,))
