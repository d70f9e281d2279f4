"""Image preprocessing as typed data: resize, center crop, channel order, scale, mean/std, layout.

A :class:`PreprocessSpec` says exactly how one decoded image becomes one model input sample. The
shape part (height, width, channels, layout) normally comes from the model input
(:func:`spec_from_input`); the value part (scale, mean, std, color order, resize policy) from a
named preset in :data:`PRESETS`, optionally changed by ``key=value`` overrides
(:func:`parse_preprocess`).

Order of operations in :func:`preprocess_image` (the torchvision PIL path):
mode conversion -> resize (shorter side, or straight to height x width) -> center crop ->
float32 -> ``* scale`` -> ``(x - mean) / std`` per channel -> layout (CHW or HWC).

This module imports PIL only inside :func:`preprocess_image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from quant.backends.base import TensorSpec
from quant.errors import DataError, UsageError

if TYPE_CHECKING:
    from PIL import Image

Color = Literal["rgb", "bgr", "gray"]
Layout = Literal["nchw", "nhwc"]

COLORS: tuple[str, ...] = ("rgb", "bgr", "gray")
LAYOUTS: tuple[str, ...] = ("nchw", "nhwc")
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")

#: Most pixels one preprocessed image (or its resized intermediate) may have: 8192 x 8192. A typo
#: such as size=100000x100000 would otherwise allocate hundreds of GB per image.
MAX_PIXELS = 8192 * 8192

#: Divisor mapping 16-bit pixels (0..65535) onto the 8-bit scale (0..255): 65535 / 257 == 255.
_SIXTEEN_BIT_DIVISOR = 257.0


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn one image into one model input sample (float32 before the final cast).

    ``resize_shorter``: resize so the shorter side has this many pixels (keeping the aspect
    ratio), then center-crop ``height`` x ``width``; ``None`` resizes straight to
    ``height`` x ``width`` (aspect ratio not kept). ``scale`` multiplies the 0..255 pixel values
    first; ``mean`` / ``std`` (one value, or one per channel) are applied after the scale.
    ``color="gray"`` with 3 channels replicates the gray image into the 3 channels.
    """

    height: int
    width: int
    channels: int = 3
    resize_shorter: int | None = None
    color: Color = "rgb"
    layout: Layout = "nchw"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        for name in ("height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"preprocessing {name} must be a positive integer, got {value!r}")
        if self.height * self.width > MAX_PIXELS:
            raise UsageError(
                f"preprocessing size {self.height}x{self.width} is {self.height * self.width} pixels per "
                f"image, more than the limit of {MAX_PIXELS} (8192x8192); choose a smaller size"
            )
        if self.channels not in (1, 3):
            raise UsageError(f"preprocessing channels must be 1 or 3, got {self.channels!r}")
        if self.resize_shorter is not None:
            rs = self.resize_shorter
            if isinstance(rs, bool) or not isinstance(rs, int) or rs <= 0:
                raise UsageError(f"preprocessing resize must be a positive integer or none, got {rs!r}")
            if rs * rs > MAX_PIXELS:
                raise UsageError(
                    f"preprocessing resize {rs} makes images of at least {rs}x{rs} pixels, more than the "
                    f"limit of {MAX_PIXELS} (8192x8192); choose a smaller resize"
                )
            if rs < max(self.height, self.width):
                raise UsageError(
                    f"preprocessing resize {rs} is smaller than the crop {self.height}x{self.width}; "
                    f"pass resize={max(self.height, self.width)} or more, or resize=none"
                )
        if self.color not in COLORS:
            raise UsageError(f"preprocessing color must be one of {', '.join(COLORS)}, got {self.color!r}")
        if self.channels == 1 and self.color != "gray":
            raise UsageError(
                f"preprocessing color {self.color!r} needs 3 channels but the spec has 1; use color=gray"
            )
        if self.layout not in LAYOUTS:
            raise UsageError(f"preprocessing layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(
                f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if not math.isfinite(self.scale) or self.scale == 0:
            raise UsageError(f"preprocessing scale must be a finite non-zero number, got {self.scale!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name in ("mean", "std"):
            values: tuple[float, ...] = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise UsageError(
                    f"preprocessing {name} has {len(values)} values but the input has {self.channels} "
                    f"channel(s); give 1 or {self.channels} values (e.g. {name}="
                    f"{'/'.join(['0.5'] * self.channels)})"
                )
            if not all(math.isfinite(v) for v in values):
                raise UsageError(f"preprocessing {name} values must be finite, got {values!r}")
        if any(v == 0 for v in self.std):
            raise UsageError(f"preprocessing std values must be non-zero, got {self.std!r}")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of one preprocessed sample: (C, H, W) for nchw, (H, W, C) for nhwc."""
        if self.layout == "nchw":
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "resize_shorter": self.resize_shorter,
            "color": self.color,
            "layout": self.layout,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"preprocessing spec: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}"
            )
        missing = [k for k in ("height", "width") if k not in data]
        if missing:
            raise UsageError(f"preprocessing spec: missing key {missing[0]!r}")
        kwargs: dict[str, Any] = dict(data)
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


# Presets: the value part of a spec. Their height/width/channels/layout are the usual ImageNet
# ones and are replaced by the model input's in spec_from_input (resize_shorter is scaled with the
# crop, so "imagenet" on a 299x299 input resizes to 342, the same 0.875 crop ratio).
PRESETS: dict[str, PreprocessSpec] = {
    "imagenet": PreprocessSpec(
        height=224,
        width=224,
        channels=3,
        resize_shorter=256,
        color="rgb",
        layout="nchw",
        scale=1.0 / 255.0,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    "imagenet-caffe": PreprocessSpec(
        height=224,
        width=224,
        channels=3,
        resize_shorter=256,
        color="bgr",
        layout="nchw",
        scale=1.0,
        mean=(103.939, 116.779, 123.68),
        std=(1.0,),
    ),
    "unit": PreprocessSpec(height=224, width=224, channels=3, scale=1.0 / 255.0, mean=(0.0,), std=(1.0,)),
    "raw": PreprocessSpec(height=224, width=224, channels=3, scale=1.0, mean=(0.0,), std=(1.0,)),
    # (x / 255 - 0.5) / 0.5 == x / 127.5 - 1: the TensorFlow/Keras "inception" [-1, 1] range.
    "tf": PreprocessSpec(height=224, width=224, channels=3, scale=1.0 / 255.0, mean=(0.5,), std=(0.5,)),
}

DEFAULT_PRESET = "unit"


@dataclass(frozen=True)
class PreprocessOverrides:
    """A partial spec parsed from text: a preset name plus the fields the user set.

    ``None`` means "not given". ``resize_shorter=0`` means "given as none": resize straight to
    height x width (the preset's center-crop policy is turned off).
    """

    preset: str | None = None
    height: int | None = None
    width: int | None = None
    resize_shorter: int | None = None
    color: Color | None = None
    layout: Layout | None = None
    scale: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessOverrides:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"preprocessing overrides: unknown key {unknown[0]!r}")
        kwargs: dict[str, Any] = dict(data)
        for key in ("mean", "std"):
            if kwargs.get(key) is not None:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


_PARSE_KEYS = (
    "preset",
    "resize",
    "mean",
    "std",
    "color",
    "layout",
    "scale",
    "interpolation",
    "size",
    "height",
    "width",
)


def _preset(name: str) -> PreprocessSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(
            f"unknown preprocessing preset {name!r}; choose one of {', '.join(sorted(PRESETS))}"
        ) from None


def _parse_number(key: str, text: str) -> float:
    text = text.strip()
    try:
        if "/" in text and key == "scale":
            num, den = text.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"preprocessing {key}={text!r}: not a number") from None
    return value


def _parse_int(key: str, text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise UsageError(f"preprocessing {key}={text!r}: not an integer") from None
    if value <= 0:
        raise UsageError(f"preprocessing {key}={text!r}: must be a positive integer")
    return value


def parse_preprocess(text: str) -> PreprocessOverrides:
    """Parse ``--preprocess``: a preset name, or ``key=value`` pairs separated by commas.

    Keys: ``preset``, ``resize`` (shorter side, or ``none``), ``size`` (``HxW`` or ``N``),
    ``height``, ``width``, ``mean`` / ``std`` (values separated by ``/``), ``color``
    (rgb|bgr|gray), ``layout`` (nchw|nhwc), ``scale`` (a number or a fraction such as ``1/255``),
    ``interpolation``. Example: ``preset=imagenet,resize=256,mean=0.5/0.5/0.5,std=0.5``.
    """
    text = text.strip()
    if not text:
        raise UsageError(
            f"empty preprocessing; pass a preset ({', '.join(sorted(PRESETS))}) or key=value pairs"
        )
    if "=" not in text:
        _preset(text)
        return PreprocessOverrides(preset=text)
    values: dict[str, Any] = {}
    seen: set[str] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise UsageError(f"preprocessing item {item!r} is not key=value; keys: {', '.join(_PARSE_KEYS)}")
        key, raw = (s.strip() for s in item.split("=", 1))
        key = key.lower()
        if key not in _PARSE_KEYS:
            raise UsageError(f"unknown preprocessing key {key!r}; known keys: {', '.join(_PARSE_KEYS)}")
        if key in seen:
            raise UsageError(f"preprocessing key {key!r} given twice")
        seen.add(key)
        if key == "preset":
            _preset(raw)
            values["preset"] = raw
        elif key == "resize":
            values["resize_shorter"] = 0 if raw.lower() in ("none", "0") else _parse_int(key, raw)
        elif key == "size":
            parts = raw.lower().split("x")
            if len(parts) == 1:
                values["height"] = values["width"] = _parse_int(key, parts[0])
            elif len(parts) == 2:
                values["height"], values["width"] = _parse_int(key, parts[0]), _parse_int(key, parts[1])
            else:
                raise UsageError(f"preprocessing size={raw!r}: expected HxW, e.g. size=224x224")
        elif key in ("height", "width"):
            values[key] = _parse_int(key, raw)
        elif key in ("mean", "std"):
            values[key] = tuple(_parse_number(key, v) for v in raw.split("/"))
        elif key == "scale":
            values["scale"] = _parse_number(key, raw)
        elif key == "color":
            if raw.lower() not in COLORS:
                raise UsageError(f"preprocessing color={raw!r}: choose one of {', '.join(COLORS)}")
            values["color"] = raw.lower()
        elif key == "layout":
            if raw.lower() not in LAYOUTS:
                raise UsageError(f"preprocessing layout={raw!r}: choose one of {', '.join(LAYOUTS)}")
            values["layout"] = raw.lower()
        else:  # interpolation
            if raw.lower() not in INTERPOLATIONS:
                raise UsageError(
                    f"preprocessing interpolation={raw!r}: choose one of {', '.join(INTERPOLATIONS)}"
                )
            values["interpolation"] = raw.lower()
    return PreprocessOverrides(**values)


def _image_layout(
    spec: TensorSpec, layout: str | None
) -> tuple[str, int, int | str | None, int | str | None]:
    """(layout, channels, height dim, width dim) of a 4-D image input, or DataError."""
    shape = spec.shape
    if len(shape) != 4:
        raise DataError(
            f"input '{spec.name}' has shape {list(shape)}, not a 4-D image batch (N,C,H,W or N,H,W,C); "
            "feed it from a .npy/.npz file instead of images"
        )
    nchw_ok = shape[1] in (1, 3)
    nhwc_ok = shape[3] in (1, 3)
    if layout is None:
        # Prefer NCHW when both fit (e.g. [N,3,8,3]); the user can say layout=nhwc.
        layout = "nchw" if nchw_ok else "nhwc" if nhwc_ok else None
    if layout == "nchw" and nchw_ok:
        return "nchw", int(cast(int, shape[1])), shape[2], shape[3]
    if layout == "nhwc" and nhwc_ok:
        return "nhwc", int(cast(int, shape[3])), shape[1], shape[2]
    where = f" in layout {layout}" if layout else ""
    raise DataError(
        f"input '{spec.name}' has shape {list(shape)}: no channel dimension of 1 or 3{where}, so it is "
        "not an image input; feed it from a .npy/.npz file instead of images"
    )


def spec_from_input(
    spec: TensorSpec, preset: str | PreprocessSpec | PreprocessOverrides | None = None
) -> PreprocessSpec:
    """The preprocessing for model input ``spec``: shape from the input, values from ``preset``.

    height, width, channels and layout come from the input shape (NCHW if dim 1 is 1 or 3, else
    NHWC if the last dim is; 1 channel means gray). ``preset`` supplies the rest (default
    ``"unit"``). When the input's height/width are dynamic they must come from the preset: a full
    :class:`PreprocessSpec` (whose size is used only for dynamic dims), or overrides with
    ``size=HxW`` (which must agree with static dims). An explicit layout override decides
    ambiguous shapes.
    """
    overrides: PreprocessOverrides
    base: PreprocessSpec
    fallback: tuple[int, int] | None = None  # a full spec's size fills dynamic dims only
    if isinstance(preset, PreprocessSpec):
        base = preset
        overrides = PreprocessOverrides()
        fallback = (preset.height, preset.width)
    elif isinstance(preset, PreprocessOverrides):
        overrides = preset
        base = _preset(preset.preset or DEFAULT_PRESET)
    else:
        overrides = PreprocessOverrides()
        base = _preset(preset or DEFAULT_PRESET)
    layout, channels, hdim, wdim = _image_layout(spec, overrides.layout)

    def dim(value: int | str | None, given: int | None, fill: int | None, what: str) -> int:
        if isinstance(value, int) and value > 0:
            if given is not None and given != value:
                raise UsageError(
                    f"preprocessing {what} {given} does not match input '{spec.name}' {what} {value}"
                )
            return value
        if given is not None:
            return given
        if fill is not None:
            return fill
        raise DataError(
            f"input '{spec.name}' has a dynamic {what} (shape {list(spec.shape)}); give the image size "
            "in the preprocessing (e.g. --preprocess size=224x224)"
        )

    height = dim(hdim, overrides.height, fallback[0] if fallback else None, "height")
    width = dim(wdim, overrides.width, fallback[1] if fallback else None, "width")

    color: str = overrides.color or base.color
    if channels == 1:
        if overrides.color is not None and overrides.color != "gray":
            raise UsageError(
                f"preprocessing color={overrides.color} needs 3 channels but input '{spec.name}' has 1; use color=gray"
            )
        color = "gray"
    elif color == "gray" and overrides.color is None:
        color = "rgb"  # a preset's gray on a 3-channel input: read color images

    resize: int | None
    if overrides.resize_shorter is not None:
        resize = overrides.resize_shorter or None
    elif base.resize_shorter is not None:
        # Keep the preset's crop ratio (256/224) on other input sizes; on a non-square crop scale
        # the longer crop side so the crop always fits inside the resized image.
        ratio = base.resize_shorter / max(base.height, base.width)
        resize = max(round(ratio * max(height, width)), height, width)
    else:
        resize = None

    mean = overrides.mean if overrides.mean is not None else base.mean
    std = overrides.std if overrides.std is not None else base.std
    source = f"preset {overrides.preset or (preset if isinstance(preset, str) else DEFAULT_PRESET)!r}"
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise UsageError(
                f"{source} has {len(values)} {name} values but input '{spec.name}' has {channels} "
                f"channel(s); pass {name}= with 1 or {channels} values in --preprocess"
            )
    return replace(
        base,
        height=height,
        width=width,
        channels=channels,
        layout=cast(Layout, layout),
        color=cast(Color, color),
        resize_shorter=resize,
        mean=mean,
        std=std,
        scale=overrides.scale if overrides.scale is not None else base.scale,
        interpolation=overrides.interpolation or base.interpolation,
    )


def check_spec_fits(pre: PreprocessSpec, spec: TensorSpec) -> None:
    """Raise DataError if ``pre`` does not produce samples of input ``spec``'s (static) shape."""
    expected = pre.sample_shape
    if len(spec.shape) != 4:
        _image_layout(spec, None)  # raises the not-an-image error
    for got, want in zip(spec.shape[1:], expected, strict=True):
        if isinstance(got, int) and got > 0 and got != want:
            raise DataError(
                f"preprocessing makes samples of shape {list(expected)} ({pre.layout}) but input "
                f"'{spec.name}' expects {list(spec.shape)}; fix --preprocess size/layout or omit it"
            )


# --- pixels -----------------------------------------------------------------------------------


def _resample(name: str) -> int:
    from PIL import Image

    return {
        "nearest": Image.Resampling.NEAREST,
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "hamming": Image.Resampling.HAMMING,
    }[name]


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_working_mode(img: Image.Image, gray: bool) -> Image.Image:
    """Convert any PIL mode to "L"/"RGB" (8-bit) or "F" (16-bit or float data, on a 0..255 scale).

    - RGBA / LA / PA: the alpha channel is dropped (``convert("RGB")``), as torchvision's
      loader does; transparent pixels keep whatever color they store. Palette images with a
      transparency entry go through RGBA first so Pillow does not warn.
    - CMYK, YCbCr, HSV, "1": Pillow's conversion to RGB / L.
    - 16-bit (I;16*, I): divided by 257 so 65535 maps to 255, kept as float (no rounding to 8 bit);
      "I" values are clipped to 0..65535 first. "F" (float) images are taken as they are.
    - A gray target takes Pillow's ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B).
    """
    from PIL import Image

    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        arr = np.asarray(img, dtype=np.float32) if mode == "F" else np.asarray(img).astype(np.float32)
        if mode != "F":
            arr = np.clip(arr, 0.0, 65535.0) / _SIXTEEN_BIT_DIVISOR
        return Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    target = "L" if gray else "RGB"
    if mode == target:
        return img
    if mode in ("LA", "La") and not gray:
        img = img.convert("L")
    elif mode in ("RGBa", "La"):
        img = img.convert("RGBA" if mode == "RGBa" else "LA")
    return img.convert(target)


def _resize_and_crop(img: Image.Image, spec: PreprocessSpec) -> Image.Image:
    resample = _resample(spec.interpolation)
    w, h = img.size
    if spec.resize_shorter is None:
        if (w, h) != (spec.width, spec.height):
            img = img.resize((spec.width, spec.height), resample=resample)
        return img
    short = spec.resize_shorter
    # torchvision.transforms.Resize(int): the long side is int(short * long / short_side).
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_w, new_h = int(short * w / h), short
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), resample=resample)
    # torchvision.transforms.CenterCrop: top/left offsets rounded half to even.
    top = int(round((new_h - spec.height) / 2.0))
    left = int(round((new_w - spec.width) / 2.0))
    if (new_w, new_h) != (spec.width, spec.height):
        img = img.crop((left, top, left + spec.width, top + spec.height))
    return img


def preprocess_image(img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One image -> float32 array of ``spec.sample_shape`` ((C,H,W) or (H,W,C)).

    Raises DataError when Pillow cannot convert the image's mode. EXIF orientation is not
    applied (as in torchvision's loader).
    """
    try:
        work = _to_working_mode(img, gray=spec.color == "gray")
        work = _resize_and_crop(work, spec)
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot convert image of mode {img.mode!r} to {spec.color}: {exc}") from exc
    arr = np.asarray(work, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if spec.color == "bgr":
        arr = arr[:, :, ::-1]
    if arr.shape[2] != spec.channels:
        arr = np.repeat(arr, spec.channels, axis=2)  # gray read into a 3-channel input
    out = arr * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if np.any(mean != 0):
        out = out - mean
    if np.any(std != 1):
        out = out / std
    if spec.layout == "nchw":
        out = out.transpose(2, 0, 1)
    return np.ascontiguousarray(out, dtype=np.float32)
