"""NpyDataset / NpzDataset: streaming, selection, copies, and every validation error."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from quant.backends.base import TensorSpec
from quant.datasets.arrays import NpyDataset, NpzDataset
from quant.datasets.base import Dataset
from quant.errors import DataError, UsageError

F32 = np.dtype(np.float32)
IMG = TensorSpec("input", ("N", 3, 4, 4), F32)
VEC = TensorSpec("input2", ("N", 8), F32)


def samples(n: int, shape: tuple[int, ...] = (3, 4, 4), dtype: type = np.float64) -> np.ndarray:
    """Sample i is filled with the value i, so rows are easy to identify."""
    return (np.arange(n, dtype=dtype).reshape(n, *([1] * len(shape))) * np.ones(shape, dtype=dtype)).astype(
        dtype
    )


def first_values(ds: Dataset, name: str, batch_size: int = 4) -> list[float]:
    out: list[float] = []
    for b in ds.batches(batch_size):
        out += b.feed[name].reshape(b.size, -1)[:, 0].tolist()
    return out


# --- npy ------------------------------------------------------------------------------------


def test_npy_streams_copies_cast(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, samples(10))
    ds = NpyDataset(path, input=IMG)
    assert isinstance(ds, Dataset) and len(ds) == 10 and not ds.has_labels and ds.input_names == ("input",)
    batches = list(ds.batches(4))
    assert [b.size for b in batches] == [4, 4, 2]
    for b in batches:
        arr = b.feed["input"]
        assert arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable
        assert not isinstance(arr, np.memmap) and arr.base is None
        assert b.labels is None
    assert first_values(ds, "input") == list(range(10))
    batches[0].feed["input"][...] = -5
    assert first_values(ds, "input") == list(range(10))  # the next pass is unaffected
    assert ds.summary().kind == "npy" and ds.summary().num_samples == 10


def test_npy_same_dtype_is_still_a_copy(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, samples(6, dtype=np.float32))
    b1, b2 = list(NpyDataset(path, input=IMG).batches(3))
    assert not np.shares_memory(b1.feed["input"], b2.feed["input"])
    b1.feed["input"][...] = 7  # would raise on a read-only memory-map view
    np.testing.assert_array_equal(np.load(path)[:3], samples(3))


def test_npy_selection(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, samples(50))
    a = first_values(NpyDataset(path, input=IMG, max_samples=7, seed=3), "input", 3)
    b = first_values(NpyDataset(path, input=IMG, max_samples=7, seed=3), "input", 5)
    c = first_values(NpyDataset(path, input=IMG, max_samples=7, seed=4), "input")
    assert a == b and a == sorted(a) and len(a) == 7 and a != c
    fp = NpyDataset(path, input=IMG).fingerprint()
    assert fp == NpyDataset(path, input=IMG).fingerprint()
    assert fp != NpyDataset(path, input=IMG, max_samples=7, seed=3).fingerprint()
    np.save(path, samples(50) + 1)
    assert fp != NpyDataset(path, input=IMG).fingerprint()
    with pytest.raises(UsageError, match="max_samples must be a positive integer"):
        NpyDataset(path, input=IMG, max_samples=0)


def test_npy_dynamic_dims_and_integer_input(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(12, dtype=np.int32).reshape(3, 4))
    ds = NpyDataset(path, input=TensorSpec("ids", ("N", "seq"), np.dtype(np.int64)))
    out = next(iter(ds.batches(8))).feed["ids"]
    assert out.dtype == np.int64 and out.shape == (3, 4)


def test_npy_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data '.*missing.npy': no such file or directory"):
        NpyDataset(tmp_path / "missing.npy", input=IMG)
    bad_shape = tmp_path / "shape.npy"
    np.save(bad_shape, np.zeros((5, 3, 5, 4), np.float32))
    with pytest.raises(
        DataError,
        match=r"array 'shape.npy' in '.*' has shape \[5, 3, 5, 4\] but input 'input' expects \[N, 3, 4, 4\]",
    ):
        NpyDataset(bad_shape, input=IMG)
    bad_rank = tmp_path / "rank.npy"
    np.save(bad_rank, np.zeros((5, 48), np.float32))
    with pytest.raises(DataError, match=r"has shape \[5, 48\] but input 'input' expects \[N, 3, 4, 4\]"):
        NpyDataset(bad_rank, input=IMG)
    strings = tmp_path / "str.npy"
    np.save(strings, np.array([["a"] * 8] * 2))
    with pytest.raises(DataError, match=r"array 'str.npy' .* has non-numeric dtype <U1 \(shape \[2, 8\]\)"):
        NpyDataset(strings, input=VEC)
    objects = tmp_path / "obj.npy"
    np.save(objects, np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"array 'obj.npy' .* has non-numeric dtype object"):
        NpyDataset(objects, input=TensorSpec("v", ("N",), F32))
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"definitely not numpy")
    with pytest.raises(DataError, match=r"cannot read '.*garbage.npy' as .npy: .*; save it with numpy.save"):
        NpyDataset(garbage, input=VEC)
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 8), np.float32))
    with pytest.raises(DataError, match=r"the array has no samples \(shape \[0, 8\]\)"):
        NpyDataset(empty, input=VEC)
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((2, 8), np.float32))
    with pytest.raises(UsageError, match="batch size must be a positive integer"):
        NpyDataset(ok, input=VEC).batches(-1)


# --- npz ------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_two_inputs_with_labels(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "d.npz"
    save = np.savez_compressed if compressed else np.savez
    save(path, input=samples(11), input2=samples(11, (8,), np.float32) * 10, labels=np.arange(11) % 3)
    ds = NpzDataset(path, inputs=[IMG, VEC])
    assert len(ds) == 11 and ds.has_labels and ds.input_names == ("input", "input2")
    batches = list(ds.batches(4))
    assert [b.size for b in batches] == [4, 4, 3]
    assert first_values(ds, "input") == list(range(11))
    assert first_values(ds, "input2") == [10.0 * i for i in range(11)]
    labels = np.concatenate([b.labels for b in batches if b.labels is not None])
    np.testing.assert_array_equal(labels, np.arange(11) % 3)
    for b in batches:
        assert b.feed["input"].dtype == np.float32 and b.feed["input"].flags.c_contiguous
    batches[0].feed["input"][...] = -1
    assert batches[0].labels is not None
    batches[0].labels[...] = -1
    again = next(iter(ds.batches(4)))
    assert again.feed["input"].min() >= 0 and again.labels is not None and again.labels.min() >= 0


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_selection(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, input2=samples(40, (8,)), labels=np.arange(40))
    a = NpzDataset(path, inputs=[VEC], max_samples=9, seed=5)
    vals = first_values(a, "input2", 2)
    assert len(vals) == 9 and vals == sorted(vals) and len(set(vals)) == 9
    labels = np.concatenate([b.labels for b in a.batches(4) if b.labels is not None])
    np.testing.assert_array_equal(labels, vals)  # labels follow their samples
    assert vals == first_values(NpzDataset(path, inputs=[VEC], max_samples=9, seed=5), "input2", 4)
    assert vals != first_values(NpzDataset(path, inputs=[VEC], max_samples=9, seed=6), "input2", 4)
    fp = a.fingerprint()
    assert fp == NpzDataset(path, inputs=[VEC], max_samples=9, seed=5).fingerprint()
    assert fp != NpzDataset(path, inputs=[VEC]).fingerprint()


def test_npz_fortran_order_member(tmp_path: Path) -> None:
    path = tmp_path / "f.npz"
    np.savez(path, input2=np.asfortranarray(samples(6, (8,))))
    assert first_values(NpzDataset(path, inputs=[VEC], max_samples=4, seed=0), "input2", 3) == sorted(
        first_values(NpzDataset(path, inputs=[VEC], max_samples=4, seed=0), "input2", 1)
    )
    assert first_values(NpzDataset(path, inputs=[VEC]), "input2") == list(range(6))


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, input=samples(4), other=samples(4))
    with pytest.raises(
        DataError, match=r"has no array for model input 'input2' \(keys found: 'input', 'other'\)"
    ):
        NpzDataset(path, inputs=[IMG, VEC])
    with pytest.raises(DataError, match=r"has array 'other', which is not a model input \(inputs: 'input'\)"):
        NpzDataset(path, inputs=[IMG])

    np.savez(path, input=samples(4), input2=samples(5, (8,)))
    with pytest.raises(DataError, match=r"different numbers of samples \('input': 4, 'input2': 5\)"):
        NpzDataset(path, inputs=[IMG, VEC])

    np.savez(path, input2=samples(4, (8,)), labels=np.arange(3))
    with pytest.raises(DataError, match="'labels' has 3 entries but the inputs have 4 samples"):
        NpzDataset(path, inputs=[VEC])
    np.savez(path, input2=samples(4, (8,)), labels=np.zeros(4, np.float32))
    with pytest.raises(DataError, match=r"array 'labels' .* dtype float32; labels must be one integer"):
        NpzDataset(path, inputs=[VEC])

    np.savez(path, input2=samples(4, (9,)))
    with pytest.raises(
        DataError, match=r"array 'input2' in '.*d.npz' has shape \[4, 9\] but input 'input2' expects \[N, 8\]"
    ):
        NpzDataset(path, inputs=[VEC])
    np.savez(path, input2=np.array([["x"] * 8] * 4))
    with pytest.raises(DataError, match=r"array 'input2' .* has non-numeric dtype <U1 \(shape \[4, 8\]\)"):
        NpzDataset(path, inputs=[VEC])
    np.savez(path, input2=np.zeros((4, 8), np.complex64))
    with pytest.raises(DataError, match="non-numeric dtype complex64"):
        NpzDataset(path, inputs=[VEC])

    with pytest.raises(DataError, match=r"data '.*nope.npz': no such file or directory"):
        NpzDataset(tmp_path / "nope.npz", inputs=[VEC])
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"no zip here")
    with pytest.raises(DataError, match=r"cannot read '.*g.npz' as .npz: .*; save it with numpy.savez"):
        NpzDataset(garbage, inputs=[VEC])


def test_npz_truncated_member(tmp_path: Path) -> None:
    """A member whose data is shorter than its header says fails with a clear message."""
    good = tmp_path / "good.npy"
    np.save(good, samples(4, (8,)))
    raw = good.read_bytes()
    path = tmp_path / "t.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("input2.npy", raw[: len(raw) - 40])
    ds = NpzDataset(path, inputs=[VEC])
    with pytest.raises(DataError, match=r"array 'input2' in '.*t.npz' is truncated; re-save the file"):
        list(ds.batches(4))
