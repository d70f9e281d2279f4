"""The TensorRT entry points (``quant build / eval --backend tensorrt|tensorrt-rtx``, ``--check-trt``,
``quant inspect --trt``); TensorRT, TensorRT-RTX and cuda-python are imported only here, lazily."""

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
    flavor: str = "tensorrt",
    exclude_from: str | Path | None = None,
) -> Any:
    """Build a TensorRT engine (``quant build --backend tensorrt|tensorrt-rtx``) and its ``.json``
    sidecar.

    ``trt_options`` is an ``EngineBuildOptions``. INT8 on TensorRT 8.6-10.x uses the cache through
    TensorRT's calibrator (``data`` lets TensorRT calibrate when the cache is missing); on 11.x and
    TensorRT-RTX (``flavor="tensorrt-rtx"``: no GPU needed) the Q/DQ model is built from the cache
    first, with ``trt_options.exclude`` and the exclusions of ``exclude_from`` (a fallback file)
    kept in float. A Q/DQ model is built as it is. Without the flavour's module this raises
    BackendUnavailableError naming the extra to install.
    """
    from dataclasses import replace

    from quant._io import check_output_not_input
    from quant.backends.tensorrt.builder import build_engine
    from quant.backends.tensorrt.flavors import import_flavor

    _, caps = import_flavor(flavor)  # fail first, with the install hint, before any work
    path = resolve_model_path(model)
    check_output_not_input(output, path, cache)
    if exclude_from is not None:
        from quant.sensitivity.io import read_exclude_file

        extra = tuple(p for p in read_exclude_file(exclude_from).exclude if p not in trt_options.exclude)
        trt_options = replace(trt_options, exclude=(*trt_options.exclude, *extra))
    dataset = None
    if data is not None:
        if not caps.has_implicit_int8:
            raise UsageError(
                f"--data feeds TensorRT's INT8 calibrator, which {caps.describe} does not have; drop --data "
                f"and pass --cache (run 'quant calibrate' first)"
            )
        dataset = open_data(prepare_model(path), data)
    return build_engine(path, output=output, options=trt_options, cache=cache, calib_dataset=dataset, flavor=flavor)


def check_tensorrt(
    model: str | Path,
    *,
    shapes: Sequence[Any] = (),
    flavor: str | None = None,
    compute_capabilities: Sequence[str] = (),
) -> Any:
    """Verify a Q/DQ ONNX model with NVIDIA's real ONNX parser and builder (``--check-trt``):
    TensorRT-RTX where installed (no GPU needed), else TensorRT. Nothing is written. Returns the
    ``NetworkView`` (layers by type, Q/DQ layers, engine size and build time); ModelError /
    QuantError with TensorRT's message, naming the node, when TensorRT refuses the model."""
    from quant.backends.tensorrt.check import check_with_tensorrt

    return check_with_tensorrt(model, flavor=flavor, shapes=shapes, compute_capabilities=compute_capabilities)


def inspect_tensorrt_network(model: str | Path, *, flavor: str | None = None) -> Any:
    """TensorRT's view of an ONNX model (``quant inspect model.onnx --trt``): the parsed network's
    layers by type and its Q/DQ layers, or what the parser refused (returned, not raised)."""
    from quant.backends.tensorrt.check import trt_network_view

    return trt_network_view(model, flavor=flavor)


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
    flavor: str = "tensorrt",
) -> Report:
    """``quant eval --backend tensorrt|tensorrt-rtx``: build one engine per precision into
    ``engine_dir`` and evaluate them with the TensorRT runner on the same samples (latency from
    CUDA events). TensorRT-RTX engines run only on a GPU of compute capability 8.0, 8.6, 8.9, 12.0
    or 12.1; elsewhere this fails before building, saying so."""
    from dataclasses import replace

    from quant.backends.tensorrt.builder import build_engine
    from quant.backends.tensorrt.flavors import import_flavor
    from quant.backends.tensorrt.runner import TrtRunner
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    _, caps = import_flavor(flavor)
    if caps.is_rtx:
        _require_rtx_gpu(trt_options.device)
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
            raise UsageError(f"precision int8 with --backend {flavor} needs --cache")
        engine = out_dir / f"{prepared.path.stem}.{p}.engine"
        res = build_engine(
            prepared.path,
            output=engine,
            options=replace(trt_options, precision=p),
            cache=cache if p == "int8" else None,
            flavor=flavor,
        )
        engines[p] = res.engine
        build_info[p] = {"backend": flavor, "engine": str(res.engine), "mode": res.mode, "trt_version": res.trt_version}
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


def _require_rtx_gpu(device: int) -> None:
    """UsageError unless this machine has a GPU TensorRT-RTX engines run on (checked before any
    engine is built)."""
    from quant.backends.tensorrt import cuda as cu
    from quant.backends.tensorrt.flavors import RTX_RUNTIME_COMPUTE_CAPABILITIES
    from quant.errors import BackendUnavailableError, QuantError

    supported = ", ".join(RTX_RUNTIME_COMPUTE_CAPABILITIES)
    hint = (
        f"TensorRT-RTX engines run on GPUs of compute capability {supported}; build them anywhere with "
        f"'quant build --backend tensorrt-rtx' and evaluate them on such a GPU"
    )
    try:
        cu.set_device(device)
        gpu = cu.device_info(device)
    except BackendUnavailableError as exc:
        raise UsageError(
            f"quant eval --backend tensorrt-rtx runs the engines here, which needs cuda-python "
            f"(pip install 'cuda-python>=12.0') and an NVIDIA GPU; {hint}"
        ) from exc
    except QuantError as exc:
        raise UsageError(f"quant eval --backend tensorrt-rtx found no usable NVIDIA GPU here ({exc}); {hint}") from exc
    if gpu.compute_capability not in RTX_RUNTIME_COMPUTE_CAPABILITIES:
        raise UsageError(f"this machine's GPU {gpu.describe()} cannot run TensorRT-RTX engines; {hint}")
