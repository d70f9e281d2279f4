"""quant build: an INT8 Q/DQ ONNX model (or FP16 / FP32) from a model and a calibration cache."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import (
    COMMA_LIST,
    cpu_option,
    data_options,
    echo,
    flatten,
    make_data_options,
    progress_option,
    verbose_option,
    want_progress,
)
from quant.cli.trt_options import TrtCliOptions, trt_build_options


@click.command(
    "build",
    epilog="""\b
Examples:
  quant build model.onnx --cache model.cache -o model.int8.onnx
  quant build model.onnx --cache model.cache --exclude head_conv,Softmax -o model.int8.onnx
  quant build model.onnx --precision fp16 -o model.fp16.onnx
  quant build model.onnx --cache trt_written.cache --strict -o model.int8.onnx
  quant build model.onnx --cache model.cache --data val/ --accuracy-budget 0.5 -o model.int8.onnx
  quant build model.onnx --cache model.cache --data val.npz --min-sqnr 25 -o model.int8.onnx
  quant build model.onnx --cache model.cache --exclude-from model.int8.onnx.fallback.json -o again.int8.onnx
  quant build model.onnx --cache model.cache -o model.int8.onnx --check-trt
  quant build model.onnx --cache model.cache --backend tensorrt-rtx -o model.engine
  quant build model.int8.onnx --backend tensorrt-rtx --compute-capability 8.9,12.0 -o model.engine
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration cache: quant's, one written by TensorRT, or ONNX Runtime's calibration table.")
@click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), default="int8", show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help="tensorrt: Q/DQ placed as TensorRT explicit quantization expects (what eval's int8 runs). "
              "onnxruntime: laid out for ONNX Runtime's CPU integer kernels.")
@cpu_option()
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES",
              help="Node names or op types (wildcards allowed) kept in float. Repeatable or comma-separated.")
@click.option("--strict", is_flag=True, help="Fail (instead of warning) on a stale cache or on tensors the cache lacks.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output ONNX model.")
@data_options(batch_default=8)
@click.option("--accuracy-budget", type=click.FloatRange(min=0, max=100), default=None, metavar="POINTS",
              help="Keep the most sensitive layers in float until INT8 loses at most POINTS of top-1 against "
              "FP32 on --data (accuracy on labels when the data has them, else top-1 agreement).")
@click.option("--min-sqnr", type=float, default=None, metavar="DB",
              help="Keep the most sensitive layers in float until every output's SQNR against FP32 on --data "
              "is at least DB.")
@click.option("--exclude-from", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Also exclude the layers listed in FILE (a .fallback.json written by --accuracy-budget).")
@click.option("--fallback-report", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="Where the fallback steps and exclusions go [default: OUTPUT.fallback.json].")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]), default="onnxruntime",
              show_default=True,
              help="onnxruntime: write an ONNX model. tensorrt: build a TensorRT engine (-o model.engine) "
              "with the options below; needs pip install 'quant[tensorrt]' and an NVIDIA GPU. tensorrt-rtx: "
              "build a TensorRT-RTX engine for RTX GPUs on any machine, no GPU needed "
              "(pip install 'quant[tensorrt-rtx]').")
@click.option("--check-trt", is_flag=True,
              help="--target tensorrt: verify the written Q/DQ model with NVIDIA's real ONNX parser and builder "
              "(TensorRT-RTX where installed, no GPU needed; else TensorRT); no engine is written.")
@trt_build_options()
@progress_option()
@verbose_option()
def build_command(
    model: Path,
    cache: Path | None,
    precision: str,
    target: str,
    cpu: str,
    exclude: tuple[tuple[str, ...], ...],
    strict: bool,
    output: Path,
    data: str | None,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    accuracy_budget: float | None,
    min_sqnr: float | None,
    exclude_from: Path | None,
    fallback_report: Path | None,
    backend: str,
    check_trt: bool,
    trt_options: TrtCliOptions,
    progress: bool | None,
) -> None:
    """Build an INT8 (Q/DQ), FP16 or cleaned FP32 ONNX model from MODEL.

    The graph is cleaned first (Identity removal, constant and BatchNorm folding), then
    QuantizeLinear/DequantizeLinear pairs are inserted with the cache's ranges: symmetric INT8,
    per-tensor activations, per-channel INT8 weights, on the inputs of Conv, ConvTranspose,
    Gemm, MatMul and residual Add. TensorRT 10/11 builds this model as an explicitly quantized
    engine; ONNX Runtime runs it with integer kernels.

    With --accuracy-budget or --min-sqnr (and --data), the layers are ranked by sensitivity and
    the most damaging ones are kept in float, one at a time, until the budget holds; the steps and
    the exclusions go to OUTPUT.fallback.json, which --exclude-from reads to rebuild the model.
    The budget is checked on at most 512 samples of --data unless --max-samples says otherwise,
    the ranking uses the first 128 (see docs/SENSITIVITY.md).
    """
    from quant import api
    from quant.config import BuildOptions, FallbackOptions
    from quant.errors import QuantError

    if backend in ("tensorrt", "tensorrt-rtx"):
        if check_trt:
            raise click.UsageError("--check-trt checks an ONNX model; with --backend tensorrt(-rtx) the engine build is the check")
        if accuracy_budget is not None or min_sqnr is not None:
            raise click.UsageError(
                "--accuracy-budget / --min-sqnr run in ONNX Runtime: build the ONNX model first, then the engine "
                "with --exclude-from its .fallback.json"
            )
        _build_engine(model, output=output, cache=cache, precision=precision, strict=strict,
                      exclude=flatten(exclude), trt_options=trt_options, flavor=backend, exclude_from=exclude_from,
                      data=None if data is None else make_data_options(
                          data, max_samples=max_samples, seed=seed, batch_size=batch_size,
                          preprocess=preprocess, on_bad_image=on_bad_image, workers=workers))
        return
    if check_trt and target != "tensorrt":
        raise click.UsageError("--check-trt checks the TensorRT placement; drop --target onnxruntime")

    opts = BuildOptions(precision=precision, target=target, exclude=flatten(exclude), strict=strict, cpu=cpu)  # type: ignore[arg-type]
    fallback = FallbackOptions(
        accuracy_budget=accuracy_budget,
        min_sqnr=min_sqnr,
        report=None if fallback_report is None else str(fallback_report),
    )
    data_opts = None
    if data is not None:
        data_opts = make_data_options(
            data, max_samples=max_samples, seed=seed, batch_size=batch_size,
            preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
        )
        if not fallback.active:
            click.echo("quant: warning: --data is only used with --accuracy-budget or --min-sqnr; ignored", err=True)
    elif fallback.active:
        raise click.UsageError("--accuracy-budget / --min-sqnr need --data (the samples the budget is measured on)")
    outcome = api.build(
        model, output=output, cache=cache, options=opts, data=data_opts, fallback=fallback,
        exclude_from=exclude_from, progress=want_progress(progress),
    )
    for w in outcome.warnings:
        click.echo(f"quant: warning: {w}", err=True)
    if outcome.fallback is not None:
        from quant.sensitivity import render_fallback

        echo(render_fallback(outcome.fallback))
        echo(f"wrote {outcome.fallback_path} (rebuild with --exclude-from {outcome.fallback_path})")
    echo(f"wrote {outcome.output} ({outcome.precision}, target {outcome.target})")
    if outcome.precision == "int8":
        echo(f"  quantized activations: {len(outcome.quantized_tensors)}, weights: {len(outcome.quantized_weights)}")
        if outcome.skipped:
            echo(f"  kept in float: {len(outcome.skipped)}")
            for name, why in list(outcome.skipped.items())[:10]:
                echo(f"    {name}: {why}")
            if len(outcome.skipped) > 10:
                echo(f"    ... and {len(outcome.skipped) - 10} more")
        if outcome.cache_missing:
            echo(f"  tensors without a range in the cache: {len(outcome.cache_missing)} (first: {outcome.cache_missing[0]})")
    if outcome.fallback is not None and not outcome.fallback.met:
        raise QuantError(
            f"budget not met ({outcome.fallback.budget.describe(outcome.fallback.metric)}): some layers cannot be "
            f"excluded by name; see {outcome.fallback_path}"
        )
    if check_trt:
        view = api.check_tensorrt(
            outcome.output, shapes=trt_options.shapes, compute_capabilities=trt_options.compute_capabilities
        )
        echo(
            f"  {view.trt} accepts it: {view.num_layers} network layers ({len(view.quantize_layers)} quantize, "
            f"{len(view.dequantize_layers)} dequantize), engine of {view.engine_bytes / 1e6:.2f} MB built in "
            f"{view.build_seconds:.2f} s (not written)"
        )


def _build_engine(
    model: Path,
    *,
    output: Path,
    cache: Path | None,
    precision: str,
    strict: bool,
    exclude: tuple[str, ...],
    trt_options: TrtCliOptions,
    data: object,
    flavor: str = "tensorrt",
    exclude_from: Path | None = None,
) -> None:
    """quant build --backend tensorrt|tensorrt-rtx: an engine plus its sidecar."""
    from quant import api

    opts = trt_options.to_build_options(precision=precision, strict=strict, exclude=exclude)
    result = api.build_tensorrt_engine(
        model, output=output, trt_options=opts, cache=cache, data=data, flavor=flavor, exclude_from=exclude_from,  # type: ignore[arg-type]
    )
    label = "TensorRT-RTX" if result.trt_flavor == "tensorrt-rtx" else "TensorRT"
    echo(f"wrote {result.engine} and {result.sidecar} ({result.precision}, {result.mode}, {label} {result.trt_version})")
    if result.trt_flavor == "tensorrt-rtx":
        targets = ", ".join(result.compute_capabilities) or "TensorRT-RTX's default set"
        echo(f"  {result.num_layers} network layers, {result.engine_bytes / 1e6:.2f} MB, built in "
             f"{result.build_seconds:.2f} s for compute capabilities: {targets}")
    if result.cache_reused:
        echo(f"  calibration cache reused: {result.cache}")
    elif result.calibration_batches:
        echo(f"  TensorRT calibrated on {result.calibration_samples} samples; cache: {result.cache_written}")
