"""quant.graph.load: loading, metadata and saving, with every error path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quant.errors import ModelError
from quant.graph import load as load_mod
from quant.graph.load import input_specs, load_model, opset_version, output_specs, save_model
from tests.models import conv_bn_relu_cnn, make_model, mlp, random_feed, run_model, two_input_two_output


def _write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_load_roundtrip(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    path = _write(tmp_path / "m.onnx", model)
    loaded = load_model(path)
    assert loaded.SerializeToString() == model.SerializeToString()
    assert load_model(str(path)).graph.name == "conv_bn_relu_cnn"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"^model '.*x\.onnx': no such file$"):
        load_model(tmp_path / "x.onnx")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="is a directory; give the path of an .onnx file"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "payload",
    [b"", b"hello, I am a text file\n" * 10, b"\xff\xfe\x00garbage\x12\x34" * 7],
    ids=["empty", "text", "garbage"],
)
def test_not_onnx(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "x.onnx"
    path.write_bytes(payload)
    with pytest.raises(ModelError, match=r"model '.*x\.onnx': not an ONNX model \(cannot parse protobuf\); "):
        load_model(path)


def test_truncated(tmp_path: Path) -> None:
    data = conv_bn_relu_cnn().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"not an ONNX model \(cannot parse protobuf\); .*truncated"):
        load_model(path)


def test_external_data_loads_and_missing_data_is_named(tmp_path: Path) -> None:
    model = conv_bn_relu_cnn()
    path = tmp_path / "ext.onnx"
    # onnx.save_model moves the data of the model it is given: save a copy.
    onnx.save_model(
        conv_bn_relu_cnn(), str(path), save_as_external_data=True, location="ext.weights", size_threshold=0
    )
    loaded = load_model(path)
    feed = random_feed(model)
    np.testing.assert_allclose(run_model(loaded, feed)["logits"], run_model(model, feed)["logits"])
    (tmp_path / "ext.weights").unlink()
    with pytest.raises(
        ModelError, match=r"external data file 'ext\.weights' .* not found in .*copy the data file"
    ):
        load_model(path)


def test_empty_graph(tmp_path: Path) -> None:
    graph = helper.make_graph([], "empty", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match="the graph is empty"):
        load_model(_write(tmp_path / "e.onnx", model))


def test_opset_too_new(tmp_path: Path) -> None:
    model = mlp()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ModelError, match=r"opset \d+ is newer than the installed onnx"):
        load_model(_write(tmp_path / "new.onnx", model))


def test_no_default_opset() -> None:
    model = mlp()
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ModelError, match="no opset import for the default ONNX domain"):
        opset_version(model)
    assert opset_version(mlp()) == 17


def test_input_specs_exclude_initializers_and_keep_dims() -> None:
    model = two_input_two_output()
    # An old-exporter habit: a weight listed as a graph input.
    model.graph.input.append(helper.make_tensor_value_info("w1", TensorProto.FLOAT, [8, 8]))
    model.graph.input[1].type.tensor_type.shape.dim[1].Clear()  # unknown dim
    specs = input_specs(model)
    assert [s.name for s in specs] == ["input", "input2"]
    assert specs[0].shape == ("N", 8)
    assert specs[1].shape == ("N", None)
    assert specs[0].dtype == np.float32
    assert not specs[0].is_static
    outs = output_specs(model)
    assert [(o.name, o.shape) for o in outs] == [("sum_out", ("N", 8)), ("prod_out", ("N", 8))]


def test_input_spec_errors() -> None:
    model = mlp()
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    model.graph.input.append(seq)
    with pytest.raises(ModelError, match="input 'seq': is not a tensor"):
        input_specs(model)
    model = mlp()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UNDEFINED
    with pytest.raises(ModelError, match="input 'input': has no element type"):
        input_specs(model)


def test_save_model_atomic_and_checked(tmp_path: Path) -> None:
    model = mlp()
    out = save_model(model, tmp_path / "out.onnx")
    assert out == tmp_path / "out.onnx"
    assert load_model(out).SerializeToString() == model.SerializeToString()
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]

    broken = mlp()
    broken.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(ModelError, match=r"model '.*bad\.onnx': not saved, it fails the ONNX checker"):
        save_model(broken, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]


def test_save_model_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The > 2 GB path, exercised on a small model by lowering the threshold.
    monkeypatch.setattr(load_mod, "EXTERNAL_DATA_THRESHOLD", 0)
    model = conv_bn_relu_cnn()
    path = save_model(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").is_file()
    assert os.path.getsize(path) < model.ByteSize()
    loaded = load_model(path)
    feed = random_feed(model)
    np.testing.assert_array_equal(run_model(loaded, feed)["logits"], run_model(model, feed)["logits"])
    onnx.checker.check_model(str(path))


def test_make_model_helper_validates() -> None:
    bad = helper.make_node("Relu", ["nope"], ["y"])
    with pytest.raises(onnx.checker.ValidationError):
        make_model([bad], [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [])
