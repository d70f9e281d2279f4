"""quant.cache.trt: versions, scales, the writer and the strict parser of TensorRT's text cache."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quant.cache.trt import (
    ALGORITHMS,
    DEFAULT_TRT_VERSION,
    ParsedCache,
    algorithm_for_method,
    amax_from_scale,
    decode_trt_version,
    encode_trt_version,
    format_trt_cache,
    hex_to_scale,
    parse_trt_cache,
    scale_for_amax,
    scale_to_hex,
)
from quant.errors import CacheError, UsageError


def f32_bits(x: float) -> int:
    return int.from_bytes(struct.pack(">f", x), "big")


# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("8.6", 8600),
        ("8.6.1", 8601),
        ("8.6.1.6", 8601),
        ("7.2.3", 7203),
        ("10.3", 100300),
        ("10.13.1", 101301),
        ("10.13", 101300),
        ("100300", 100300),
        ("8600", 8600),
        (" 10.3 ", 100300),
        ("10", 100000),
        ("8", 8000),
    ],
)
def test_encode_trt_version(text: str, number: int) -> None:
    assert encode_trt_version(text) == number


@pytest.mark.parametrize("text", ["abc", "", "8.10", "10.3.100", "123", "10.x", "54321", "8.6-ea"])
def test_encode_trt_version_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--trt-version"):
        encode_trt_version(text)


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (100300, "10.3.0"),
        (8600, "8.6.0"),
        (7000, "7.0.0"),
        (101301, "10.13.1"),
        (8203, "8.2.3"),
        (100900, "10.9.0"),
    ],
)
def test_decode_trt_version(number: int, text: str) -> None:
    assert decode_trt_version(number) == text
    assert encode_trt_version(text) == number


@pytest.mark.parametrize("number", [12345, 999, 0, -8600])
def test_decode_trt_version_rejects(number: int) -> None:
    with pytest.raises(UsageError, match=str(number)):
        decode_trt_version(number)


def test_default_version_is_tensorrt_10_13() -> None:
    assert DEFAULT_TRT_VERSION == encode_trt_version("10.13") == 101300
    assert decode_trt_version(DEFAULT_TRT_VERSION) == "10.13.0"


@given(st.integers(7, 9), st.integers(0, 9), st.integers(0, 99))
def test_version_round_trip_trt8(major: int, minor: int, patch: int) -> None:
    n = encode_trt_version(f"{major}.{minor}.{patch}")
    assert decode_trt_version(n) == f"{major}.{minor}.{patch}"


@given(st.integers(10, 20), st.integers(0, 99), st.integers(0, 99))
def test_version_round_trip_trt10(major: int, minor: int, patch: int) -> None:
    n = encode_trt_version(f"{major}.{minor}.{patch}")
    assert decode_trt_version(n) == f"{major}.{minor}.{patch}"


# --------------------------------------------------------------------------------------------
# Scales and algorithms
# --------------------------------------------------------------------------------------------


def test_scale_hex_examples() -> None:
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(0.0) == "00000000"
    assert scale_to_hex(2.5) == "40200000"
    # the softmax example of REFERENCE.md
    s = hex_to_scale("3c010a14")
    assert s == pytest.approx(0.0078759, rel=1e-5)
    assert amax_from_scale(s) == pytest.approx(1.0002, rel=1e-4)
    assert scale_to_hex(s) == "3c010a14"


def test_hex_to_scale_short_and_upper() -> None:
    assert hex_to_scale("0") == 0.0
    assert hex_to_scale("3F800000") == 1.0
    assert hex_to_scale("1") == struct.unpack(">f", b"\x00\x00\x00\x01")[0]  # smallest subnormal
    assert scale_to_hex(hex_to_scale("a14")) == "00000a14"


@pytest.mark.parametrize("text", ["xyz", "123456789", "", "0x3f80", "-1"])
def test_hex_to_scale_rejects(text: str) -> None:
    with pytest.raises(CacheError, match="float32 bit pattern"):
        hex_to_scale(text)


@pytest.mark.parametrize("scale", [-1.0, math.nan, math.inf, 1e39])
def test_scale_to_hex_rejects(scale: float) -> None:
    with pytest.raises(CacheError, match="cannot be written"):
        scale_to_hex(scale)


def test_amax_from_scale() -> None:
    assert amax_from_scale(0.0) is None
    assert amax_from_scale(0.5) == 63.5


@pytest.mark.parametrize(
    ("method", "algorithm"),
    [
        ("entropy", "EntropyCalibration2"),
        ("minmax", "MinMaxCalibration"),
        ("percentile", "EntropyCalibration2"),
        ("mse", "EntropyCalibration2"),
    ],
)
def test_algorithm_for_method(method: str, algorithm: str) -> None:
    assert algorithm_for_method(method) == algorithm


def test_algorithm_for_unknown_method() -> None:
    with pytest.raises(UsageError, match="'kl'.*--algorithm"):
        algorithm_for_method("kl")


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


def test_format_trt_cache_layout() -> None:
    text = format_trt_cache(
        {"input": 2.0, "skip_none": None, "conv1:0": 127.0, "skip_zero": 0.0, "prob": 1.0},
        trt_version=8600,
        algorithm="EntropyCalibration2",
    )
    assert text == "TRT-8600-EntropyCalibration2\ninput: 3c810204\nconv1:0: 3f800000\nprob: 3c010204\n"


def test_format_rounds_scale_once_to_float32() -> None:
    amax = 3.3
    text = format_trt_cache({"t": amax}, trt_version=101300, algorithm="MinMaxCalibration")
    hex_ = text.splitlines()[1].split(": ")[1]
    assert int(hex_, 16) == f32_bits(amax / 127)


def test_format_omits_underflowing_scale(caplog: pytest.LogCaptureFixture) -> None:
    text = format_trt_cache({"tiny": 1e-47, "ok": 1.0}, trt_version=8600, algorithm="EntropyCalibration2")
    assert "tiny" not in text and "ok: " in text
    assert "too small" in caplog.text


def test_format_header_only() -> None:
    assert (
        format_trt_cache({}, trt_version=100300, algorithm="MinMaxCalibration")
        == "TRT-100300-MinMaxCalibration\n"
    )


@pytest.mark.parametrize(
    ("amax", "match"),
    [
        ({"t": math.nan}, "tensor 't' has amax nan"),
        ({"t": -1.0}, "tensor 't' has amax -1.0"),
        ({"t": math.inf}, "tensor 't' has amax inf"),
        ({"t": 1e300}, "does not fit in float32"),
        ({"a\nb": 1.0}, "line break"),
        ({"a\x00b": 1.0}, "control character"),
        ({"": 1.0}, "non-empty"),
    ],
)
def test_format_rejects(amax: dict[str, float], match: str) -> None:
    with pytest.raises(CacheError, match=match):
        format_trt_cache(amax, trt_version=8600, algorithm="EntropyCalibration2")


def test_format_rejects_bad_header_inputs() -> None:
    with pytest.raises(UsageError, match="--algorithm 'Entropy3'"):
        format_trt_cache({}, trt_version=8600, algorithm="Entropy3")
    with pytest.raises(UsageError, match="12345"):
        format_trt_cache({}, trt_version=12345, algorithm="EntropyCalibration2")


# --------------------------------------------------------------------------------------------
# Round trip (bit-exact)
# --------------------------------------------------------------------------------------------

positive_f32 = st.floats(
    min_value=0.0,
    max_value=3.4028234663852886e38,
    width=32,
    allow_nan=False,
    allow_infinity=False,
    exclude_min=True,
)
# Tensor names: any text without line breaks / control characters / surrogates, with colons,
# spaces and unicode encouraged.
names = st.lists(
    st.one_of(
        st.sampled_from([":", " ", ": ", "/", "(", ")", "*", "[", "]", "\t", "é", "張", "🙂", "0", "ff"]),
        st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=8,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, positive_f32, min_size=1, max_size=8), st.sampled_from(ALGORITHMS))
def test_round_trip_is_bit_exact(scales: dict[str, float], algorithm: str) -> None:
    amax = {n: s * 127.0 for n, s in scales.items()}
    text = format_trt_cache(amax, trt_version=101300, algorithm=algorithm)
    parsed = parse_trt_cache(text, source="rt.cache")
    assert list(parsed.amax) == list(scales)
    for n, s in scales.items():
        assert f32_bits(parsed.amax[n] / 127.0) == f32_bits(s)
        assert parsed.amax[n] == amax[n]
    assert parsed.algorithm == algorithm and parsed.trt_version == 101300
    assert format_trt_cache(parsed.amax, trt_version=101300, algorithm=algorithm) == text


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_any_amax_round_trips_to_its_float32_scale(amax: float) -> None:
    text = format_trt_cache({"t": amax}, trt_version=8600, algorithm="EntropyCalibration2")
    parsed = parse_trt_cache(text, source="x")
    assert scale_for_amax(parsed.amax["t"]) == scale_for_amax(amax)
    assert f32_bits(parsed.amax["t"] / 127.0) == f32_bits(amax / 127.0)


# --------------------------------------------------------------------------------------------
# Real-world files
# --------------------------------------------------------------------------------------------

REAL_WORLD = (
    "TRT-8601-EntropyCalibration2\n"
    "images: 3b66eddc\n"
    "191: 3d68d027\n"
    "onnx::MatMul_398_output: 3c9bd61a\n"
    "(Unnamed Layer* 37) [Constant]_output: 3c010a14\n"
    "conv1/Relu:0: a14\n"
    "model/block 1: out: 3f800000\n"
    "unused: 0\n"
    "prob: 3C010A14\n"
)


def test_parse_real_world_quirks() -> None:
    p = parse_trt_cache(REAL_WORLD, source="yolo.cache")
    assert p.format == "tensorrt"
    assert p.trt_version == 8601 and p.algorithm == "EntropyCalibration2"
    assert p.header == "TRT-8601-EntropyCalibration2"
    assert list(p.amax) == [
        "images",
        "191",
        "onnx::MatMul_398_output",
        "(Unnamed Layer* 37) [Constant]_output",
        "conv1/Relu:0",
        "model/block 1: out",
        "prob",
    ]
    assert p.zero_scale_names == ("unused",)
    assert p.amax["model/block 1: out"] == 127.0
    assert p.amax["prob"] == pytest.approx(1.0002, rel=1e-4)
    assert f32_bits(p.amax["conv1/Relu:0"] / 127) == 0xA14
    assert p.names[-1] == "unused"
    assert p.warnings == ()


@pytest.mark.parametrize(
    "header", ["TRT-100300-MinMaxCalibration", "TRT-7000-EntropyCalibration", "TRT-8203-LegacyCalibration"]
)
def test_parse_headers(header: str) -> None:
    p = parse_trt_cache(header + "\nx: 3f800000\n", source="c")
    version, algorithm = header.split("-")[1:]
    assert (p.trt_version, p.algorithm) == (int(version), algorithm)


def test_parse_legacy_header() -> None:
    p = parse_trt_cache("1 0.5 2048\nconv: 3f800000\n", source="legacy.cache")
    assert p.format == "tensorrt-legacy"
    assert p.algorithm == "LegacyCalibration" and p.trt_version is None
    assert p.header == "1 0.5 2048"
    assert p.amax == {"conv": 127.0}


def test_parse_tolerated_oddities() -> None:
    text = "\ufeffTRT-8600-EntropyCalibration2\r\na: 3f800000\r\n\r\nb: 80000000\r\nc: 40000000"
    p = parse_trt_cache(text, source="win.cache")
    assert p.amax == {"a": 127.0, "c": 254.0}
    assert p.zero_scale_names == ("b",)  # -0.0 is a zero scale
    assert any("byte-order mark" in w for w in p.warnings)
    assert any("CRLF" in w for w in p.warnings)
    assert any("blank" in w for w in p.warnings)


def test_parse_header_only_warns() -> None:
    p = parse_trt_cache("TRT-8600-EntropyCalibration2\n", source="c")
    assert p.amax == {} and "no tensor entries" in p.warnings[0]


def test_parse_odd_header_version_warns() -> None:
    p = parse_trt_cache("TRT-12345-EntropyCalibration2\nx: 1\n", source="c")
    assert p.trt_version == 12345
    assert any("12345" in w for w in p.warnings)


# --------------------------------------------------------------------------------------------
# Errors: one line naming the file and the line
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"cache 'm.cache' is empty"),
        ("  \n\n", r"cache 'm.cache' is empty"),
        ("conv: 3f800000\n", r"cache 'm.cache' line 1: header missing.*'conv: 3f800000'"),
        ("TRT-8600-Entropy3\nx: 1\n", r"line 1: unknown calibration algorithm 'Entropy3'"),
        ("TRT-86a0-EntropyCalibration2\n", r"line 1: malformed header 'TRT-86a0"),
        ("TRT-8600-EntropyCalibration2\nconv 3f800000\n", r"line 2: expected '<tensor name>: <hex scale>'"),
        (
            "TRT-8600-EntropyCalibration2\na: 1\nconv: 3g800000\n",
            r"line 3: '3g800000' is not a hex float32 scale .* for tensor 'conv'",
        ),
        ("TRT-8600-EntropyCalibration2\nconv: 123456789\n", r"line 2: '123456789' is not a hex"),
        ("TRT-8600-EntropyCalibration2\na: 1\nconv", r"line 3: last line 'conv' has no newline.*truncated"),
        ("TRT-8600-EntropyCalibration2\na: 1\nconv:", r"line 3: last line 'conv:' has no newline.*truncated"),
        (
            "TRT-8600-EntropyCalibration2\na: 1\nb: 2\na: 3\n",
            r"line 4: tensor 'a' appears twice \(first on line 2\)",
        ),
        ("TRT-8600-EntropyCalibration2\nneg: bf800000\n", r"line 2: scale of tensor 'neg' is negative"),
        ("TRT-8600-EntropyCalibration2\nn: 7fc00000\n", r"line 2: scale of tensor 'n' is nan"),
        ("TRT-8600-EntropyCalibration2\ni: 7f800000\n", r"line 2: scale of tensor 'i' is inf"),
        ("TRT-8600-EntropyCalibration2\na: 1\nb\x00\x01: 2\n", r"line 3: contains binary data"),
        ("\x00\x01\x02TRT", r"line 1: contains binary data"),
        ("TRT-8600-EntropyCalibration2\n: 3f800000\n", r"line 2: empty tensor name"),
    ],
)
def test_parse_errors(text: str, match: str) -> None:
    with pytest.raises(CacheError, match=match):
        parse_trt_cache(text, source="m.cache")


def test_parse_error_messages_are_one_line() -> None:
    with pytest.raises(CacheError) as info:
        parse_trt_cache("TRT-8600-EntropyCalibration2\nconv 3f800000\n", source="m.cache")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cache 'm.cache' line 2:")


# --------------------------------------------------------------------------------------------
# ParsedCache value object
# --------------------------------------------------------------------------------------------


def test_parsed_cache_dict_round_trip() -> None:
    p = parse_trt_cache(REAL_WORLD, source="c")
    assert ParsedCache.from_dict(p.to_dict()) == p


def test_parsed_cache_from_bad_dict() -> None:
    with pytest.raises(CacheError, match="malformed"):
        ParsedCache.from_dict({"format": "pickle", "amax": {}})
    with pytest.raises(CacheError, match="malformed"):
        ParsedCache.from_dict({"format": "tensorrt"})


def test_decode_accepts_numpy_integers() -> None:
    import numpy as np

    assert decode_trt_version(np.int64(8600)) == "8.6.0"  # type: ignore[arg-type]
