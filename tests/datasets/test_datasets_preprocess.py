"""Preprocessing: specs, presets, parsing and hand-computed pixels on tiny images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from quant.backends.base import TensorSpec
from quant.datasets.preprocess import (
    PRESETS,
    PreprocessOverrides,
    PreprocessSpec,
    check_spec_fits,
    parse_preprocess,
    preprocess_image,
    spec_from_input,
)
from quant.errors import DataError, UsageError

F32 = np.dtype(np.float32)


def rgb_image(pixels: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="RGB")


def gradient(h: int, w: int) -> Image.Image:
    """Gray image with pixel value 10 * row + col."""
    arr = (10 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint8)
    return Image.fromarray(arr, mode="L")


# --- pixel values ---------------------------------------------------------------------------


def test_scale_mean_std_per_channel_nchw() -> None:
    img = rgb_image([[(0, 51, 102), (255, 204, 153)]])  # 1 row, 2 columns
    spec = PreprocessSpec(height=1, width=2, scale=1 / 255, mean=(0.0, 0.1, 0.2), std=(1.0, 0.5, 0.25))
    out = preprocess_image(img, spec)
    assert out.dtype == np.float32 and out.shape == (3, 1, 2)
    expected = np.array(
        [
            [[0.0, 1.0]],  # R: x/255
            [[(0.2 - 0.1) / 0.5, (0.8 - 0.1) / 0.5]],  # G
            [[(0.4 - 0.2) / 0.25, (0.6 - 0.2) / 0.25]],  # B
        ],
        dtype=np.float32,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_bgr_and_nhwc() -> None:
    img = rgb_image([[(1, 2, 3), (4, 5, 6)]])
    spec = PreprocessSpec(height=1, width=2, color="bgr", layout="nhwc", scale=1.0)
    out = preprocess_image(img, spec)
    assert out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0], [[3, 2, 1], [6, 5, 4]])


def test_presets_values() -> None:
    img = rgb_image([[(0, 128, 255)]])
    tf = spec_from_input(TensorSpec("x", (1, 3, 1, 1), F32), "tf")
    np.testing.assert_allclose(preprocess_image(img, tf).ravel(), [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
    caffe = spec_from_input(TensorSpec("x", (1, 3, 1, 1), F32), "imagenet-caffe")
    assert caffe.resize_shorter is None or caffe.resize_shorter >= 1
    caffe = PreprocessSpec(**{**caffe.to_dict(), "resize_shorter": None, "mean": (103.939, 116.779, 123.68)})
    # BGR order: channel 0 is blue (255) minus the blue mean.
    np.testing.assert_allclose(
        preprocess_image(img, caffe).ravel(), [255 - 103.939, 128 - 116.779, 0 - 123.68], rtol=1e-6
    )
    raw = spec_from_input(TensorSpec("x", (1, 3, 1, 1), F32), "raw")
    np.testing.assert_array_equal(preprocess_image(img, raw).ravel(), [0, 128, 255])
    imagenet = PRESETS["imagenet"]
    assert (imagenet.resize_shorter, imagenet.height, imagenet.width) == (256, 224, 224)
    assert imagenet.mean == (0.485, 0.456, 0.406) and imagenet.std == (0.229, 0.224, 0.225)


def test_center_crop_without_resize() -> None:
    img = gradient(4, 6)  # h=4, w=6: shorter side already 4
    spec = PreprocessSpec(height=2, width=2, channels=1, color="gray", resize_shorter=4, scale=1.0)
    out = preprocess_image(img, spec)
    # top = round((4-2)/2) = 1, left = round((6-2)/2) = 2
    np.testing.assert_array_equal(out[0], [[12, 13], [22, 23]])


def test_resize_shorter_then_crop_nearest() -> None:
    img = gradient(4, 2)  # h=4, w=2 -> shorter (w) to 4: 4 x 8, crop 4x4 at top = 2
    spec = PreprocessSpec(
        height=4, width=4, channels=1, color="gray", resize_shorter=4, scale=1.0, interpolation="nearest"
    )
    out = preprocess_image(img, spec)[0]
    up = np.asarray(gradient(4, 2))
    expected = np.repeat(np.repeat(up, 2, axis=0), 2, axis=1)[2:6]
    np.testing.assert_array_equal(out, expected)


def test_straight_resize_ignores_aspect() -> None:
    img = Image.new("L", (8, 2), 77)
    spec = PreprocessSpec(height=3, width=3, channels=1, color="gray", scale=1.0)
    out = preprocess_image(img, spec)
    assert out.shape == (1, 3, 3)
    np.testing.assert_allclose(out, 77.0)


def test_one_pixel_image_resized_up() -> None:
    img = Image.new("RGB", (1, 1), (10, 20, 30))
    spec = PreprocessSpec(height=5, width=4, scale=1.0)
    out = preprocess_image(img, spec)
    assert out.shape == (3, 5, 4)
    np.testing.assert_allclose(out[:, 2, 1], [10, 20, 30])
    np.testing.assert_allclose(out[2], 30.0)


# --- image modes ----------------------------------------------------------------------------

GRAY1 = PreprocessSpec(height=1, width=1, channels=1, color="gray", scale=1.0)
RGB1 = PreprocessSpec(height=1, width=1, channels=3, color="rgb", scale=1.0)


def test_mode_l_to_rgb_replicates() -> None:
    out = preprocess_image(Image.new("L", (1, 1), 42), RGB1)
    np.testing.assert_array_equal(out.ravel(), [42, 42, 42])


def test_mode_rgb_to_gray_uses_luma() -> None:
    out = preprocess_image(Image.new("RGB", (1, 1), (100, 150, 200)), GRAY1)
    # Pillow's ITU-R 601-2 luma in fixed point: (100*19595 + 150*38470 + 200*7471 + 32768) >> 16 = 141
    assert out.ravel().tolist() == [141.0]


def test_mode_rgba_drops_alpha() -> None:
    img = Image.new("RGBA", (1, 1), (10, 20, 30, 0))
    np.testing.assert_array_equal(preprocess_image(img, RGB1).ravel(), [10, 20, 30])
    la = Image.new("LA", (1, 1), (90, 0))
    np.testing.assert_array_equal(preprocess_image(la, GRAY1).ravel(), [90])
    np.testing.assert_array_equal(preprocess_image(la, RGB1).ravel(), [90, 90, 90])


def test_mode_palette_with_and_without_transparency() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    img.putpixel((1, 0), 1)
    spec = PreprocessSpec(height=1, width=2, scale=1.0, layout="nhwc")
    np.testing.assert_array_equal(preprocess_image(img, spec)[0], [[0, 0, 0], [200, 100, 50]])
    img.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Palette images with Transparency" warning
        np.testing.assert_array_equal(preprocess_image(img, spec)[0], [[0, 0, 0], [200, 100, 50]])


def test_mode_cmyk() -> None:
    img = Image.new("CMYK", (2, 1))
    img.putpixel((0, 0), (0, 0, 0, 0))  # white
    img.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    spec = PreprocessSpec(height=1, width=2, scale=1.0, layout="nhwc")
    np.testing.assert_array_equal(preprocess_image(img, spec)[0], [[255, 255, 255], [0, 255, 255]])


def test_mode_16_bit_maps_to_0_255_without_rounding() -> None:
    arr = np.array([[0, 257, 65535, 1000]], dtype=np.uint16)
    img = Image.fromarray(arr)  # mode I;16
    assert img.mode == "I;16"
    spec = PreprocessSpec(height=1, width=4, channels=1, color="gray", scale=1.0)
    np.testing.assert_allclose(preprocess_image(img, spec).ravel(), [0, 1, 255, 1000 / 257], rtol=1e-6)
    rgb = PreprocessSpec(height=1, width=4, scale=1 / 255, layout="nhwc")
    out = preprocess_image(img, rgb)
    np.testing.assert_allclose(out[0, 2], [1.0, 1.0, 1.0], rtol=1e-6)


def test_mode_i_32_bit_clipped() -> None:
    img = Image.fromarray(np.array([[2570, -5, 100000]], dtype=np.int32), mode="I")
    spec = PreprocessSpec(height=1, width=3, channels=1, color="gray", scale=1.0)
    np.testing.assert_allclose(preprocess_image(img, spec).ravel(), [10, 0, 255], rtol=1e-6)


def test_mode_bilevel() -> None:
    img = Image.new("1", (1, 1), 1)
    assert preprocess_image(img, GRAY1).ravel().tolist() == [255.0]


def test_gray_color_on_three_channels_replicates() -> None:
    spec = PreprocessSpec(height=1, width=1, channels=3, color="gray", scale=1.0)
    out = preprocess_image(Image.new("RGB", (1, 1), (100, 150, 200)), spec)
    np.testing.assert_array_equal(out.ravel(), [141, 141, 141])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_unit_preset_output_in_range(h: int, w: int, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    spec = spec_from_input(TensorSpec("x", ("N", 3, 5, 6), F32))
    out = preprocess_image(Image.fromarray(arr, mode="RGB"), spec)
    assert out.shape == (3, 5, 6) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


# --- spec validation ------------------------------------------------------------------------


def test_spec_round_trip() -> None:
    spec = PRESETS["imagenet"]
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert spec.sample_shape == (3, 224, 224)
    ov = parse_preprocess("preset=tf,size=32x48,mean=0.1/0.2/0.3")
    assert PreprocessOverrides.from_dict(ov.to_dict()) == ov


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"channels": 1}, "color 'rgb' needs 3 channels"),
        ({"mean": (0.1, 0.2)}, "mean has 2 values but the input has 3"),
        ({"std": (1.0, 0.0, 1.0)}, "std values must be non-zero"),
        ({"resize_shorter": 3}, "resize 3 is smaller than the crop 4x4"),
        ({"layout": "chw"}, "layout must be one of"),
        ({"color": "yuv"}, "color must be one of"),
        ({"interpolation": "magic"}, "interpolation must be one of"),
        ({"scale": 0.0}, "scale must be a finite non-zero"),
        ({"height": 0}, "height must be a positive integer"),
    ],
)
def test_spec_validation_errors(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"height": 4, "width": 4}
    with pytest.raises(UsageError, match=message):
        PreprocessSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_from_dict_errors() -> None:
    with pytest.raises(UsageError, match="unknown key 'crop'"):
        PreprocessSpec.from_dict({"height": 1, "width": 1, "crop": 3})
    with pytest.raises(UsageError, match="missing key 'width'"):
        PreprocessSpec.from_dict({"height": 1})


# --- spec_from_input ------------------------------------------------------------------------


def test_spec_from_input_mnist_default_is_unit_gray() -> None:
    spec = spec_from_input(TensorSpec("input", ("batch", 1, 28, 28), F32))
    assert (spec.height, spec.width, spec.channels, spec.color, spec.layout) == (28, 28, 1, "gray", "nchw")
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == (0.0,) and spec.std == (1.0,)
    assert spec.resize_shorter is None


def test_spec_from_input_nhwc_imagenet_and_ratio() -> None:
    spec = spec_from_input(TensorSpec("x", (1, 224, 224, 3), F32), "imagenet")
    assert spec.layout == "nhwc" and spec.resize_shorter == 256 and spec.channels == 3
    big = spec_from_input(TensorSpec("x", (1, 3, 299, 299), F32), "imagenet")
    assert big.resize_shorter == 342  # 256/224 * 299, the same crop ratio
    assert spec_from_input(TensorSpec("x", (1, 3, 8, 8), F32), PRESETS["unit"]).height == 8


def test_spec_from_input_overrides() -> None:
    ov = parse_preprocess("preset=imagenet,resize=none,color=bgr,scale=1,mean=1/2/3,std=2")
    spec = spec_from_input(TensorSpec("x", ("N", 3, 10, 12), F32), ov)
    assert spec.resize_shorter is None and spec.color == "bgr" and spec.scale == 1.0
    assert spec.mean == (1.0, 2.0, 3.0) and spec.std == (2.0,)
    # layout override decides an ambiguous shape
    amb = TensorSpec("x", ("N", 3, 5, 3), F32)
    assert spec_from_input(amb).layout == "nchw"
    nhwc = spec_from_input(amb, parse_preprocess("layout=nhwc"))
    assert (nhwc.layout, nhwc.height, nhwc.width) == ("nhwc", 3, 5)


def test_spec_from_input_dynamic_size() -> None:
    dyn = TensorSpec("images", ("N", 3, "H", "W"), F32)
    with pytest.raises(DataError, match=r"input 'images' has a dynamic height .*--preprocess size=224x224"):
        spec_from_input(dyn)
    spec = spec_from_input(dyn, parse_preprocess("preset=imagenet,size=32x48"))
    assert (spec.height, spec.width, spec.resize_shorter) == (32, 48, 55)
    full = PreprocessSpec(height=16, width=16)
    assert spec_from_input(dyn, full).height == 16


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (("N", 3, 224), r"input 'x' has shape \['N', 3, 224\], not a 4-D image batch"),
        (("N", 5, 8, 8), "no channel dimension of 1 or 3"),
        (("N", "C", 8, 8), "no channel dimension of 1 or 3"),
    ],
)
def test_spec_from_input_not_an_image(shape: tuple[object, ...], message: str) -> None:
    with pytest.raises(DataError, match=message):
        spec_from_input(TensorSpec("x", shape, F32))  # type: ignore[arg-type]


def test_spec_from_input_usage_errors() -> None:
    gray_in = TensorSpec("input", ("N", 1, 28, 28), F32)
    with pytest.raises(UsageError, match=r"preset 'imagenet' has 3 mean values but input 'input' has 1"):
        spec_from_input(gray_in, "imagenet")
    with pytest.raises(UsageError, match="color=rgb needs 3 channels but input 'input' has 1"):
        spec_from_input(gray_in, parse_preprocess("color=rgb"))
    with pytest.raises(UsageError, match="preprocessing height 30 does not match input 'input' height 28"):
        spec_from_input(gray_in, parse_preprocess("size=30x28"))
    with pytest.raises(UsageError, match="unknown preprocessing preset 'imagenet21k'"):
        spec_from_input(gray_in, "imagenet21k")
    with pytest.raises(DataError, match="no channel dimension of 1 or 3 in layout nhwc"):
        spec_from_input(gray_in, parse_preprocess("layout=nhwc"))


def test_check_spec_fits() -> None:
    check_spec_fits(PreprocessSpec(height=8, width=8), TensorSpec("x", ("N", 3, 8, 8), F32))
    with pytest.raises(DataError, match=r"samples of shape \[3, 8, 8\] \(nchw\) but input 'x' expects"):
        check_spec_fits(PreprocessSpec(height=8, width=8), TensorSpec("x", ("N", 3, 9, 8), F32))


# --- parse_preprocess -----------------------------------------------------------------------


def test_parse_preset_name_and_pairs() -> None:
    assert parse_preprocess("imagenet") == PreprocessOverrides(preset="imagenet")
    ov = parse_preprocess(
        "preset=imagenet, resize=256, mean=0.5/0.5/0.5, std=0.25, color=BGR, layout=nhwc, scale=1/255"
    )
    assert ov.preset == "imagenet" and ov.resize_shorter == 256 and ov.mean == (0.5, 0.5, 0.5)
    assert ov.std == (0.25,) and ov.color == "bgr" and ov.layout == "nhwc"
    assert ov.scale == pytest.approx(1 / 255)
    assert parse_preprocess("resize=none").resize_shorter == 0
    assert parse_preprocess("size=20").height == 20
    assert parse_preprocess("height=3,width=5,interpolation=nearest").interpolation == "nearest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("crop=224", "unknown preprocessing key 'crop'"),
        ("preset=foo", "unknown preprocessing preset 'foo'"),
        ("foo", "unknown preprocessing preset 'foo'"),
        ("mean=a/b", r"mean='a': not a number"),
        ("resize=-3", "resize='-3': must be a positive integer"),
        ("resize=big", "resize='big': not an integer"),
        ("color=cmyk", "color='cmyk': choose one of"),
        ("layout=chw", "layout='chw': choose one of"),
        ("interpolation=magic", "interpolation='magic': choose one of"),
        ("size=1x2x3", "size='1x2x3': expected HxW"),
        ("scale=1,scale=2", "key 'scale' given twice"),
        ("scale=1/0", "scale='1/0': not a number"),
        ("preset=unit,resize", "item 'resize' is not key=value"),
        ("  ", "empty preprocessing"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_preprocess(text)
