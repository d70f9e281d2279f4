"""quant eval: the same samples through FP32, FP16 and INT8; accuracy, agreement, fidelity, speed."""

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
from quant.cli.shard_options import check_shard_options, shard_options
from quant.cli.trt_options import TrtCliOptions, trt_build_options, trt_runtime_options


@click.command(
    "eval",
    epilog="""\b
Examples:
  quant eval model.onnx --data val_images/ --cache model.cache --report report.json
  quant eval model.onnx --data val.npz --int8-model model.int8.onnx --precisions fp32,int8
  quant eval model.onnx --data val/ --cache model.cache --layers --report report.json
  quant eval model.onnx --data val/ --cache model.cache --shard 2/4 --report part2.json
  quant eval model.onnx --data val/ --cache model.cache --shards 8 --executor ray --report report.json
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@data_options(batch_default=32, required=True)
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Calibration cache; the INT8 model is built from it in memory.")
@click.option("--int8-model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An already built Q/DQ model (e.g. from quant build or a QAT export) for the int8 column.")
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, metavar="LIST",
              help="Any of fp32, fp16, int8 (TensorRT placement), int8-ort (ONNX Runtime CPU form).")
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES", help="Node names or op types kept in float.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write report.json here.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@cpu_option()
@click.option("--layers", is_flag=True,
              help="Also measure each INT8 layer's error against FP32 (first 64 samples) and keep the worst "
              "layers' activation histograms (needs --cache or --int8-model); shown by 'quant report -o'.")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "tensorrt-rtx"]), default="onnxruntime",
              show_default=True,
              help="tensorrt: build one TensorRT engine per precision (into --engine-dir) and evaluate the "
              "engines on the GPU; needs pip install 'quant[tensorrt]' and an NVIDIA GPU. tensorrt-rtx: the same "
              "with TensorRT-RTX (pip install 'quant[tensorrt-rtx]'), on a GPU of compute capability 8.0, 8.6, "
              "8.9, 12.0 or 12.1.")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --backend tensorrt writes its engines (default: engines/ next to MODEL).")
@trt_build_options()
@trt_runtime_options()
@shard_options()
@progress_option()
@verbose_option()
def eval_command(
    model: Path,
    data: str,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    cache: Path | None,
    int8_model: Path | None,
    precisions: str,
    exclude: tuple[tuple[str, ...], ...],
    report: Path | None,
    threads: int | None,
    cpu: str,
    layers: bool,
    backend: str,
    engine_dir: Path | None,
    trt_options: TrtCliOptions,
    shard: str | None,
    shards: int | None,
    executor: str,
    ray_address: str | None,
    progress: bool | None,
) -> None:
    """Evaluate MODEL in several precisions on --data and print a table.

    Per precision: top-1 / top-5 accuracy when the data has labels, top-1 agreement with FP32,
    and per output cosine similarity, SQNR (dB), mean relative and max absolute error against
    FP32, plus latency per batch and throughput (ONNX Runtime on this CPU).
    """
    import sys

    from quant import api
    from quant.config import EvalOptions, parse_precisions
    from quant.report.table import render_table

    opts = EvalOptions(precisions=parse_precisions(precisions), threads=threads, cpu=cpu)
    data_opts = make_data_options(
        data, max_samples=max_samples, seed=seed, batch_size=batch_size,
        preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
    )
    check_shard_options(shard, shards, executor, ray_address)
    if (shard is not None or shards is not None) and (backend != "onnxruntime" or layers):
        raise click.UsageError("--shard / --shards work with --backend onnxruntime and without --layers")
    if shards is not None:
        rep = api.evaluate_sharded(
            model, data_opts, shards=shards, executor=executor, ray_address=ray_address, cache=cache,
            int8_model=int8_model, options=opts, exclude=flatten(exclude), report=report,
            command=["quant", *sys.argv[1:]],
        )
        echo(render_table(rep))
        if report is not None:
            echo(f"report: {report} ({shards} shards merged)")
        return
    if backend in ("tensorrt", "tensorrt-rtx"):
        if int8_model is not None or layers or exclude:
            raise click.UsageError(f"--int8-model, --layers and --exclude are ONNX Runtime options; drop them with --backend {backend}")
        rep = api.evaluate_tensorrt(
            model, data_opts, trt_options=trt_options.to_build_options(precision="fp32"),
            engine_dir=engine_dir or model.parent / "engines", cache=cache, options=opts,
            warmup=trt_options.warmup, report=report, progress=want_progress(progress),
            command=["quant", *sys.argv[1:]], flavor=backend,
        )
        echo(render_table(rep))
        return
    rep = api.evaluate(
        model, data_opts, cache=cache, int8_model=int8_model, options=opts, exclude=flatten(exclude),
        report=report, progress=want_progress(progress), command=["quant", *sys.argv[1:]], layers=layers,
        shard=shard,
    )
    echo(render_table(rep))
    if layers:
        from quant.report.html import worst_layer_line

        echo(worst_layer_line(rep))
    if report is not None:
        echo(f"report: {report}" + (f" (HTML with the per-layer charts: quant report {report} -o report.html)" if layers else ""))
