"""Legacy-calibrator caches (TensorRT's IInt8LegacyCalibrator): the header-less form whose first
line is the calibrator's parameters as hex doubles, and ``TRT-...-LegacyCalibration`` with its
quantile line. Scales are read; ``quant inspect`` shows the quantile and cutoff and the note."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.cache.detect import detect_format, parse_cache_bytes
from quant.cache.inspect import cache_table, describe_cache, render_cache_description
from quant.cache.io import read_cache
from quant.cache.trt import LEGACY_NOTE, is_legacy_header, legacy_parameters, parse_trt_cache
from quant.errors import CacheError
from tests.models import mlp

# the first line of a real legacy cache from a public repository
REAL_FIRST_LINE = "0 3ff0000000000000 3fefff2e48e8a71e"


def _hex_double(x: float) -> str:
    return struct.pack(">d", x).hex()


def test_parameter_line_decodes_hex_doubles() -> None:
    params = legacy_parameters(REAL_FIRST_LINE)
    assert params is not None
    assert params["fields"] == ["0", "3ff0000000000000", "3fefff2e48e8a71e"]
    assert params["quantile"] == 1.0
    assert params["regression_cutoff"] == struct.unpack(">d", bytes.fromhex("3fefff2e48e8a71e"))[0]
    assert params["regression_cutoff"] == pytest.approx(0.9999, abs=1e-12)
    assert _hex_double(0.9999) == "3fefff2e48e8a71e"
    assert is_legacy_header(REAL_FIRST_LINE)
    assert is_legacy_header("1 0.5 2048")  # decimal numbers, as before
    assert not is_legacy_header("conv: 3f800000")
    assert not is_legacy_header("0 3ff000000000000g 1")
    assert legacy_parameters("a b") is None


def test_headerless_legacy_cache_reads_scales() -> None:
    text = f"{REAL_FIRST_LINE}\ninput: 3c010a14\nconv1/Relu:0: 3d237c3a\nzero: 0\n"
    assert detect_format(text.encode()) == "tensorrt-legacy"
    p = parse_cache_bytes(text.encode(), source="legacy.cache")
    assert p.format == "tensorrt-legacy" and p.is_legacy and p.algorithm == "LegacyCalibration"
    assert p.amax["input"] == pytest.approx(struct.unpack(">f", bytes.fromhex("3c010a14"))[0] * 127.0)
    assert list(p.amax) == ["input", "conv1/Relu:0"] and p.zero_scale_names == ("zero",)
    assert p.legacy is not None and p.legacy["quantile"] == 1.0


def test_trt_header_legacy_cache_with_quantile_line() -> None:
    text = f"TRT-8601-LegacyCalibration\n{REAL_FIRST_LINE}\ninput: 3c010a14\n"
    p = parse_trt_cache(text, source="c")
    assert (p.format, p.trt_version, p.algorithm) == ("tensorrt", 8601, "LegacyCalibration")
    assert p.is_legacy and p.legacy is not None and p.legacy["regression_cutoff"] == pytest.approx(0.9999)
    assert list(p.amax) == ["input"]
    # a one-number quantile line
    one = parse_trt_cache(f"TRT-8601-LegacyCalibration\n{_hex_double(0.999)}\ninput: 3c010a14\n", source="c")
    assert one.legacy is not None and one.legacy["quantile"] == pytest.approx(0.999)
    # without a parameter line the entries start on line 2, as in any TRT cache
    plain = parse_trt_cache("TRT-8601-LegacyCalibration\ninput: 3c010a14\n", source="c")
    assert plain.legacy is None and list(plain.amax) == ["input"]
    # the quantile line only follows a LegacyCalibration header
    with pytest.raises(CacheError, match="line 2: expected '<tensor name>: <hex scale>'"):
        parse_trt_cache(f"TRT-8601-EntropyCalibration2\n{REAL_FIRST_LINE}\ninput: 3c010a14\n", source="c")


def test_inspect_shows_quantile_cutoff_and_note(tmp_path: Path) -> None:
    path = tmp_path / "legacy.cache"
    path.write_text(f"{REAL_FIRST_LINE}\ninput: 3c010a14\n")
    loaded = read_cache(path)
    desc = describe_cache(loaded)
    assert desc["legacy"]["quantile"] == 1.0 and desc["legacy"]["note"] == LEGACY_NOTE
    text = render_cache_description(desc, cache_table(loaded))
    assert "quantile   1\n" in text and "cutoff     0.9999\n" in text
    assert "IInt8LegacyCalibrator" in text and "TensorRT 8.6+" in text
    assert "input" in text


def test_inspect_and_build_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quant.cli.main import main

    model = tmp_path / "mlp.onnx"
    onnx.save(mlp(), model)
    m = onnx.load(model)
    names = [n.output[0] for n in m.graph.node][:3]
    lines = [REAL_FIRST_LINE, "input: 3c010a14", *(f"{n}: 3d237c3a" for n in names)]
    cache = tmp_path / "legacy.cache"
    cache.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(cache)])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    assert "tensorrt-legacy" in out and "cutoff     0.9999" in out
    with pytest.raises(SystemExit) as exc:
        main(["build", str(model), "--cache", str(cache), "-o", str(tmp_path / "m.int8.onnx")])
    assert exc.value.code in (0, None), capsys.readouterr().err
    q = onnx.load(tmp_path / "m.int8.onnx")
    scales = {i.name: i for i in q.graph.initializer if i.name.startswith("input_scale")}
    assert scales, "the legacy cache's input range made a Q/DQ pair"
    assert float(np.asarray(onnx.numpy_helper.to_array(next(iter(scales.values()))))) == pytest.approx(
        struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    )
