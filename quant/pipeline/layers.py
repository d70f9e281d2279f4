"""Per-layer analysis: the quantization error of each INT8 layer against FP32 and the activation
histograms of the worst ones (``report.extra["layers"]`` / ``["histograms"]``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import DataOptions
from quant.errors import CacheError
from quant.pipeline.prepare import PreparedModel, effective_batch_size, open_data
from quant.pipeline.quantize import precision_models

if TYPE_CHECKING:
    import onnx

    from quant.datasets.base import Dataset
    from quant.report.schema import Report


def analyze_layers(
    prepared: PreparedModel,
    data: DataOptions | Dataset,
    int8_model: onnx.ModelProto,
    *,
    cache: str | Path | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    worst: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Per-layer quantization error of ``int8_model`` against the FP32 model, plus histograms.

    Runs both models on the first ``max_samples`` samples of ``data`` (default 64; see
    :mod:`quant.eval.layers`), and takes the |x| histograms of the worst layers' quantized inputs
    from the statistics file next to ``cache`` (``<cache>.stats.npz``). Returns
    ``{"layers": ..., "histograms": ...}`` for ``report.extra`` (:mod:`quant.report.sections`).
    A model without INT8 layers, or a cache without statistics, gives sections that say so.
    """
    from quant.eval.layers import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, layer_errors, quantized_layers
    from quant.report.sections import WORST_LAYERS, layer_report_sections

    max_samples = DEFAULT_MAX_SAMPLES if max_samples is None else max_samples
    worst = WORST_LAYERS if worst is None else worst
    if isinstance(data, DataOptions):
        requested = min(batch_size or data.batch_size, DEFAULT_BATCH_SIZE)
        dataset = open_data(prepared, data)
    else:
        requested = batch_size or DEFAULT_BATCH_SIZE
        dataset = data
    bs = effective_batch_size(prepared.inputs, requested)
    source = dataset.summary().source
    amax: dict[str, float] = {}
    method: str | None = None
    stats = None
    stats_note: str | None = "no calibration cache given: histograms come from its statistics file"
    if cache is not None:
        amax, method, stats, stats_note = _cache_stats(cache, prepared)
    if not quantized_layers(int8_model):
        why = "no layer of the INT8 model runs in INT8 (everything excluded or skipped)"
        return layer_report_sections(
            [], amax=amax, stats=None, method=method, batch_size=bs, max_samples=max_samples,
            data=source, layers_unavailable=why,
        )
    errors = layer_errors(
        prepared.clean,
        int8_model,
        dataset,
        batch_size=bs,
        max_samples=max_samples,
        progress=progress,
        threads=threads,
        reference_name=prepared.name,
        quantized_name=f"{prepared.path.stem} (int8)",
    )
    return layer_report_sections(
        errors, amax=amax, stats=stats, method=method, batch_size=bs, max_samples=max_samples,
        data=source, worst=worst, stats_unavailable=stats_note,
    )


def _cache_stats(cache: str | Path, prepared: PreparedModel) -> tuple[dict[str, float], Any, Any, str | None]:
    """(amax, method (or per tensor the method --method auto chose), statistics or None, why no
    statistics) of a cache."""
    from quant.cache.io import read_cache
    from quant.calibrators.stats_io import load_stats, stats_path

    loaded = read_cache(cache)
    amax = {k: float(v) for k, v in loaded.amax.items() if v is not None}
    method: Any = loaded.method or loaded.parsed.algorithm
    choice = (loaded.auto or {}).get("choice")
    if isinstance(choice, dict):
        method = choice  # --method auto: the histograms name each tensor's own method
    path = stats_path(cache)
    if not path.exists():
        return amax, method, None, f"no statistics file '{path}' next to the cache (quant calibrate writes one)"
    try:
        stats, meta = load_stats(path)
    except CacheError as exc:
        return amax, method, None, str(exc)
    recorded = meta.get("model_fingerprint")
    if isinstance(recorded, dict) and recorded.get("graph") not in (None, prepared.fingerprint.graph):
        return amax, method, None, f"statistics file '{path}' was made for another model; recalibrate"
    return amax, method, stats, None


def with_layer_sections(
    rep: Report,
    prepared: PreparedModel,
    dataset: Dataset,
    models: dict[str, onnx.ModelProto],
    *,
    cache: str | Path | None,
    exclude: Sequence[str],
    batch_size: int,
    progress: bool,
    threads: int | None,
) -> Report:
    """``rep`` with the per-layer sections added to ``extra`` (the INT8 model built from the cache
    when it was not evaluated)."""
    from dataclasses import replace

    from quant.eval.layers import DEFAULT_BATCH_SIZE

    int8 = models.get("int8")
    if int8 is None:
        built, _ = precision_models(prepared, ("int8",), cache=cache, exclude=exclude)
        int8 = built["int8"]
    sections = analyze_layers(
        prepared, dataset, int8, cache=cache, batch_size=min(batch_size, DEFAULT_BATCH_SIZE), progress=progress,
        threads=threads,
    )
    return replace(rep, extra={**rep.extra, **sections})
