"""Helpers for the dataset tests: tiny images and model input specs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from quant.backends.base import TensorSpec


def write_gray_png(path: Path, value: int, size: tuple[int, int] = (4, 4)) -> Path:
    """A constant gray 8-bit PNG of ``size`` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=value).save(path)
    return path


def image_input(name: str = "input", channels: int = 1, h: int = 4, w: int = 4) -> TensorSpec:
    return TensorSpec(name, ("N", channels, h, w), np.dtype(np.float32))
