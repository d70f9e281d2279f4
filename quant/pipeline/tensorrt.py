"""The TensorRT entry points (``quant build / eval --backend tensorrt``); TensorRT and cuda-python
are imported only here, lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import DataOptions, EvalOptions
from quant.errors import UsageError
from quant.pipeline.prepare import effective_batch_size, open_data, prepare_model, resolve_model_path
from quant.pipeline.report import make_report

if TYPE_CHECKING:
    from quant.report.schema import Report


def build_tensorrt_engine(
    model: str | Path | None,
    *,
    output: str | Path,
    trt_options: Any,
    cache: str | Path | None = None,
    data: DataOptions | None = None,
) -> Any:
    """Build a TensorRT engine (``quant build --backend tensorrt``) and its ``.json`` sidecar.

    ``trt_options`` is an ``EngineBuildOptions``. INT8 on TensorRT 8.6-10.x uses the cache through
    TensorRT's calibrator (``data`` lets TensorRT calibrate when the cache is missing); on 11.x the
    Q/DQ model is built from the cache first. Without TensorRT this raises
    BackendUnavailableError naming the extra to install.
    """
    from quant._io import check_output_not_input
    from quant.backends.tensorrt import import_tensorrt
    from quant.backends.tensorrt.builder import build_engine

    import_tensorrt()  # fail first, with the install hint, before any work
    path = resolve_model_path(model)
    check_output_not_input(output, path, cache)
    dataset = open_data(prepare_model(path), data) if data is not None else None
    return build_engine(path, output=output, options=trt_options, cache=cache, calib_dataset=dataset)


def evaluate_tensorrt(
    model: str | Path | None,
    data: DataOptions,
    *,
    trt_options: Any,
    engine_dir: str | Path,
    cache: str | Path | None = None,
    options: EvalOptions | None = None,
    warmup: int = 3,
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> Report:
    """``quant eval --backend tensorrt``: build one engine per precision into ``engine_dir`` and
    evaluate them with the TensorRT runner on the same samples (latency from CUDA events)."""
    from dataclasses import replace

    from quant.backends.tensorrt import import_tensorrt
    from quant.backends.tensorrt.builder import build_engine
    from quant.backends.tensorrt.runner import TrtRunner
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    import_tensorrt()
    options = options or EvalOptions()
    prepared = prepare_model(model)
    dataset = open_data(prepared, data)
    out_dir = Path(engine_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engines: dict[str, Any] = {}
    build_info: dict[str, Any] = {}
    for p in dict.fromkeys(("fp32", *options.precisions)):
        if p == "int8-ort":
            raise UsageError("precision int8-ort is an ONNX Runtime form; it has no TensorRT engine")
        if p == "int8" and cache is None:
            raise UsageError("precision int8 with --backend tensorrt needs --cache")
        engine = out_dir / f"{prepared.path.stem}.{p}.engine"
        res = build_engine(
            prepared.path,
            output=engine,
            options=replace(trt_options, precision=p),
            cache=cache if p == "int8" else None,
        )
        engines[p] = res.engine
        build_info[p] = {"backend": "tensorrt", "engine": str(res.engine), "mode": res.mode, "trt_version": res.trt_version}
    result = run_eval(
        engines,
        dataset,
        batch_size=effective_batch_size(prepared.inputs, data.batch_size),
        warmup=options.warmup,
        progress=progress,
        classifier_output=options.classifier_output,
        runner_factory=lambda path: TrtRunner(path, warmup=warmup),
    )
    rep = make_report(prepared, dataset, result, cache=cache, build_info=build_info, command=command)
    if report is not None:
        save_report(rep, report)
    return rep
