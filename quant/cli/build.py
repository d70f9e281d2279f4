"""quant build: an INT8 Q/DQ ONNX model (or FP16 / FP32) from a model and a calibration cache."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import COMMA_LIST, echo, flatten, verbose_option


@click.command(
    "build",
    epilog="""\b
Examples:
  quant build model.onnx --cache model.cache -o model.int8.onnx
  quant build model.onnx --cache model.cache --exclude head_conv,Softmax -o model.int8.onnx
  quant build model.onnx --precision fp16 -o model.fp16.onnx
  quant build model.onnx --cache trt_written.cache --strict -o model.int8.onnx
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration cache: quant's, one written by TensorRT, or ONNX Runtime's calibration table.")
@click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), default="int8", show_default=True)
@click.option("--target", type=click.Choice(["tensorrt", "onnxruntime"]), default="tensorrt", show_default=True,
              help="tensorrt: Q/DQ placed as TensorRT explicit quantization expects (what eval's int8 runs). "
              "onnxruntime: laid out for ONNX Runtime's CPU integer kernels.")
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES",
              help="Node names or op types (wildcards allowed) kept in float. Repeatable or comma-separated.")
@click.option("--strict", is_flag=True, help="Fail (instead of warning) on a stale cache or on tensors the cache lacks.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output ONNX model.")
@verbose_option()
def build_command(
    model: Path,
    cache: Path | None,
    precision: str,
    target: str,
    exclude: tuple[tuple[str, ...], ...],
    strict: bool,
    output: Path,
) -> None:
    """Build an INT8 (Q/DQ), FP16 or cleaned FP32 ONNX model from MODEL.

    The graph is cleaned first (Identity removal, constant and BatchNorm folding), then
    QuantizeLinear/DequantizeLinear pairs are inserted with the cache's ranges: symmetric INT8,
    per-tensor activations, per-channel INT8 weights, on the inputs of Conv, ConvTranspose,
    Gemm, MatMul and residual Add. TensorRT 10/11 builds this model as an explicitly quantized
    engine; ONNX Runtime runs it with integer kernels.
    """
    from quant import api
    from quant.config import BuildOptions

    opts = BuildOptions(precision=precision, target=target, exclude=flatten(exclude), strict=strict)  # type: ignore[arg-type]
    outcome = api.build(model, output=output, cache=cache, options=opts)
    for w in outcome.warnings:
        click.echo(f"quant: warning: {w}", err=True)
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
