"""ONNX Runtime's calibration tables, written by onnxruntime's own write_calibration_table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quant.cache.detect import detect_format, parse_cache_bytes
from quant.cache.ort import parse_ort_json, parse_ort_text, read_flatbuffers_pairs
from quant.errors import CacheError

ort_quant = pytest.importorskip("onnxruntime.quantization")


def _write_ort(tmp_path: Path, ranges: dict[str, tuple[float, float]], *, tensors_data: bool = True) -> Path:
    """Write the three tables with onnxruntime's write_calibration_table; return their folder."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.quant_utils import write_calibration_table

    data = {
        name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
        for name, (lo, hi) in ranges.items()
    }
    table = TensorsData(CalibrationMethod.MinMax, data) if tensors_data else data
    write_calibration_table(table, dir=str(tmp_path))
    return tmp_path


def _read(path: Path):
    return parse_cache_bytes(path.read_bytes(), source=str(path))


RANGES = {
    "input": (-2.5, 2.5),
    "conv1/Relu:0": (0.0, 6.0),  # ReLU output: asymmetric, highest == amax
    "block 1/add": (-3.25, 1.5),  # asymmetric, |lowest| > highest
    "onnx::MatMul_398": (-0.125, 0.125),
}
F32 = {k: (float(np.float32(lo)), float(np.float32(hi))) for k, (lo, hi) in RANGES.items()}


@pytest.mark.parametrize("tensors_data", [True, False])
def test_ort_json_gives_true_amax(tmp_path: Path, tensors_data: bool) -> None:
    folder = _write_ort(tmp_path, RANGES, tensors_data=tensors_data)
    p = _read(folder / "calibration.json")
    assert p.format == "onnxruntime-json"
    assert p.trt_version is None and p.algorithm is None
    assert p.amax == {k: max(abs(lo), abs(hi)) for k, (lo, hi) in F32.items()}
    assert p.amax["block 1/add"] == 3.25
    assert len(p.warnings) == 1 and "2 of 4 tensors have asymmetric ranges" in p.warnings[0]


def test_ort_text_and_flatbuffers_hold_max_of_highest_lowest(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, RANGES)
    expected = {k: max(lo, hi) for k, (lo, hi) in F32.items()}
    text = _read(folder / "calibration.cache")
    assert text.format == "onnxruntime-text"
    assert list(text.amax) == sorted(RANGES)  # sorted, as ORT writes it
    assert text.amax == expected
    assert text.amax["block 1/add"] == 1.5  # not the amax 3.25: the negative side is lost
    fb = _read(folder / "calibration.flatbuffers")
    assert fb.format == "onnxruntime-flatbuffers"
    assert list(fb.amax) == sorted(RANGES, reverse=True)  # ORT prepends in sorted order
    assert fb.amax == expected


def test_symmetric_tables_agree(tmp_path: Path) -> None:
    ranges = {"a": (-1.5, 1.5), "b:0": (-0.1, 0.1), "c d": (-300.0, 300.0)}
    folder = _write_ort(tmp_path, ranges)
    parsed = [_read(folder / f"calibration.{ext}") for ext in ("json", "cache", "flatbuffers")]
    assert parsed[0].amax == parsed[1].amax == parsed[2].amax
    assert parsed[0].warnings == ()


def test_flatbuffers_reader_matches_generated_classes(tmp_path: Path) -> None:
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    folder = _write_ort(tmp_path, RANGES)
    buf = (folder / "calibration.flatbuffers").read_bytes()
    table = TrtTable.GetRootAs(buf, 0)
    theirs = [
        (table.Dict(i).Key().decode(), table.Dict(i).Value().decode()) for i in range(table.DictLength())
    ]
    assert read_flatbuffers_pairs(buf) == theirs


def test_zero_range_is_no_range(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, {"dead": (0.0, 0.0), "live": (-1.0, 1.0)})
    for ext in ("json", "cache", "flatbuffers"):
        p = _read(folder / f"calibration.{ext}")
        assert p.amax == {"live": 1.0}
        assert p.zero_scale_names == ("dead",)


def test_all_negative_tensor(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, {"neg": (-4.0, -1.0)})
    assert _read(folder / "calibration.json").amax == {"neg": 4.0}
    for ext in ("cache", "flatbuffers"):
        with pytest.raises(
            CacheError, match=r"range of tensor 'neg' is negative \(-1\).*use calibration.json"
        ):
            _read(folder / f"calibration.{ext}")


def test_empty_table(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, {})
    for ext in ("json", "flatbuffers"):
        p = _read(folder / f"calibration.{ext}")
        assert p.amax == {} and "no tensor entries" in p.warnings[0]
    with pytest.raises(CacheError, match="is empty"):  # ORT writes an empty calibration.cache
        _read(folder / "calibration.cache")


def test_real_ort_calibrator(tmp_path: Path) -> None:
    """A real MinMax calibration by ORT (symmetric, as its TensorRT flow wants): all three agree."""
    import onnx
    from onnx import TensorProto, helper
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator
    from onnxruntime.quantization.quant_utils import write_calibration_table

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], (np.eye(4, dtype=np.float32) * 2).ravel().tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t:1"]), helper.make_node("Relu", ["t:1"], ["y"])],
        "g",
        [x],
        [y],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, tmp_path / "m.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.it = iter([{"x": rng.normal(size=(1, 4)).astype(np.float32)} for _ in range(3)])

        def get_next(self):
            return next(self.it, None)

    calibrator = create_calibrator(
        tmp_path / "m.onnx",
        ["MatMul", "Relu"],
        augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"symmetric": True},
    )
    calibrator.collect_data(Reader())
    write_calibration_table(calibrator.compute_data(), dir=str(tmp_path))
    parsed = [_read(tmp_path / f"calibration.{ext}") for ext in ("json", "cache", "flatbuffers")]
    assert set(parsed[0].amax) == {"x", "t:1", "y"}
    assert parsed[0].amax == parsed[1].amax == parsed[2].amax
    assert parsed[0].amax["t:1"] == pytest.approx(2 * parsed[0].amax["x"])


# --------------------------------------------------------------------------------------------
# Other JSON shapes and errors
# --------------------------------------------------------------------------------------------


def test_old_style_json_pairs_and_numbers() -> None:
    p = parse_ort_json(json.dumps({"a": [-1.0, 2.0], "b": 0.5, "c": [0.0, 0.0]}), source="old.json")
    assert p.amax == {"a": 2.0, "b": 0.5}
    assert p.zero_scale_names == ("c",)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"a": {"lowest": 1.0, ', r"cache 'c.json' is not valid JSON \(line 1 column"),
        ('{"a": [-1, 1], "a": [-2, 2]}', r"key 'a' appears twice"),
        ("[1, 2]", r"top level is a list"),
        ('{"a": {"avg": 1.0, "std": 2.0}}', r"tensor 'a' has no 'lowest'/'highest' range"),
        ('{"a": {"lowest": "x", "highest": 1.0}}', r"'lowest' of tensor 'a' is \"x\", not a number"),
        ('{"a": {"lowest": -1.0, "highest": NaN}}', r"range of tensor 'a' is nan"),
        ('{"a": "big"}', r"entry of tensor 'a' is \"big\""),
        ('{"a": -2.0}', r"range of tensor 'a' is negative"),
        ('{"CLS": "TensorsData", "calibration_method": 0}', r"TensorsData without a 'data' object"),
        ('{"schema": "quant.calibration-sidecar", "schema_version": 1}', r"is quant's sidecar, not a cache"),
    ],
)
def test_json_errors(text: str, match: str) -> None:
    with pytest.raises(CacheError, match=match):
        parse_ort_json(text, source="c.json")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a 1.0\nb\n", r"line 2: expected '<tensor name> <decimal range>'"),
        ("a 1.0\nb", r"line 2: last line 'b' has no newline.*truncated"),
        ("a 1.0\na 2.0\n", r"line 2: tensor 'a' appears twice \(first line 1\)"),
        ("a nan\n", r"line 1: range of tensor 'a' is nan"),
        ("a -inf\n", r"line 1: range of tensor 'a' is -inf"),
        ("a 1.0\nb\x01 2.0\n", r"line 2: contains binary data"),
        ("\n \n", r"is empty"),
    ],
)
def test_text_errors(text: str, match: str) -> None:
    with pytest.raises(CacheError, match=match):
        parse_ort_text(text, source="calibration.cache")


def test_text_without_final_newline_that_parses() -> None:
    p = parse_ort_text("a 1.0\r\nb c 2.5", source="calibration.cache")
    assert p.amax == {"a": 1.0, "b c": 2.5}


def test_flatbuffers_bad_value(tmp_path: Path) -> None:
    import flatbuffers
    from onnxruntime.quantization.CalTableFlatBuffers import KeyValue, TrtTable

    builder = flatbuffers.Builder(64)
    key, value = builder.CreateString("t"), builder.CreateString("wide")
    KeyValue.KeyValueStart(builder)
    KeyValue.KeyValueAddKey(builder, key)
    KeyValue.KeyValueAddValue(builder, value)
    kv = KeyValue.KeyValueEnd(builder)
    TrtTable.TrtTableStartDictVector(builder, 1)
    builder.PrependUOffsetTRelative(kv)
    vec = builder.EndVector()
    TrtTable.TrtTableStart(builder)
    TrtTable.TrtTableAddDict(builder, vec)
    builder.Finish(TrtTable.TrtTableEnd(builder))
    with pytest.raises(CacheError, match=r"entry 0: value 'wide' of tensor 't' is not a decimal"):
        parse_cache_bytes(bytes(builder.Output()), source="calibration.flatbuffers")


# --------------------------------------------------------------------------------------------
# Detection and binary garbage
# --------------------------------------------------------------------------------------------


def test_detect_format(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, RANGES)
    assert detect_format((folder / "calibration.json").read_bytes()) == "onnxruntime-json"
    assert detect_format((folder / "calibration.cache").read_bytes()) == "onnxruntime-text"
    assert detect_format((folder / "calibration.flatbuffers").read_bytes()) == "onnxruntime-flatbuffers"
    assert detect_format(b"TRT-8600-EntropyCalibration2\na: 1\n") == "tensorrt"
    assert detect_format(b"1 2 3\na: 1\n") == "tensorrt-legacy"
    assert detect_format(b"a: 3f800000\n") == "tensorrt"  # header missing, still TensorRT-shaped
    assert detect_format(b" \n") == "empty"
    assert detect_format(bytes(range(256)) * 4) == "binary"
    assert detect_format(b"hello world!\n") == "unknown"


def test_truncated_flatbuffers_is_garbage(tmp_path: Path) -> None:
    folder = _write_ort(tmp_path, RANGES)
    data = (folder / "calibration.flatbuffers").read_bytes()
    with pytest.raises(CacheError, match=r"is not a calibration cache: binary data at byte"):
        parse_cache_bytes(data[: len(data) // 2], source="cut.flatbuffers")


def test_random_bytes_are_garbage() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        data = rng.integers(0, 256, size=int(rng.integers(1, 300)), dtype=np.uint8).tobytes()
        if not data.strip():
            continue
        with pytest.raises(CacheError, match="cache 'junk'"):
            parse_cache_bytes(data, source="junk")


def test_binary_in_tensorrt_cache_names_line() -> None:
    data = b"TRT-8600-EntropyCalibration2\na: 3f800000\nb\xff\xfe: 1\n"
    with pytest.raises(CacheError, match=r"cache 'x.cache' line 3: contains binary data \(byte 42\)"):
        parse_cache_bytes(data, source="x.cache")


def test_unknown_text_reports_missing_header() -> None:
    with pytest.raises(CacheError, match=r"line 1: header missing"):
        parse_cache_bytes(b"hello world!\n", source="x.cache")


def test_headerless_tensorrt_cache_is_not_taken_for_ort_text() -> None:
    # '191: 0' would also read as "<name> <decimal>"; the TensorRT shape wins and the header is missing
    with pytest.raises(CacheError, match=r"cache 'h.cache' line 1: header missing.*'191: 0'"):
        parse_cache_bytes(b"191: 0\nconv: 3f800000\n", source="h.cache")
