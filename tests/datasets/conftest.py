"""Fixtures for the dataset tests: tiny image folders written in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets_fixtures import write_gray_png


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """root/{a,b,c}/NN.png: 3 classes x 4 images; each pixel value encodes (class, index)."""
    root = tmp_path / "classes"
    for c, cls in enumerate(("a", "b", "c")):
        for i in range(4):
            write_gray_png(root / cls / f"{i:02d}.png", 10 * c + i)
    return root
