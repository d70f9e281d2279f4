"""quant sensitivity: rank the quantized layers by how much INT8 hurts the model's output."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import (
    COMMA_LIST,
    data_options,
    echo,
    flatten,
    make_data_options,
    progress_option,
    verbose_option,
    want_progress,
)
from quant.cli.shard_options import check_shard_options, shard_options


@click.command(
    "sensitivity",
    epilog="""\b
Examples:
  quant sensitivity model.onnx --cache model.cache --data val/
  quant sensitivity model.onnx --cache model.cache --data val.npz --metric sqnr --json
  quant sensitivity model.onnx --cache model.cache --data val/ --report report.json --top 10
  quant sensitivity model.onnx --cache model.cache --data val/ --exact
  quant sensitivity model.onnx --cache model.cache --data val.npz --metric sqnr --ranking measured
  quant sensitivity model.onnx --cache model.cache --data val/ --shards 4 --executor ray
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Calibration cache (quant's, TensorRT's or ONNX Runtime's).")
@data_options(batch_default=8, required=True)
@click.option("--metric", type=click.Choice(["auto", "accuracy", "agreement", "sqnr"]), default="auto",
              show_default=True,
              help="auto: top-1 accuracy on labels for a classifier with labelled data, top-1 agreement with "
              "FP32 for a classifier without labels, otherwise the worst output SQNR.")
@click.option("--classifier-output", default=None, metavar="NAME",
              help="Output scored as the classifier (default: the first (N, C) float output).")
@click.option("--exclude", multiple=True, type=COMMA_LIST, metavar="NAMES",
              help="Node names or op types kept in float in every configuration.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Add the ranking to this report.json as extra.sensitivity (created if missing).")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show only the N most sensitive layers.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads.")
@click.option("--segments", type=click.IntRange(min=0), default=4, show_default=True,
              help="Suffix models that let single-layer configurations skip the unchanged prefix "
              "(faster, more memory; 0: none).")
@click.option("--exact", is_flag=True,
              help="Measure on every sample (--max-samples, default 128) instead of stopping once the ranking "
              "is steady (--confidence).")
@click.option("--confidence", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.9, show_default=True,
              help="Stop reading samples (after 16) once the ranking's split-half reliability reaches this.")
@click.option("--ranking", type=click.Choice(["auto", "first-order", "measured"]), default="auto",
              show_default=True,
              help="first-order: every layer's damage and gain from one FP32 and one INT8 pass and a few "
              "gradients (PyTorch; metric sqnr); measured: every configuration run in ONNX Runtime; auto: "
              "first-order where it applies (metric sqnr, PyTorch installed, ops supported, no --exact or "
              "shards), else measured.")
@click.option("--probes", type=click.IntRange(min=1), default=2, show_default=True,
              help="First-order: random sign probes per batch for outputs with more than 16 values per sample.")
@click.option("--gains/--no-gains", default=False, show_default=True,
              help="First-order: estimate each gain from the all-INT8 pass (one more autograd pass, about 30 %% "
              "more time), or take it equal to the damage (what it is to first order).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@shard_options(what="layers")
@progress_option()
@verbose_option()
def sensitivity_command(
    model: Path,
    cache: Path,
    data: str,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    metric: str,
    classifier_output: str | None,
    exclude: tuple[tuple[str, ...], ...],
    report: Path | None,
    top: int | None,
    threads: int | None,
    segments: int,
    exact: bool,
    confidence: float,
    ranking: str,
    probes: int,
    gains: bool,
    as_json: bool,
    shard: str | None,
    shards: int | None,
    executor: str,
    ray_address: str | None,
    progress: bool | None,
) -> None:
    """Measure, for each quantized layer of MODEL, the damage of quantizing it alone (all others
    float) and the gain of keeping it alone in float (all others INT8), and rank the layers.

    \b
    One model holds every configuration (each layer switches between INT8 and float through a
    flag input), so one ONNX Runtime session serves them all, and the data is read and FP32 run
    once; configurations that change one layer start from the last tensor before it (--segments).
    Cost: (2 x layers + 2) x samples forward passes; --max-samples defaults to 128 here
    (ResNet-50 on 2 cores: about 5 s per sample). Without --exact, samples are read in rounds
    and the pass stops once the ranking's split-half reliability reaches --confidence (reported).

    \b
    With the SQNR metric (--metric sqnr, or auto on a model without a classifier output) and
    PyTorch installed, the default (--ranking auto) is the first-order estimate instead: damage
    and gain of every layer from one FP32 and one INT8 pass and a few backward passes, whatever
    the number of layers (docs/SENSITIVITY.md). --exact or --ranking measured measure.
    """
    import json
    import sys

    from quant import api
    from quant.sensitivity import SensitivityOptions, render_sensitivity

    opts = SensitivityOptions(
        metric=metric, classifier_output=classifier_output, exclude=flatten(exclude), threads=threads,
        segments=segments, exact=exact, confidence=confidence, ranking=ranking, probes=probes, gains=gains,
    )
    data_opts = make_data_options(
        data, max_samples=max_samples, seed=seed, batch_size=batch_size,
        preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
    )
    check_shard_options(shard, shards, executor, ray_address)
    if shards is not None:
        outcome = api.sensitivity_sharded(
            model, data_opts, cache=cache, shards=shards, executor=executor, ray_address=ray_address,
            options=opts, report=report, command=["quant", *sys.argv[1:]],
        )
    else:
        outcome = api.sensitivity(
            model, data_opts, cache=cache, options=opts, report=report,
            progress=want_progress(progress), command=["quant", *sys.argv[1:]], shard=shard,
        )
    if as_json:
        echo(json.dumps(outcome.section, indent=2, allow_nan=False))
    else:
        echo(render_sensitivity(outcome.result, top=top))
    if outcome.report_path is not None:
        click.echo(f"report: {outcome.report_path}", err=as_json)
