"""Models and data, loaded once for every stage: the cleaned, fingerprinted model
(:class:`PreparedModel`), its dataset, the batch size it accepts, and the input files that no
output may overwrite. The bottom of the pipeline: it imports no other pipeline module."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import DataOptions
from quant.errors import DataError

if TYPE_CHECKING:
    import onnx

    from quant.backends.base import TensorSpec
    from quant.datasets.base import Dataset
    from quant.fingerprint import ModelFingerprint

log = logging.getLogger(__name__)

DEMO = "demo"


@dataclass(frozen=True)
class PreparedModel:
    """A user's model loaded once: its cleaned form and the fingerprint of the original.

    The original ModelProto is not kept: nothing reads it after fingerprinting and clean-up, and
    for a ResNet-50 it is 100 MB of peak memory during calibration."""

    path: Path
    clean: onnx.ModelProto
    fingerprint: ModelFingerprint
    inputs: tuple[TensorSpec, ...]

    @property
    def name(self) -> str:
        return self.path.name


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` or ``"demo"`` is the embedded demo model."""
    if model is None or str(model) == DEMO:
        from quant.demo import demo_model_path

        return demo_model_path()
    return Path(model)


def prepare_model(model: str | Path | None) -> PreparedModel:
    """Load, fingerprint and clean a model (Identity removal, constant and BatchNorm folding)."""
    from quant.fingerprint import model_fingerprint
    from quant.graph.cleanup import cleanup
    from quant.graph.load import input_specs, load_model

    path = resolve_model_path(model)
    original = load_model(path)
    fingerprint = model_fingerprint(original)
    clean = cleanup(original, in_place=True)  # returns a compact copy; the original is garbage
    del original
    return PreparedModel(
        path=path,
        clean=clean,
        fingerprint=fingerprint,
        inputs=tuple(input_specs(clean)),
    )


def effective_batch_size(inputs: Sequence[TensorSpec], requested: int) -> int:
    """A model whose inputs have a fixed batch dimension can only take that batch size."""
    fixed = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if not fixed:
        return requested
    if len(fixed) > 1:
        raise DataError(f"model inputs have different fixed batch sizes {sorted(fixed)}; cannot batch them")
    (size,) = fixed
    if size != requested:
        log.info("model input has a fixed batch size of %d; using it instead of --batch-size %d", size, requested)
    return int(size)


def open_data(prepared: PreparedModel, data: DataOptions) -> Dataset:
    """Open a dataset for the model's inputs (image folder, npy/npz, demo split)."""
    from quant.datasets.loader import open_dataset
    from quant.datasets.preprocess import parse_preprocess

    preprocess = None
    if data.preprocess:
        preprocess = parse_preprocess(data.preprocess)
    return open_dataset(
        data.path,
        inputs=list(prepared.inputs),
        preprocess=preprocess,
        max_samples=data.max_samples,
        seed=data.seed,
        on_bad_image=data.on_bad_image,
        workers=data.workers,
    )


def data_file(data: DataOptions | None) -> Path | None:
    """The data path when it is a file (.npy / .npz) that an output must never overwrite."""
    if data is None or data.path.startswith("demo:"):
        return None
    p = Path(data.path)
    return p if p.is_file() else None


def sidecar_of(cache: str | Path | None) -> Path | None:
    """The sidecar next to ``cache`` (an input too: ``read_cache`` reads it), or None."""
    from quant.cache.io import sidecar_path

    return None if cache is None else sidecar_path(cache)


def capped(data: DataOptions, default: int) -> DataOptions:
    """``data`` with ``max_samples`` set to ``default`` when the user gave none."""
    from dataclasses import replace

    if data.max_samples is not None:
        return data
    log.info("using at most %d samples (--max-samples)", default)
    return replace(data, max_samples=default)


def with_node_names(prepared: PreparedModel) -> PreparedModel:
    """``prepared`` whose cleaned model has every node named (``<op_type>_<index>`` for unnamed
    ones, the label ``quant inspect`` shows), so that exclusions by node name can reach them."""
    from dataclasses import replace

    from quant.sensitivity.switchable import name_unnamed_nodes

    named = name_unnamed_nodes(prepared.clean)
    return prepared if named is prepared.clean else replace(prepared, clean=named)


def model_section(prepared: PreparedModel) -> dict[str, Any]:
    """The report's ``model`` section: path, fingerprint, input and output specs."""
    from quant.graph.load import output_specs

    return {
        "path": str(prepared.path),
        "fingerprint": prepared.fingerprint.to_dict(),
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in prepared.inputs],
        "outputs": [
            {"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in output_specs(prepared.clean)
        ],
    }
