"""Calibration over ONNX Runtime: run the data through the model once, reducing as it goes.

The model runs on a copy with the requested tensors added as graph outputs; only those tensors
are fetched, each is reduced into the :class:`StatsCollector` as soon as ORT returns it, and the
arrays are dropped before the next batch. Memory therefore grows with tensors x bins, never with
the number of samples. One pass suffices: the power-of-two histograms grow exactly (see
:mod:`quant.calibrators.stats`), so no range pass is needed before the histogram pass.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from quant.calibrators.methods import CalibConfig, compute_amax
from quant.calibrators.result import TENSOR_SCOPES, CalibrationResult
from quant.calibrators.stats import DEFAULT_NUM_BINS, StatsCollector
from quant.errors import CalibrationError, DataError, UsageError

if TYPE_CHECKING:
    import onnx

    from quant.datasets.base import Dataset

logger = logging.getLogger(__name__)


def _check_tensors(model: onnx.ModelProto, tensors: Sequence[str], model_name: str) -> list[str]:
    names = list(dict.fromkeys(tensors))
    if not names:
        raise CalibrationError(
            f"no tensors to calibrate in model '{model_name}'; pass at least one tensor name"
        )
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    activations = {i.name for i in graph.input if i.name not in weights}
    activations.update(o for node in graph.node for o in node.output if o)
    for name in names:
        if name in activations:
            continue
        if name in weights:
            raise CalibrationError(
                f"tensor '{name}' of model '{model_name}' is a weight (initializer), not an activation; "
                "calibrate activations only (weights get per-channel ranges from their values)"
            )
        missing = [n for n in names if n not in activations and n not in weights]
        more = f" ({len(missing) - 1} more tensors are missing too)" if len(missing) > 1 else ""
        raise CalibrationError(
            f"tensor '{name}' is not in model '{model_name}'{more}; check the tensor names "
            "(was the list made for another model, or before graph cleanup?)"
        )
    return names


def collect_statistics(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    *,
    batch_size: int = 8,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> tuple[StatsCollector, int]:
    """Run ``dataset`` through ``model`` and collect statistics of ``tensors``.

    Returns the collector and the number of samples seen. Errors: a tensor not in the model ->
    CalibrationError naming it; a batch whose feed does not fit the model's inputs -> DataError
    naming the input, its shape and the expected shape (checked before ORT runs); NaN / inf
    activations -> CalibrationError naming the tensor and the batch; no samples -> DataError.
    ``model_name`` names the model in messages (default: the graph name).
    """
    from tqdm import tqdm

    from quant.backends.onnxruntime import OrtRunner

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer (got {batch_size!r})")
    display = model_name or model.graph.name or "<in-memory model>"
    names = _check_tensors(model, tensors, display)
    collector = StatsCollector(num_bins)
    seen = 0
    with (
        OrtRunner(model, extra_outputs=names, threads=threads, name=display) as runner,
        tqdm(
            total=len(dataset),
            unit="sample",
            desc="calibrating",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        for index, batch in enumerate(dataset.batches(batch_size)):
            outputs = runner.infer(batch.feed, outputs=names)
            for name in names:
                collector.collect(name, outputs.pop(name), batch_index=index)
            size = batch.size
            seen += size
            bar.update(size)
    if seen == 0:
        raise DataError(
            f"dataset '{dataset.summary().source}' gave no samples; calibration needs at least one "
            "(check the data path, its contents and --max-samples)"
        )
    logger.info("collected statistics of %d tensors over %d samples", len(names), seen)
    return collector, seen


def calibrate(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    config: CalibConfig,
    *,
    model_fingerprint: Mapping[str, str] | str,
    data_fingerprint: str | None = None,
    scope: str = "all",
    batch_size: int = 8,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> tuple[CalibrationResult, StatsCollector]:
    """Collect statistics of ``tensors`` and compute their ranges with ``config``.

    Returns the result (ranges, "no range" tensors, provenance) and the collector, whose
    statistics can be merged with other shards or used with another method later.
    ``data_fingerprint`` defaults to ``dataset.fingerprint()``; ``scope`` ("all" | "qdq") records
    which tensors were calibrated.
    """
    if scope not in TENSOR_SCOPES:
        raise UsageError(f"--scope must be one of {', '.join(TENSOR_SCOPES)} (got {scope!r})")
    collector, num_samples = collect_statistics(
        model,
        dataset,
        tensors,
        batch_size=batch_size,
        num_bins=config.num_bins,
        progress=progress,
        threads=threads,
        model_name=model_name,
    )
    ranges = compute_amax(collector.stats(), config)
    result = CalibrationResult.from_ranges(
        ranges,
        method=config.method,
        params=config.params(),
        num_samples=num_samples,
        model_fingerprint=model_fingerprint,
        data_fingerprint=data_fingerprint if data_fingerprint is not None else dataset.fingerprint(),
        tensors_scope=scope,
    )
    logger.info(
        "calibrated %d tensors with %s (%d without a range)",
        len(result.amax),
        config.method,
        len(result.no_range),
    )
    return result, collector
