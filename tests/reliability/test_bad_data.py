"""Bad calibration / evaluation data through the real CLI: one clear line, the right exit code,
nothing written or damaged. Odd-but-valid images (1x1, 16-bit, other colour modes) must work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.models import conv_bn_relu_cnn
from tests.reliability.helpers import (
    assert_fails_cleanly,
    copy_demo_images,
    png_header_only,
    run_cli,
    save,
    snapshot,
    temp_leftovers,
    with_input_shape,
)

Capsys = pytest.CaptureFixture[str]


def _calibrate(capsys: Capsys, model: Path, cache: Path, *args: str | Path):
    return run_cli(capsys, "calibrate", model, "--cache", cache, *args)


@pytest.fixture
def out(demo_cache: Path) -> Path:
    """An output folder holding a previous calibration (cache, sidecar, statistics)."""
    return demo_cache.parent


def _arrays(tmp_path: Path) -> dict[str, Path]:
    """Every bad array file of the matrix, for the demo model (input 'input' [N, 1, 28, 28])."""
    rng = np.random.default_rng(0)
    good = rng.random((6, 1, 28, 28), dtype=np.float32)
    files = {
        "wrong_shape.npy": np.zeros((6, 3, 28, 28), np.float32),
        "wrong_rank.npy": np.zeros((6, 28, 28), np.float32),
        "strings.npy": np.array(["a", "b", "c"]),
        "complex.npy": np.zeros((6, 1, 28, 28), np.complex64),
    }
    paths = {}
    for name, arr in files.items():
        paths[name] = tmp_path / name
        np.save(paths[name], arr)
    paths["object.npy"] = tmp_path / "object.npy"
    np.save(paths["object.npy"], np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    paths["not_numpy.npy"] = tmp_path / "not_numpy.npy"
    paths["not_numpy.npy"].write_text("this is text, not an array\n")
    paths["missing_input.npz"] = tmp_path / "missing_input.npz"
    np.savez(paths["missing_input.npz"], images=good)
    paths["extra_key.npz"] = tmp_path / "extra_key.npz"
    np.savez(paths["extra_key.npz"], input=good, mask=np.ones(6))
    paths["labels_short.npz"] = tmp_path / "labels_short.npz"
    np.savez(paths["labels_short.npz"], input=good, labels=np.zeros(5, np.int64))
    paths["labels_float.npz"] = tmp_path / "labels_float.npz"
    np.savez(paths["labels_float.npz"], input=good, labels=np.zeros(6, np.float32))
    paths["no_samples.npy"] = tmp_path / "no_samples.npy"
    np.save(paths["no_samples.npy"], np.zeros((0, 1, 28, 28), np.float32))
    paths["not_zip.npz"] = tmp_path / "not_zip.npz"
    paths["not_zip.npz"].write_bytes(b"PK\x03\x04 truncated zip")
    paths["data.txt"] = tmp_path / "data.txt"
    paths["data.txt"].write_text("1,2,3\n")
    return paths


# Each row: data file, the words the message must contain (besides the file name).
ARRAY_ROWS = [
    ("wrong_shape.npy", ["[6, 3, 28, 28]", "input 'input'", "[N, 1, 28, 28]"]),
    ("wrong_rank.npy", ["[6, 28, 28]", "input 'input'"]),
    ("strings.npy", ["non-numeric dtype", "input 'input'"]),
    ("complex.npy", ["complex64"]),
    ("object.npy", ["object"]),
    ("not_numpy.npy", ["cannot read", ".npy"]),
    ("missing_input.npz", ["no array for model input 'input'", "'images'"]),
    ("extra_key.npz", ["'mask'", "not a model input"]),
    ("labels_short.npz", ["'labels' has 5 entries", "6 samples"]),
    ("labels_float.npz", ["'labels'", "integer"]),
    ("no_samples.npy", ["no samples"]),
    ("not_zip.npz", ["cannot read", ".npz"]),
    ("data.txt", ["unsupported file type"]),
]


@pytest.mark.parametrize(("name", "words"), ARRAY_ROWS, ids=[r[0] for r in ARRAY_ROWS])
def test_bad_array_files(
    capsys: Capsys, tmp_path: Path, out: Path, demo_model: Path, name: str, words: list[str]
) -> None:
    data = _arrays(tmp_path)[name]
    before = snapshot(out, data)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", data, "--force")
    assert_fails_cleanly(result, code=1, names=[name, *words], before=before, roots=(out, data))


def test_missing_data_path(capsys: Capsys, tmp_path: Path, out: Path, demo_model: Path) -> None:
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", tmp_path / "no_such_dir", "--force")
    assert_fails_cleanly(result, code=1, names=["no_such_dir", "no such file or directory"], before=before, roots=(out,))


def test_empty_folder_and_folder_without_images(capsys: Capsys, tmp_path: Path, out: Path, demo_model: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "no_images"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    (other / "labels.csv").write_text("x")
    (other / ".hidden.png").write_bytes(b"")  # hidden files are not images either
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", empty, "--force")
    assert_fails_cleanly(result, code=1, names=["empty", "the folder is empty"], before=before, roots=(out,))
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", other, "--force")
    assert_fails_cleanly(
        result, code=1, names=["no_images", "no image files found (2 other files)"], before=before, roots=(out,)
    )


@pytest.fixture
def bad_image_folder(tmp_path: Path) -> Path:
    """Ten good digits plus a corrupt JPEG and a truncated PNG."""
    folder = tmp_path / "images"
    good = copy_demo_images(folder, 10)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 40)
    data = good[0].read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    return folder


def test_bad_image_fail_names_the_file(capsys: Capsys, bad_image_folder: Path, out: Path, demo_model: Path) -> None:
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", bad_image_folder, "--force")
    line = assert_fails_cleanly(result, code=1, names=["corrupt.jpg", "--on-bad-image skip"], before=before, roots=(out,))
    assert "cannot decode image" in line


def test_bad_image_skip_counts_in_summary_and_report(
    capsys: Capsys, bad_image_folder: Path, tmp_path: Path, demo_model: Path
) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(
        capsys, "run", demo_model, "--data", bad_image_folder, "--eval-data", bad_image_folder,
        "--on-bad-image", "skip", "--precisions", "fp32,int8", "--out", run_dir,
    )
    assert result.code == 0, result.err
    assert "2 bad images skipped" in result.out
    warnings = [line for line in result.err_lines if "skipping image" in line]
    assert any("corrupt.jpg" in w for w in warnings) and any("truncated.png" in w for w in warnings)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["num_skipped"] == 2
    assert sorted(report["data"]["skipped"]) == ["corrupt.jpg", "truncated.png"]
    assert report["data"]["num_samples"] == 10
    assert report["calibration"]["data"]["num_skipped"] == 2
    assert not temp_leftovers(run_dir)


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((10_000, 10_000), ["100000000 pixels", "decompression-bomb"]),  # Pillow warns: quant refuses
        ((20_000, 20_000), ["decompression-bomb"]),  # Pillow raises DecompressionBombError
    ],
    ids=["over-limit", "over-twice-limit"],
)
def test_decompression_bomb(
    capsys: Capsys, tmp_path: Path, out: Path, demo_model: Path, size: tuple[int, int], words: list[str]
) -> None:
    folder = tmp_path / "images"
    copy_demo_images(folder, 3)
    png_header_only(folder / "huge.png", *size)
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", folder, "--force")
    assert_fails_cleanly(result, code=1, names=["huge.png", *words], before=before, roots=(out,))
    # skip: the bomb is left out, the three digits are used
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", folder, "--force", "--on-bad-image", "skip")
    assert result.code == 0, result.err
    assert "on 3 samples" in result.out and "1 bad images skipped" in result.out
    assert all("huge.png" in line for line in result.err_lines)  # only the skip warning, no Pillow noise


def test_odd_but_valid_images_work(capsys: Capsys, tmp_path: Path, demo_model: Path) -> None:
    """1x1, 16-bit, RGB, RGBA, palette, 1-bit, CMYK, 32-bit int and float images are converted
    (gray, resized to 28x28) rather than refused."""
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("L", (1, 1), 200).save(folder / "one_pixel.png")
    Image.fromarray(np.full((40, 30), 65535, np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("RGB", (28, 28), (10, 200, 30)).save(folder / "rgb.png")
    Image.new("RGBA", (28, 28), (10, 200, 30, 100)).save(folder / "rgba.png")
    Image.new("P", (28, 28)).save(folder / "palette.png")
    Image.new("1", (28, 28)).save(folder / "bilevel.png")
    Image.new("CMYK", (28, 28)).save(folder / "cmyk.jpg")
    Image.new("I", (28, 28)).save(folder / "int32.tif")
    Image.new("F", (28, 28)).save(folder / "float32.tif")
    assert Image.open(folder / "sixteen_bit.png").mode.startswith("I")
    cache = tmp_path / "odd.cache"
    result = _calibrate(capsys, demo_model, cache, "--data", folder)
    assert result.code == 0, result.err
    assert "on 9 samples" in result.out
    side = json.loads((tmp_path / "odd.cache.json").read_text())
    # 16-bit white maps to 1.0 like 8-bit white (not 257): pixels are scaled to the 8-bit range first
    assert side["calibration"]["amax"]["input"] <= 1.0 + 1e-6


def test_sixteen_bit_png_matches_eight_bit(tmp_path: Path) -> None:
    from quant.datasets.preprocess import PreprocessSpec, preprocess_image

    ramp8 = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    ramp16 = ramp8.astype(np.uint16) * 257
    Image.fromarray(ramp16).save(tmp_path / "r16.png")
    Image.fromarray(ramp8).save(tmp_path / "r8.png")
    spec = PreprocessSpec(height=32, width=32, channels=1, color="gray")
    a = preprocess_image(Image.open(tmp_path / "r16.png"), spec)
    b = preprocess_image(Image.open(tmp_path / "r8.png"), spec)
    np.testing.assert_allclose(a, b, atol=1 / 255)


def test_image_input_of_wrong_channel_count(capsys: Capsys, tmp_path: Path) -> None:
    """A model input with 4 channels cannot be fed from images: the message names the input."""
    model = save(with_input_shape(conv_bn_relu_cnn(), ["N", 4, 16, 16]), tmp_path / "four_channels.onnx")
    folder = tmp_path / "images"
    copy_demo_images(folder, 2)
    before = snapshot(tmp_path)
    result = _calibrate(capsys, model, tmp_path / "m.cache", "--data", folder)
    assert_fails_cleanly(
        result, code=1, names=["input 'input'", "4, 16, 16]", "no channel dimension of 1 or 3"],
        before=before, roots=(tmp_path,),
    )


def test_color_images_for_three_channel_model_work(capsys: Capsys, tmp_path: Path) -> None:
    """Gray digits feed a 3-channel model (replicated), the reverse of the demo's RGB->gray."""
    model = save(conv_bn_relu_cnn(), tmp_path / "rgb_model.onnx")
    folder = tmp_path / "images"
    copy_demo_images(folder, 4)
    result = _calibrate(capsys, model, tmp_path / "m.cache", "--data", folder)
    assert result.code == 0, result.err


def test_fewer_samples_than_one_batch(capsys: Capsys, tmp_path: Path, demo_model: Path) -> None:
    """Dynamic batch: 3 samples with --batch-size 8 is one short batch, and works."""
    data = tmp_path / "three.npy"
    np.save(data, np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    result = _calibrate(capsys, demo_model, tmp_path / "m.cache", "--data", data, "--batch-size", "8")
    assert result.code == 0, result.err
    assert "on 3 samples" in result.out


def test_fewer_samples_than_a_fixed_batch(capsys: Capsys, tmp_path: Path) -> None:
    """A model with a fixed batch of 8 and 3 samples: the message says so and how to fix it."""
    model = save(with_input_shape(conv_bn_relu_cnn(), [8, 3, 16, 16]), tmp_path / "fixed8.onnx")
    data = tmp_path / "three.npy"
    np.save(data, np.zeros((3, 3, 16, 16), np.float32))
    before = snapshot(tmp_path)
    result = _calibrate(capsys, model, tmp_path / "m.cache", "--data", data)
    assert_fails_cleanly(
        result, code=1, names=["a batch of 3 samples", "fixed8.onnx", "fixed batch size of 8"],
        before=before, roots=(tmp_path,),
    )


@pytest.mark.parametrize(
    ("option", "value"), [("--max-samples", "0"), ("--batch-size", "0"), ("--max-samples", "-3"), ("--workers", "0")]
)
def test_bad_counts_are_usage_errors(
    capsys: Capsys, out: Path, demo_model: Path, option: str, value: str
) -> None:
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", "demo:calib", option, value)
    assert_fails_cleanly(result, code=2, names=[option], before=before, roots=(out,))


def test_unknown_demo_split(capsys: Capsys, out: Path, demo_model: Path) -> None:
    before = snapshot(out)
    result = _calibrate(capsys, demo_model, out / "model.cache", "--data", "demo:train", "--force")
    assert_fails_cleanly(result, code=1, names=["demo:train", "demo:calib"], before=before, roots=(out,))


def test_data_for_a_two_input_model_from_images(capsys: Capsys, tmp_path: Path) -> None:
    from tests.models import two_input_two_output

    model = save(two_input_two_output(), tmp_path / "two.onnx")
    folder = tmp_path / "images"
    copy_demo_images(folder, 2)
    before = snapshot(tmp_path)
    result = _calibrate(capsys, model, tmp_path / "m.cache", "--data", folder)
    assert_fails_cleanly(result, code=1, names=["'input'", "'input2'", ".npz"], before=before, roots=(tmp_path,))


def test_error_line_is_last_without_quiet(capsys: Capsys, tmp_path: Path, demo_model: Path) -> None:
    """Without --quiet the progress log precedes it, but the error is still one line, last."""
    result = run_cli(capsys, "calibrate", demo_model, "--data", tmp_path / "nope", "--cache", tmp_path / "m.cache",
                     quiet=False)
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err_lines[-1].startswith("quant: error: data ")
    assert sum("error" in line for line in result.err_lines) == 1


def test_decompression_bomb_in_a_real_process(tmp_path: Path, demo_model: Path) -> None:
    """Pillow's DecompressionBombWarning would print two raw lines on a real stderr (pytest captures
    warnings in-process, so this runs `python -m quant`): the CLI silences it, quant's line stays alone."""
    import subprocess
    import sys

    folder = tmp_path / "images"
    copy_demo_images(folder, 2)
    png_header_only(folder / "huge.png", 10_000, 10_000)
    proc = subprocess.run(
        [sys.executable, "-m", "quant", "-q", "calibrate", str(demo_model), "--data", str(folder),
         "--cache", str(tmp_path / "m.cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "huge.png" in lines[0] and "decompression-bomb" in lines[0], proc.stderr
    assert not (tmp_path / "m.cache").exists()
