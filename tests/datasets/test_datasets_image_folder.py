"""ImageFolderDataset: listing, labels, deterministic streaming, bad images, fingerprints."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest
from datasets_fixtures import write_gray_png
from PIL import Image

import quant.datasets.image_folder as image_folder
from quant.datasets.base import Dataset
from quant.datasets.image_folder import ImageFolderDataset
from quant.datasets.preprocess import PreprocessSpec
from quant.errors import DataError, UsageError

GRAY4 = PreprocessSpec(height=4, width=4, channels=1, color="gray", scale=1.0)


def make(root: Path, **kwargs: object) -> ImageFolderDataset:
    kwargs.setdefault("preprocess", GRAY4)
    return ImageFolderDataset(root, input_name="input", **kwargs)  # type: ignore[arg-type]


def values(ds: ImageFolderDataset, batch_size: int = 5) -> list[int]:
    """The constant pixel value of every sample, in iteration order."""
    out: list[int] = []
    for batch in ds.batches(batch_size):
        out += [int(v) for v in batch.feed["input"][:, 0, 0, 0]]
    return out


def test_class_folders_give_labels(class_folder: Path) -> None:
    ds = make(class_folder)
    assert isinstance(ds, Dataset)
    assert ds.has_labels and ds.class_names == ("a", "b", "c") and len(ds) == 12
    assert ds.input_names == ("input",)
    batches = list(ds.batches(5))
    assert [b.size for b in batches] == [5, 5, 2]  # the last batch is smaller
    feed = np.concatenate([b.feed["input"] for b in batches])
    labels = np.concatenate([b.labels for b in batches if b.labels is not None])
    assert feed.shape == (12, 1, 4, 4) and feed.dtype == np.float32
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
    np.testing.assert_array_equal(feed[:, 0, 0, 0], [10 * c + i for c in range(3) for i in range(4)])
    s = ds.summary()
    assert (s.kind, s.num_samples, s.num_skipped, s.class_names) == ("image-folder", 12, 0, ("a", "b", "c"))
    assert s.preprocess["height"] == 4


def test_empty_class_folder_keeps_indices(class_folder: Path) -> None:
    (class_folder / "aa").mkdir()  # sorts between "a" and "b", holds no image
    ds = make(class_folder)
    assert ds.class_names == ("a", "aa", "b", "c")
    assert ds.labels is not None
    np.testing.assert_array_equal(np.unique(ds.labels), [0, 2, 3])


def test_recursive_listing_without_labels(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_gray_png(root / "z.PNG", 1)
    write_gray_png(root / "b" / "deep" / "x.png", 2)
    write_gray_png(root / "a" / "y.png", 3)
    Image.new("L", (4, 4), 4).save(root / "a" / "w.JpEg", format="JPEG", quality=100)
    (root / "notes.txt").write_text("not an image")
    write_gray_png(root / ".hidden.png", 200)
    write_gray_png(root / ".cache" / "h.png", 201)
    ds = make(root)
    assert not ds.has_labels and ds.class_names == ()
    assert ds.files == ("a/w.JpEg", "a/y.png", "b/deep/x.png", "z.PNG")
    assert values(ds)[1:] == [3, 2, 1]
    assert all(b.labels is None for b in ds.batches(2))


def test_nested_class_like_folders_have_no_labels(tmp_path: Path) -> None:
    write_gray_png(tmp_path / "a" / "x" / "1.png", 1)
    write_gray_png(tmp_path / "b" / "2.png", 2)
    assert not make(tmp_path).has_labels


def test_two_passes_equal_and_workers_agree(class_folder: Path) -> None:
    ds = make(class_folder, workers=2)
    first = [b.feed["input"] for b in ds.batches(4)]
    second = [b.feed["input"] for b in ds.batches(4)]
    inline = [b.feed["input"] for b in make(class_folder, workers=0).batches(4)]
    for a, b, c in zip(first, second, inline, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_max_samples_seeded_subset(class_folder: Path) -> None:
    a = make(class_folder, max_samples=5, seed=1)
    b = make(class_folder, max_samples=5, seed=1)
    c = make(class_folder, max_samples=5, seed=2)
    assert len(a) == 5 and a.files == b.files and a.files != c.files
    assert list(a.files) == sorted(a.files)
    assert values(a) == values(b)
    assert len(make(class_folder, max_samples=100)) == 12
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    with pytest.raises(UsageError, match="max_samples must be a positive integer"):
        make(class_folder, max_samples=0)


def test_batches_never_alias(class_folder: Path) -> None:
    ds = make(class_folder)
    batches = list(ds.batches(3))
    batches[0].feed["input"][...] = -1.0
    assert not np.shares_memory(batches[0].feed["input"], batches[1].feed["input"])
    again = next(iter(ds.batches(3)))
    assert again.feed["input"].min() >= 0.0


def test_dtype_cast(class_folder: Path) -> None:
    ds = make(class_folder, dtype=np.float16)
    assert next(iter(ds.batches(2))).feed["input"].dtype == np.float16


def test_one_pixel_image(tmp_path: Path) -> None:
    Image.new("L", (1, 1), 9).save(tmp_path / "p.png")
    ds = make(tmp_path)
    out = next(iter(ds.batches(1))).feed["input"]
    assert out.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(out, 9.0)


def test_read_ahead_is_bounded(class_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = image_folder._decode

    def counting(path: Path, spec: PreprocessSpec) -> tuple[np.ndarray | None, str | None]:
        calls.append(path)
        return real(path, spec)

    monkeypatch.setattr(image_folder, "_decode", counting)
    ds = make(class_folder, workers=1)
    it = ds.batches(2)
    next(it)
    assert len(calls) <= 2 + 2 * 1 + 1 < 12  # batch + read-ahead, never the whole folder
    assert isinstance(it, Generator)
    it.close()  # stops the decoding threads


# --- bad images ---------------------------------------------------------------------------


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8), mode="L").save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mode="RGB").save(buf, format="JPEG")
    path.write_bytes(buf.getvalue()[:300])
    return path


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda d: truncated_png(d / "a" / "bad.png"),
        lambda d: truncated_jpeg(d / "a" / "bad.jpg"),
        lambda d: (
            (d / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG") and d / "a" / "bad.jpg"
        ),
    ],
    ids=["truncated-png", "truncated-jpeg", "garbage-jpeg"],
)
def test_bad_image_fail_and_skip(
    class_folder: Path, make_bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    bad = make_bad(class_folder)  # type: ignore[operator]
    ds = make(class_folder)
    with pytest.raises(
        DataError, match=r"cannot decode image '.*bad\.(png|jpg)': .*; remove it or pass --on-bad-image skip"
    ):
        list(ds.batches(4))
    assert str(bad) in str(pytest.raises(DataError, lambda: list(ds.batches(4))).value)

    skip = make(class_folder, on_bad_image="skip")
    assert len(skip) == 13
    with caplog.at_level(logging.WARNING, logger="quant.datasets.image_folder"):
        got = values(skip, 4)
        got_again = values(skip, 4)
    assert got == got_again == [10 * c + i for c in range(3) for i in range(4)]
    warnings = [r for r in caplog.records if "skipping image" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not once per pass
    s = skip.summary()
    assert s.num_skipped == 1 and s.skipped == (bad.relative_to(class_folder).as_posix(),)
    assert s.num_samples == 12 and skip.skipped == s.skipped


def test_all_images_bad(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"not a png")
    ds = make(tmp_path, on_bad_image="skip")
    with pytest.raises(DataError, match=r"all 1 selected images were unreadable \(first: 'x.png'\)"):
        list(ds.batches(2))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_gray_png(tmp_path / "big.png", 5, size=(8, 8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)  # Pillow only warns below 2x its limit
    ds = make(tmp_path)
    with pytest.raises(
        DataError, match=r"big\.png': 8x8 = 64 pixels exceeds Pillow's decompression-bomb limit of 40"
    ):
        list(ds.batches(1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # over 2x the limit: Pillow's own error
    with pytest.raises(DataError, match=r"big\.png': decompression-bomb protection: .*exceeds limit"):
        list(make(tmp_path).batches(1))
    skip = make(tmp_path, on_bad_image="skip")
    with pytest.raises(DataError, match="all 1 selected images were unreadable"):
        list(skip.batches(1))


# --- errors and fingerprints ----------------------------------------------------------------


def test_folder_errors(tmp_path: Path, class_folder: Path) -> None:
    with pytest.raises(DataError, match=r"data '.*nope': no such file or directory"):
        make(tmp_path / "nope")
    f = tmp_path / "file.png"
    write_gray_png(f, 1)
    with pytest.raises(DataError, match="not a folder; expected a folder of images"):
        make(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"data '.*empty': the folder is empty; expected image files"):
        make(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(DataError, match=r"no image files found \(1 other files\); expected files ending in"):
        make(other)
    with pytest.raises(UsageError, match="on_bad_image must be 'fail' or 'skip', got 'ignore'"):
        make(class_folder, on_bad_image="ignore")
    with pytest.raises(UsageError, match="workers must be a non-negative integer"):
        make(class_folder, workers=-1)
    with pytest.raises(UsageError, match="batch size must be a positive integer, got 0"):
        make(class_folder).batches(0)


def test_fingerprint(class_folder: Path) -> None:
    fp = make(class_folder).fingerprint()
    assert fp == make(class_folder).fingerprint() and len(fp) == 64
    assert (
        make(
            class_folder, preprocess=PreprocessSpec(height=4, width=4, channels=1, color="gray")
        ).fingerprint()
        != fp
    )
    content = make(class_folder, content_fingerprint=True).fingerprint()
    target = class_folder / "a" / "00.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert make(class_folder).fingerprint() != fp  # mtime is part of the default fingerprint
    assert make(class_folder, content_fingerprint=True).fingerprint() == content
    write_gray_png(target, 99)
    assert make(class_folder, content_fingerprint=True).fingerprint() != content


def test_symlink_loop_listed_once(tmp_path: Path) -> None:
    root = tmp_path / "r"
    write_gray_png(root / "sub" / "a.png", 1)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    ds = make(root)
    assert ds.files == ("sub/a.png",)
