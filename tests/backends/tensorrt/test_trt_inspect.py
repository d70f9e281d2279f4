"""Parsing TensorRT's engine inspector JSON (samples in data/ written from the documented format)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant.backends.tensorrt.inspect import (
    EngineInspection,
    parse_engine_information,
    precision_of,
    render_engine_inspection,
)
from quant.errors import ModelError


@pytest.mark.parametrize(
    ("desc", "precision"),
    [
        ("Row major linear FP32", "FP32"),
        ("Row major linear FP16 format", "FP16"),
        ("Four wide channel vectorized row major Int8 format", "INT8"),
        ("Thirty-two wide channel vectorized row major Int8 format", "INT8"),
        ("Channel major FP16 format where channel % 8 == 0", "FP16"),
        ("Channel major INT8 format where channel == 4 and column stride % 32 == 0 (kCHW4)", "INT8"),
        ("Row major linear Int32", "INT32"),
        ("Row major linear BOOL", "BOOL"),
        ("Row major linear BFloat16 format", "BF16"),
        ("Row major linear FP8 format", "FP8"),
        ("Row major linear UInt8 format", "UINT8"),
        ("Row major linear Int64 format", "INT64"),
        ("Float Row major linear FP32 format (kLINEAR)", "FP32"),
        ("Half", "FP16"),
        ("Unknown format", "UNKNOWN"),
        ("", "UNKNOWN"),
        (None, "UNKNOWN"),
    ],
)
def test_precision_of(desc: str | None, precision: str) -> None:
    assert precision_of(desc) == precision


def test_detailed_trt10_int8(data_dir: Path) -> None:
    text = (data_dir / "engine_info_trt10_int8.json").read_text()
    info = parse_engine_information(text, source="m.engine")
    assert info.detailed and info.num_profiles == 1
    assert len(info.layers) == 8
    assert info.io_tensors == ("input", "logits")
    names = [layer.name for layer in info.layers]
    assert names[1] == "conv1 + relu1"
    conv = info.layers[1]
    assert conv.type == "Convolution" and conv.kernel == "CaskConvolution" and conv.precision == "INT8"
    assert conv.tactic is not None and conv.tactic.startswith("sm80_xmma_fprop_implicit_gemm_interleaved_i8i8")
    assert conv.origin == "[ONNX Layer: conv1]+[ONNX Layer: relu1]"
    assert conv.inputs[0].shape == (8, 3, 16, 16) and conv.outputs[0].precision == "INT8"
    # Reformat layers: counted apart; the first reads FP32 and writes INT8.
    assert info.reformat_count == 2
    assert info.layers[0].is_reformat and info.layers[0].precision == "FP32"
    assert info.layers[0].tactic == "0x0000000000000000"  # no TacticName: the value is kept
    # Precisions by first input: conv1, pool1, conv2 INT8; gap FP16; fc FP32; NoOp not counted.
    assert info.precision_counts == {"INT8": 3, "FP16": 1, "FP32": 1}
    assert list(info.precision_counts) == ["INT8", "FP16", "FP32"]


def test_names_only(data_dir: Path) -> None:
    info = parse_engine_information((data_dir / "engine_info_names_only.json").read_text(), source="m.engine")
    assert not info.detailed
    assert [layer.name for layer in info.layers][1] == "conv1 + relu1"
    assert all(layer.precision == "UNKNOWN" and layer.type == "?" for layer in info.layers)
    assert info.reformat_count == 1  # recognised by its name
    text = render_engine_inspection(info)
    assert "without ProfilingVerbosity.DETAILED" in text


def test_trt11_schema(data_dir: Path) -> None:
    info = parse_engine_information((data_dir / "engine_info_trt11.json").read_text(), source="m.engine")
    assert info.io_tensors == ("input", "relu1_out")
    assert [layer.name for layer in info.layers] == ["/conv1/input_quantizer/QuantizeLinear", "/conv1/Conv + /relu1/Relu"]
    q, conv = info.layers
    assert q.precision == "FP32" and q.outputs[0].precision == "INT8"
    assert conv.precision == "INT8" and conv.outputs[0].precision == "FP32"
    assert conv.inputs[0].format.startswith("Int8 Channel major INT8 format")


def test_profiles_keep_profile_zero() -> None:
    layer = {"Name": "conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
             "Inputs": [{"Name": "x", "Dimensions": [1, 3], "Format/Datatype": "Row major linear FP32"}], "Outputs": []}
    doc = {
        "Layers": [layer, {**layer, "Name": "conv [profile 1]"}, {**layer, "Name": "conv [profile 2]"}],
        "Bindings": ["x", "y", "x [profile 1]", "y [profile 1]", "x [profile 2]", "y [profile 2]"],
    }
    info = parse_engine_information(json.dumps(doc), source="m.engine")
    assert info.num_profiles == 3
    assert [layer.name for layer in info.layers] == ["conv"]
    assert info.io_tensors == ("x", "y")
    assert "optimization profiles: 3" in render_engine_inspection(info)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "has no 'Layers' list"),
        ('{"Layers": {}}', "has no 'Layers' list"),
        ('{"Layers": [42]}', "layer 0: not an object or a name"),
        ('{"Layers": [{"Name": "x", "Inputs": [7]}]}', "a tensor entry is not an object"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_engine_information(text, source="m.engine")


def test_empty_engine() -> None:
    info = parse_engine_information('{"Layers": []}', source="m.engine")
    assert info.layers == () and not info.detailed and info.precision_counts == {}


def test_render(data_dir: Path) -> None:
    base = parse_engine_information((data_dir / "engine_info_trt10_int8.json").read_text(), source="m.engine")
    info = EngineInspection(
        source=base.source, detailed=True, layers=base.layers, io_tensors=base.io_tensors,
        trt_version="10.3.0.26", gpu="NVIDIA H100 (sm_90)", precision="int8", mode="int8-calibrator",
    )
    text = render_engine_inspection(info, max_layers=4)
    lines = text.splitlines()
    assert lines[0] == "engine m.engine: 8 layers (TensorRT 10.3.0.26, built for NVIDIA H100 (sm_90), int8 (int8-calibrator))"
    assert "layers by precision: INT8 3, FP16 1, FP32 1" in text
    assert "reformat layers: 2" in text
    assert "I/O tensors: input, logits" in text
    header = next(line for line in lines if line.startswith("#"))
    assert header.split() == ["#", "name", "type", "precision", "tactic"]
    assert any(line.startswith("1  conv1 + relu1") and "INT8" in line for line in lines)
    assert lines[-1] == "... and 4 more layers"
    assert all(len(line) < 200 for line in lines)  # long tactic names are shortened


def test_roundtrip(data_dir: Path) -> None:
    info = parse_engine_information((data_dir / "engine_info_trt10_int8.json").read_text(), source="m.engine")
    d = info.to_dict()
    assert d["precision_counts"] == {"INT8": 3, "FP16": 1, "FP32": 1} and d["reformat_layers"] == 2
    assert d["layers"][0]["reformat"] is True
    again = EngineInspection.from_dict(json.loads(json.dumps(d)))
    assert again == info
    with pytest.raises(ModelError, match="malformed"):
        EngineInspection.from_dict({"source": "x"})
