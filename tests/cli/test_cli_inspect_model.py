"""quant inspect MODEL.onnx through the CLI: per-layer precision of a built Q/DQ model, orphan Q/DQ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from quant.cli.main import cli, main
from tests.models import make_model, random_feed, residual_block


def invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def rows(text: str) -> dict[str, tuple[str, str]]:
    """layer -> (op, precision) from the text table."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines()[2:]:
        if not line.strip():
            break
        name, op, precision = line.split()
        out[name] = (op, precision)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """residual_block calibrated and built by the CLI with conv2 kept in float."""
    tmp = tmp_path_factory.mktemp("inspect_model")
    model = residual_block()
    path = tmp / "res.onnx"
    onnx.save(model, str(path))
    data = tmp / "data.npz"
    np.savez(data, input=random_feed(model, batch=16, seed=3)["input"])
    cache = tmp / "res.cache"
    code, _out, err = invoke(["calibrate", str(path), "--data", str(data), "--cache", str(cache), "--method", "minmax"])
    assert code == 0, err
    out = tmp / "res.int8.onnx"
    code, _out, err = invoke(["build", str(path), "--cache", str(cache), "--exclude", "conv2", "-o", str(out)])
    assert code == 0, err
    return out


def test_inspect_built_model_text(built: Path) -> None:
    code, out, err = invoke(["inspect", str(built)])
    assert code == 0, err
    table = rows(out)
    assert table["stem"] == ("Conv", "int8")
    assert table["conv1"] == ("Conv", "int8")
    assert table["conv2"] == ("Conv", "float")  # excluded at build time
    assert table["residual_add"] == ("Add", "int8")
    assert all(p == "float" for op, p in table.values() if op == "Relu")
    assert "QuantizeLinear" not in out.split("\n\n")[0]  # Q/DQ nodes are not layers
    assert f"{len(table)} layers: int8 3, float {len(table) - 3}" in out
    assert "no orphan Q/DQ nodes" in out


def test_inspect_built_model_json_and_explicit_kind(built: Path, tmp_path: Path) -> None:
    code, out, err = invoke(["inspect", str(built), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["counts"]["int8"] == 3 and doc["orphans"] == []
    assert {layer["name"] for layer in doc["layers"] if layer["precision"] == "int8"} == {"stem", "conv1", "residual_add"}
    other = tmp_path / "model.bin"
    other.write_bytes(built.read_bytes())
    code, out2, err = invoke(["inspect", "model", str(other), "--json"])
    assert code == 0, err
    assert json.loads(out2) == doc


def _orphan_model() -> onnx.ModelProto:
    """input -> Q -> DQ -> Relu -> Conv (float weight): the DQ feeds a Relu, not an INT8 layer."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="input_Q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="input_DQ"),
        helper.make_node("Relu", ["dq"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w"], ["output"], name="conv", pads=[1, 1, 1, 1]),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, 8, 8])],
        inits,
    )


def test_inspect_reports_orphan_qdq(tmp_path: Path) -> None:
    path = tmp_path / "orphan.onnx"
    onnx.save(_orphan_model(), str(path))
    code, out, err = invoke(["inspect", str(path)])
    assert code == 0, err
    assert rows(out) == {"relu": ("Relu", "float"), "conv": ("Conv", "float")}
    assert "1 orphan Q/DQ nodes" in out
    assert "input_DQ (DequantizeLinear) on 'dq': consumers not running in INT8: 'relu' (Relu)" in out
    code, out, err = invoke(["inspect", str(path), "--json"])
    orphans = json.loads(out)["orphans"]
    assert [(o["name"], o["tensor"]) for o in orphans] == [("input_DQ", "dq")]


def test_inspect_float_model_has_no_int8_layers(tmp_path: Path) -> None:
    path = tmp_path / "float.onnx"
    onnx.save(residual_block(), str(path))
    code, out, err = invoke(["inspect", str(path), "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["counts"]["int8"] == 0 and doc["counts"]["float"] == len(doc["layers"]) > 0


def test_inspect_model_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(args: list[str]) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exc:
            main(args)
        _out, err = capsys.readouterr()
        return int(exc.value.code or 0), err

    code, err = run(["inspect", str(tmp_path / "missing.onnx")])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "missing.onnx" in err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model at all\xff" * 10)
    code, err = run(["inspect", str(garbage)])
    assert code == 1 and len(err.strip().splitlines()) == 1 and "garbage.onnx" in err
    assert "Traceback" not in err
