"""quant run: calibrate, build, evaluate and report in one go (the embedded demo by default)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quant.cli.options import (
    COMMA_LIST,
    cpu_option,
    data_options,
    echo,
    flatten,
    make_data_options,
    method_options,
    progress_option,
    verbose_option,
    want_progress,
)


@click.command(
    "run",
    epilog="""\b
Examples:
  quant run                                   # embedded MNIST demo -> runs/demo
  quant run model.onnx --data calib/ --eval-data val/ --out runs/resnet
  quant run model.onnx --data calib.npz --eval-data val.npz --method percentile --precisions fp32,int8
""",
)
@click.argument("model", required=False, type=click.Path(dir_okay=False, path_type=Path))
@data_options(batch_default=8)
@click.option("--eval-data", default=None, metavar="PATH",
              help="Evaluation data (default for the demo: its held-out split; otherwise the calibration data).")
@click.option("--eval-batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@method_options(default="auto")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, metavar="LIST")
@cpu_option()
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES", help="Node names or op types kept in float.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder (default: runs/<model name>).")
@click.option("--force", is_flag=True, help="Recalibrate even when the cache in --out is up to date.")
@progress_option()
@verbose_option()
def run_command(
    model: Path | None,
    data: str | None,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    eval_data: str | None,
    eval_batch_size: int,
    method: str,
    auto_budget: float,
    percentile: float,
    trt_version: str | None,
    scope: str,
    precisions: str,
    cpu: str,
    exclude: tuple[tuple[str, ...], ...],
    out: Path | None,
    force: bool,
    progress: bool | None,
) -> None:
    """Calibrate, build INT8 + FP16, evaluate and report, writing everything into --out.

    With no MODEL, runs the embedded demo: a LeNet-5 CNN trained on real MNIST digits, its
    calibration split (300 digits) and held-out evaluation split (1,500 digits).
    """
    from quant import api
    from quant.config import BuildOptions, CalibrationOptions, EvalOptions, parse_precisions
    from quant.report.table import render_table

    if model is None and data is not None:
        raise click.UsageError("--data given without a MODEL; name the model (or omit both for the demo)")
    common = {
        "max_samples": max_samples, "seed": seed, "preprocess": preprocess,
        "on_bad_image": on_bad_image, "workers": workers,
    }
    calib = make_data_options(data, batch_size=batch_size, **common) if data else None  # type: ignore[arg-type]
    evald = make_data_options(eval_data, batch_size=eval_batch_size, **common) if eval_data else None  # type: ignore[arg-type]
    if calib is not None and evald is None:
        from dataclasses import replace

        evald = None if model is None else replace(calib, batch_size=eval_batch_size)
        if evald is not None:
            click.echo("quant: warning: no --eval-data: evaluating on the calibration data, which overstates INT8 accuracy", err=True)
    out = out or Path("runs") / (model.stem if model is not None else "demo")
    outcome = api.run(
        model,
        out=out,
        calib_data=calib,
        eval_data=evald,
        calibration=CalibrationOptions(
            method=method, percentile=percentile, scope=scope, trt_version=trt_version,  # type: ignore[arg-type]
            auto_budget=auto_budget, auto_seed=seed,
        ),
        build_options=BuildOptions(exclude=flatten(exclude), cpu=cpu),
        eval_options=EvalOptions(precisions=parse_precisions(precisions), cpu=cpu),
        force=force,
        progress=want_progress(progress),
        command=["quant", *sys.argv[1:]],
    )
    echo(outcome.calibration.message + (f" in {outcome.calibration.seconds:.2f} s" if not outcome.calibration.reused else ""))
    echo()
    echo(render_table(outcome.report))
    echo()
    echo(f"wrote to {outcome.out_dir}/:")
    for f in outcome.files:
        echo(f"  {f.name}")
