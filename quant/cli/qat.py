"""quant qat: quantization-aware fine-tuning in PyTorch, exported as Q/DQ ONNX (the ``qat`` extra).

A thin layer over :mod:`quant.qat.api`; PyTorch and quant.qat are imported inside the command,
so ``quant --help`` works without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from quant.cli.options import COMMA_LIST, echo, flatten, progress_option, verbose_option, want_progress
from quant.config import CALIBRATION_METHODS
from quant.errors import BackendUnavailableError, UsageError

_LABELS = {
    "fp32": "FP32",
    "ptq-int8": "PTQ INT8",
    "qat-init": "QAT INT8 (before fine-tuning)",
    "qat-int8": "QAT INT8",
}


def format_accuracy_table(accuracy: dict[str, float | None]) -> str:
    """The side-by-side accuracy table printed by ``quant qat``."""
    ref = accuracy.get("fp32")
    width = max(len(v) for v in _LABELS.values())
    lines = [f"{'model':<{width}}  {'top-1':>8}  {'vs FP32':>8}"]
    for key, value in accuracy.items():
        label = _LABELS.get(key, key)
        if value is None:
            lines.append(f"{label:<{width}}  {'n/a':>8}  {'':>8}")
            continue
        delta = "" if key == "fp32" or ref is None else f"{value - ref:+.2f}"
        lines.append(f"{label:<{width}}  {value:>7.2f}%  {delta:>8}")
    return "\n".join(lines)


def _import_qat() -> Any:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError(
            "quant qat needs PyTorch, which is not installed; install the qat extra: pip install 'quant[qat]'"
        ) from exc
    from quant.qat import api

    return api


@click.command(
    "qat",
    epilog="""\b
Examples:
  quant qat --demo                                # MNIST demo: FP32 vs PTQ INT8 vs QAT INT8
  quant qat --model mypkg.models:build_net --weights ckpt.pt --input-shape 3,224,224 \\
            --data train_images/ --eval-data val/ --epochs 1 --cache model.cache -o model.qat.onnx
  quant qat --model model.onnx --data train.npz --eval-data val.npz -o model.qat.onnx
""",
)
@click.option("--demo", is_flag=True, help="Run on the embedded MNIST demo (no other input needed).")
@click.option("--model", "model", default=None, metavar="MODULE:FACTORY|MODEL.onnx",
              help="A factory returning a torch.nn.Module (importable; the current directory is on the path), "
              "or an ONNX model rebuilt in PyTorch (Conv/BatchNorm/Relu/MaxPool/Flatten/Gemm CNNs).")
@click.option("--weights", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="State dict for the factory's model (torch.save of model.state_dict()).")
@click.option("--data", default=None, metavar="PATH",
              help="Labelled training data: image folder with one subfolder per class, or .npz with 'labels'.")
@click.option("--calib-data", default=None, metavar="PATH", help="Calibration data (default: a subset of --data).")
@click.option("--eval-data", default=None, metavar="PATH",
              help="Labelled evaluation data: FP32, PTQ INT8 and QAT INT8 are compared on it.")
@click.option("--input-shape", default=None, metavar="C,H,W", help="Input shape without batch (factory models).")
@click.option("--input-name", default="input", show_default=True, help="ONNX input name (factory models).")
@click.option("--output-name", default="output", show_default=True, help="ONNX output name (factory models).")
@click.option("--preprocess", default=None, metavar="SPEC", help="Image preprocessing (as for quant calibrate).")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Peak learning rate.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam", "adamw"]), default="sgd", show_default=True,
              help="SGD uses momentum 0.9.")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default="cosine",
              show_default=True, help="Learning-rate decay over all steps.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Cap on steps per epoch.")
@click.option("--bn-stats/--freeze-bn", "bn_stats", default=False, show_default=True,
              help="Update BatchNorm running statistics while fine-tuning (default: frozen).")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS), default="entropy", show_default=True,
              help="Calibration method of the activation ranges (as for quant calibrate).")
@click.option("--percentile", type=click.FloatRange(min=0, max=100, min_open=True), default=99.99, show_default=True)
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True,
              help="At most this many calibration samples (seeded subset).")
@click.option("--cache", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Initialise activation ranges from this calibration cache where tensor names match.")
@click.option("--include", multiple=True, type=COMMA_LIST, metavar="NAMES",
              help="Module names (wildcards) to quantize (default: all Conv/ConvTranspose/Linear/Add).")
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES",
              help="Module names (wildcards) kept in float.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write a checkpoint after every epoch here.")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint when it exists.")
@click.option("--device", default=None, metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The QAT INT8 Q/DQ ONNX model (default with --demo: demo.qat.onnx).")
@click.option("--report", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Write the outcome (ranges, training history, accuracies) as JSON.")
@progress_option()
@verbose_option()
def qat_command(
    demo: bool,
    model: str | None,
    weights: Path | None,
    data: str | None,
    calib_data: str | None,
    eval_data: str | None,
    input_shape: str | None,
    input_name: str,
    output_name: str,
    preprocess: str | None,
    epochs: int,
    lr: float,
    optimizer: str,
    schedule: str,
    weight_decay: float,
    batch_size: int,
    max_steps: int | None,
    bn_stats: bool,
    method: str,
    percentile: float,
    calib_samples: int,
    cache: Path | None,
    include: tuple[tuple[str, ...], ...],
    exclude: tuple[tuple[str, ...], ...],
    checkpoint: Path | None,
    resume: bool,
    device: str | None,
    seed: int,
    output: Path | None,
    report: Path | None,
    progress: bool | None,
) -> None:
    """Quantization-aware training: fake-quantize, calibrate, fine-tune, export Q/DQ ONNX.

    Wraps Conv/ConvTranspose/Linear (and quant.qat.Add residual adds) with INT8 fake
    quantization, initialises activation ranges from --cache or by calibration (same methods
    as PTQ), fine-tunes for --epochs, and writes a Q/DQ ONNX model for TensorRT explicit
    quantization. With --eval-data (or --demo) prints FP32, PTQ INT8 and QAT INT8 accuracy.
    """
    if demo and (model or data or weights):
        raise UsageError("--demo runs on the embedded demo; do not combine it with --model/--data/--weights")
    if not demo and model is None:
        raise UsageError("give --model MODULE:FACTORY (or MODEL.onnx) with --data, or --demo")
    if not demo and data is None:
        raise UsageError("--data (labelled training data) is required with --model")
    if resume and checkpoint is None:
        raise UsageError("--resume needs --checkpoint")
    if output is None:
        if not demo:
            raise UsageError("-o/--output (the QAT ONNX model to write) is required")
        output = Path("demo.qat.onnx")

    api = _import_qat()
    from quant.qat.train import TrainConfig

    train = TrainConfig(
        epochs=epochs, lr=lr, optimizer=optimizer, schedule=schedule, weight_decay=weight_decay,
        freeze_bn=not bn_stats, max_steps_per_epoch=max_steps, seed=seed,
    )
    options = api.QatOptions(
        method=method, percentile=percentile, calib_samples=calib_samples,
        include=flatten(include) or ("*",), exclude=flatten(exclude), batch_size=batch_size, seed=seed, train=train,
    )
    common: dict[str, Any] = {
        "output": output, "options": options, "cache": cache, "device": device, "checkpoint": checkpoint,
        "resume": resume, "progress": want_progress(progress),
    }
    if demo or model is None or data is None:
        outcome = api.qat_demo(**common)
    else:
        outcome = api.qat_model(
            model, data=data, weights=weights, calib_data=calib_data, eval_data=eval_data,
            input_shape=api.parse_input_shape(input_shape) if input_shape else None,
            input_name=input_name, output_name=output_name, preprocess=preprocess, **common,
        )
    tr = outcome.training
    per_epoch = tr.seconds_per_epoch
    echo(f"QAT: {len(tr.epochs)} epoch(s) on {tr.device}"
         + (f", {per_epoch:.1f} s per epoch" if per_epoch is not None else "")
         + (f", final training loss {tr.epochs[-1].loss:.4f}" if tr.epochs else ""))
    if outcome.accuracy:
        echo(format_accuracy_table(outcome.accuracy))
    q = outcome.qdq
    echo(f"wrote {outcome.output}: {q['quantize_linear']} activation Q/DQ pairs, {q['int8_weights']} INT8 weights, "
         f"{q.get('int8_layers', 0)} INT8 layers, no orphan Q/DQ")
    if report is not None:
        from quant._io import atomic_write

        atomic_write(report, json.dumps(outcome.to_dict(), indent=2, sort_keys=True) + "\n")
        echo(f"wrote {report}")
