"""Shape profiles and EngineBuildOptions (pure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant.backends.base import TensorSpec
from quant.backends.tensorrt.options import (
    EngineBuildOptions,
    ShapeProfile,
    calibration_shapes,
    parse_shape_spec,
    resolve_profiles,
)
from quant.errors import UsageError

F32 = np.dtype(np.float32)


# --------------------------------------------------------------------------------------------
# --shapes
# --------------------------------------------------------------------------------------------


def test_parse_min_opt_max() -> None:
    p = parse_shape_spec("input:1x3x224x224,8x3x224x224,32x3x224x224")
    assert p == ShapeProfile("input", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224))
    assert p.text == "input:1x3x224x224,8x3x224x224,32x3x224x224"
    assert not p.is_fixed


def test_parse_single_shape_is_fixed() -> None:
    p = parse_shape_spec("input:8x3x224x224")
    assert p.min == p.opt == p.max == (8, 3, 224, 224)
    assert p.is_fixed


def test_parse_name_with_colons_and_spaces() -> None:
    p = parse_shape_spec(" input:0:1x16,4x16,8X16 ")
    assert p.name == "input:0"
    assert p.max == (8, 16)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1x3x224x224", "expected NAME:MIN,OPT,MAX"),
        ("input:", "expected NAME:MIN,OPT,MAX"),
        (":1x3", "expected NAME:MIN,OPT,MAX"),
        ("input:1x3,2x3", "give one shape or three"),
        ("input:1x3,2x3,3x3,4x3", "give one shape or three"),
        ("input:1x-3", "'1x-3' is not a shape"),
        ("input:1xx3", "is not a shape"),
        ("input:1x3x224,8x3x224x224,32x3x224x224", "same number of dimensions"),
        ("input:8x3,1x3,32x3", "min <= opt <= max"),
        ("input:1x3,8x3,4x3", "min <= opt <= max"),
        ("input:0x3", "positive integers"),
    ],
)
def test_parse_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_shape_spec(spec)


def test_shape_profile_roundtrip() -> None:
    p = parse_shape_spec("x:1x4,2x4,4x4")
    assert ShapeProfile.from_dict(p.to_dict()) == p
    with pytest.raises(UsageError, match="malformed"):
        ShapeProfile.from_dict({"name": "x", "min": [1]})


# --------------------------------------------------------------------------------------------
# Profiles against the network inputs
# --------------------------------------------------------------------------------------------

DYN = TensorSpec("input", (None, 3, 224, 224), F32)
STATIC = TensorSpec("mask", (8, 10), F32)


def test_resolve_profiles_keeps_dynamic_inputs_only() -> None:
    prof = parse_shape_spec("input:1x3x224x224,8x3x224x224,32x3x224x224")
    fixed = parse_shape_spec("mask:8x10")
    assert resolve_profiles([DYN, STATIC], [prof, fixed]) == (prof,)


def test_resolve_profiles_dynamic_input_needs_a_profile() -> None:
    with pytest.raises(UsageError) as err:
        resolve_profiles([DYN], [])
    msg = str(err.value)
    assert "input 'input' has a dynamic shape" in msg
    assert "--shapes input:1x3x224x224,8x3x224x224,32x3x224x224" in msg


def test_resolve_profiles_suggestion_for_other_dynamic_dims() -> None:
    spec = TensorSpec("tokens", ("batch", "seq"), np.dtype(np.int64))
    with pytest.raises(UsageError, match=r"--shapes tokens:1x<size>,8x<size>,32x<size>"):
        resolve_profiles([spec], [])


def test_resolve_profiles_errors() -> None:
    with pytest.raises(UsageError, match=r"names input 'img', which the model does not have \(inputs: 'input', 'mask'\)"):
        resolve_profiles([DYN, STATIC], [parse_shape_spec("img:1x3")])
    with pytest.raises(UsageError, match="twice"):
        resolve_profiles([DYN], [parse_shape_spec("input:1x3x224x224"), parse_shape_spec("input:2x3x224x224")])
    with pytest.raises(UsageError, match="has 4 dimensions, the profile has 2"):
        resolve_profiles([DYN], [parse_shape_spec("input:1x3,2x3,4x3")])
    with pytest.raises(UsageError, match="dimension 1 of input 'input' is fixed at 3"):
        resolve_profiles([DYN], [parse_shape_spec("input:1x1x224x224,8x1x224x224,32x1x224x224")])
    with pytest.raises(UsageError, match="dimension 0 of input 'mask' is fixed at 8"):
        resolve_profiles([STATIC], [parse_shape_spec("mask:1x10,8x10,8x10")])


def test_calibration_shapes_use_opt() -> None:
    prof = parse_shape_spec("input:1x3x224x224,8x3x224x224,32x3x224x224")
    assert calibration_shapes([DYN, STATIC], [prof]) == {"input": (8, 3, 224, 224), "mask": (8, 10)}
    with pytest.raises(UsageError, match="dynamic shape and no profile"):
        calibration_shapes([DYN], [])


# --------------------------------------------------------------------------------------------
# EngineBuildOptions
# --------------------------------------------------------------------------------------------


def test_defaults() -> None:
    o = EngineBuildOptions()
    assert o.precision == "int8" and o.allow_fp16 and not o.dynamic_range
    assert o.calibrator is None and o.workspace_mb is None and o.optimization_level is None
    assert o.shapes == () and o.plugins == () and not o.force_cache and not o.strict


def test_roundtrip() -> None:
    o = EngineBuildOptions(
        precision="int8",
        allow_fp16=False,
        calibrator="minmax",
        workspace_mb=2048,
        timing_cache=Path("t.cache"),
        optimization_level=5,
        shapes=(parse_shape_spec("input:1x3,2x3,4x3"),),
        plugins=(Path("libx.so"),),
        force_cache=True,
        strict=True,
        exclude=("Softmax",),
        device=1,
    )
    d = o.to_dict()
    assert d["timing_cache"] == "t.cache" and d["plugins"] == ["libx.so"]
    assert EngineBuildOptions.from_dict(d) == o


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "int4"}, "--precision must be one of fp32, fp16, int8"),
        ({"calibrator": "legacy"}, "--calibrator must be one of entropy2, minmax, entropy"),
        ({"precision": "fp16", "dynamic_range": True}, "--dynamic-range only applies to --precision int8"),
        ({"precision": "fp32", "calibrator": "minmax"}, "--calibrator only applies to --precision int8"),
        ({"precision": "fp16", "force_cache": True}, "--force-cache only applies"),
        ({"dynamic_range": True, "calibrator": "entropy2"}, "drop --calibrator or --dynamic-range"),
        ({"workspace_mb": 0}, "--workspace-mb must be a positive"),
        ({"optimization_level": 6}, "--optimization-level must be 0 to 5"),
        ({"device": -1}, "--device must be a CUDA device index"),
        ({"shapes": (parse_shape_spec("x:1x2"), parse_shape_spec("x:2x2"))}, "names input 'x' twice"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        EngineBuildOptions(**kwargs)  # type: ignore[arg-type]


def test_from_dict_errors() -> None:
    with pytest.raises(UsageError, match="unknown keys"):
        EngineBuildOptions.from_dict({"precison": "int8"})
    with pytest.raises(UsageError, match="malformed"):
        EngineBuildOptions.from_dict({"device": "gpu0"})
