"""quant.datasets: calibration and evaluation data as re-iterable, streaming, seeded datasets.

Image folders (decoded with Pillow in threads), .npy / .npz arrays and the embedded MNIST demo,
all behind :func:`open_dataset`. Importing this package imports NumPy only (Pillow is imported
when images are decoded).
"""

from quant.datasets.arrays import NpyDataset, NpzDataset
from quant.datasets.base import Batch, Dataset, DataSummary
from quant.datasets.image_folder import IMAGE_EXTENSIONS, ImageFolderDataset
from quant.datasets.loader import DEMO_SPLITS, open_dataset
from quant.datasets.preprocess import (
    PRESETS,
    PreprocessOverrides,
    PreprocessSpec,
    parse_preprocess,
    preprocess_image,
    spec_from_input,
)

__all__ = [
    "DEMO_SPLITS",
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "Batch",
    "DataSummary",
    "Dataset",
    "ImageFolderDataset",
    "NpyDataset",
    "NpzDataset",
    "PreprocessOverrides",
    "PreprocessSpec",
    "open_dataset",
    "parse_preprocess",
    "preprocess_image",
    "spec_from_input",
]
