"""open_dataset: one entry point from a data path (or "demo:calib" / "demo:eval") to a Dataset."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from quant.backends.base import TensorSpec
from quant.datasets.base import Dataset
from quant.datasets.preprocess import (
    PreprocessOverrides,
    PreprocessSpec,
    check_spec_fits,
    spec_from_input,
)
from quant.errors import DataError, UsageError

logger = logging.getLogger(__name__)

DEMO_SPLITS: tuple[str, ...] = ("demo:calib", "demo:eval")


def _demo_dir(name: str) -> Path:
    from quant.demo import demo_calib_dir, demo_eval_dir

    if name == "demo:calib":
        return demo_calib_dir()
    if name == "demo:eval":
        return demo_eval_dir()
    raise DataError(f"data '{name}': unknown demo split; use {' or '.join(DEMO_SPLITS)}")


def _image_spec(
    source: str,
    inputs: Sequence[TensorSpec],
    preprocess: PreprocessSpec | PreprocessOverrides | str | None,
) -> tuple[TensorSpec, PreprocessSpec]:
    if len(inputs) != 1:
        names = ", ".join(f"'{s.name}'" for s in inputs) or "none"
        raise DataError(
            f"data '{source}' is a folder of images, which feeds exactly one model input, but the model "
            f"has {len(inputs)} inputs ({names}); use an .npz file with one key per input name"
        )
    spec = inputs[0]
    if isinstance(preprocess, PreprocessSpec):
        check_spec_fits(preprocess, spec)
        return spec, preprocess
    return spec, spec_from_input(spec, preprocess)


def open_dataset(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[TensorSpec],
    preprocess: PreprocessSpec | PreprocessOverrides | str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    on_bad_image: str = "fail",
    workers: int | None = None,
) -> Dataset:
    """Open calibration / evaluation data for a model with inputs ``inputs``.

    ``path``: a folder of images (optionally one subfolder per class), a ``.npy`` file (models
    with one input), a ``.npz`` file (one key per input, optional ``labels``), or ``"demo:calib"``
    / ``"demo:eval"`` (the embedded MNIST demo). ``preprocess`` applies to images only: a full
    :class:`PreprocessSpec` (checked against the input shape), overrides / a preset name resolved
    with :func:`spec_from_input`, or None for the default ("unit"). ``max_samples`` / ``seed``
    select a deterministic random subset kept in order.
    """
    from quant.datasets._common import check_max_samples

    check_max_samples(max_samples)
    if not inputs:
        raise UsageError("open_dataset needs the model's input specs (inputs=...); the model has no inputs?")
    text = os.fspath(path)

    if isinstance(text, str) and text.startswith("demo:"):
        from quant.datasets.image_folder import ImageFolderDataset

        root = _demo_dir(text)
        spec, pre = _image_spec(text, inputs, preprocess)
        return ImageFolderDataset(
            root,
            input_name=spec.name,
            preprocess=pre,
            dtype=spec.dtype,
            max_samples=max_samples,
            seed=seed,
            on_bad_image=on_bad_image,
            workers=workers,
            content_fingerprint=True,
            kind="demo",
        )

    p = Path(text)
    if not p.exists():
        raise DataError(f"data '{text}': no such file or directory")
    if p.is_dir():
        from quant.datasets.image_folder import ImageFolderDataset

        spec, pre = _image_spec(text, inputs, preprocess)
        return ImageFolderDataset(
            p,
            input_name=spec.name,
            preprocess=pre,
            dtype=spec.dtype,
            max_samples=max_samples,
            seed=seed,
            on_bad_image=on_bad_image,
            workers=workers,
        )

    suffix = p.suffix.lower()
    if suffix in (".npy", ".npz") and preprocess is not None:
        logger.warning(
            "data '%s' holds arrays: the image preprocessing (%s) is not applied", text, preprocess
        )
    if suffix == ".npy":
        from quant.datasets.arrays import NpyDataset

        if len(inputs) != 1:
            names = ", ".join(f"'{s.name}'" for s in inputs)
            raise DataError(
                f"data '{text}' is a single .npy array but the model has {len(inputs)} inputs ({names}); "
                "use an .npz file with one key per input name"
            )
        return NpyDataset(p, input=inputs[0], max_samples=max_samples, seed=seed)
    if suffix == ".npz":
        from quant.datasets.arrays import NpzDataset

        return NpzDataset(p, inputs=inputs, max_samples=max_samples, seed=seed)
    raise DataError(
        f"data '{text}': unsupported file type; give a folder of images, a .npy or .npz file, "
        f"or {' / '.join(DEMO_SPLITS)}"
    )
