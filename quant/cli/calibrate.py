"""quant calibrate: collect activation statistics and write a TensorRT calibration cache."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import (
    data_options,
    echo,
    make_data_options,
    method_options,
    progress_option,
    verbose_option,
    want_progress,
)


@click.command(
    "calibrate",
    epilog="""\b
Examples:
  quant calibrate model.onnx --data calib_images/ --cache model.cache
  quant calibrate model.onnx --data calib.npz --method percentile --percentile 99.9 --cache model.cache
  quant calibrate model.onnx --data calib/ --cache model.cache --trt-version 8.6
  quant calibrate model.onnx --data calib/ --cache model.cache --recollect
  quant calibrate model.onnx --from-stats all.stats.npz --method mse --cache model.cache
  quant calibrate model.onnx --data calib/ --method auto --cache model.cache
  quant calibrate model.onnx --from-stats all.stats.npz --method auto --data heldout.npz --cache model.cache
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@data_options(batch_default=8, required=False)
@method_options()
@click.option("--cache", "cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cache to write (TensorRT text format) plus CACHE.json (sidecar) and CACHE.stats.npz "
              "(histograms). Default: MODEL with .cache suffix.")
@click.option("--from-stats", "from_stats", type=click.Path(dir_okay=False, path_type=Path), default=None,
              metavar="STATS",
              help="Write the cache from a statistics file (CACHE.stats.npz or 'quant merge-stats' output) "
              "instead of data: no --data, the model is not run.")
@click.option("--force", "--recollect", "force", is_flag=True,
              help="Run the model over the data again even when the cache or the saved statistics match.")
@click.option("--shards", type=click.IntRange(min=1), default=None, metavar="N",
              help="Collect the statistics in N shard tasks on --executor and merge them exactly (the same "
              "cache as one run).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where --shards tasks run: in this process, or as Ray tasks (pip install 'quant[ray]').")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="A running Ray cluster for --executor ray (e.g. auto, or the head's host:6379).")
@progress_option()
@verbose_option()
def calibrate_command(
    model: Path,
    data: str | None,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    method: str,
    auto_budget: float,
    percentile: float,
    trt_version: str | None,
    scope: str,
    cache: Path | None,
    from_stats: Path | None,
    force: bool,
    shards: int | None,
    executor: str,
    ray_address: str | None,
    progress: bool | None,
) -> None:
    """Calibrate MODEL on --data and write a TensorRT calibration cache.

    The model runs in ONNX Runtime on CPU; every activation is reduced batch by batch into a
    histogram (memory does not grow with the number of samples). Three files are written: the
    cache in TensorRT's text format (`TRT-<version>-<algorithm>` header, `name: hex-scale`
    lines), CACHE.json (exact ranges, method, fingerprints of model and data) and
    CACHE.stats.npz (the histograms).

    Run again, the command does the least work that is still correct: a cache whose model, data
    and method are unchanged is reused; with another --method (or --percentile) the ranges are
    recomputed from CACHE.stats.npz without running the model; a changed model or data set is
    named and recalibrated. --force/--recollect always runs the model.

    --method auto picks the method per tensor (entropy, minmax, percentile 99.9/99.99/99.999,
    mse) by the SQNR of the model's outputs, computed with TensorRT's exact INT8 arithmetic on
    a seeded 1/8 of --data (16 to 32 samples; cross-validation folds on small sets) held aside
    from the statistics; the choice and
    every candidate's score go into CACHE.json (`quant inspect CACHE` shows them). With
    --from-stats, auto scores on --data, which must be other samples than the statistics'.
    """
    from quant import api
    from quant.config import CalibrationOptions

    opts = CalibrationOptions(
        method=method,  # type: ignore[arg-type]
        percentile=percentile,
        scope=scope,  # type: ignore[arg-type]
        trt_version=trt_version,
        auto_budget=auto_budget,
        auto_seed=seed,
    )
    cache = cache or model.with_suffix(".cache")
    if from_stats is not None:
        if data is not None and method != "auto":
            raise click.UsageError(
                "--data and --from-stats exclude each other: the statistics replace the data "
                "(only --method auto takes --data with them, to score on)"
            )
        if force:
            raise click.UsageError("--force/--recollect need --data: --from-stats never runs the model")
        scoring = None
        if data is not None:
            scoring = make_data_options(
                data, max_samples=max_samples, seed=seed, batch_size=batch_size,
                preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
            )
        outcome = api.calibrate_from_stats(model, from_stats, cache=cache, options=opts, data=scoring)
    else:
        if data is None:
            raise click.UsageError("Missing option '--data' (or give --from-stats STATS)")
        data_opts = make_data_options(
            data, max_samples=max_samples, seed=seed, batch_size=batch_size,
            preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
        )
        if shards is not None:
            outcome = api.calibrate_sharded(
                model, data_opts, cache=cache, shards=shards, executor=executor, ray_address=ray_address,
                options=opts,
            )
        else:
            if executor != "local" or ray_address is not None:
                raise click.UsageError("--executor / --ray-address need --shards N (the number of shard tasks)")
            outcome = api.calibrate(
                model, data_opts, cache=cache, options=opts, force=force, progress=want_progress(progress)
            )
    echo(outcome.message)
    echo(f"cache:   {outcome.cache_path} ({_header(outcome.cache_path)})")
    echo(f"sidecar: {outcome.sidecar_path}")
    if outcome.stats_path is not None:
        echo(f"stats:   {outcome.stats_path}")
    echo(f"time:    {outcome.seconds:.2f} s")
    if outcome.auto is not None:
        from quant.cache.inspect import render_auto_scores

        echo(render_auto_scores(outcome.auto))


def _header(path: Path) -> str:
    """The cache's first line and the TensorRT version it names."""
    from quant.cache.trt import decode_trt_version
    from quant.errors import QuantError

    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip()
    parts = header.split("-")
    if len(parts) >= 3 and parts[1].isdigit():
        try:
            return f"header {header}, TensorRT {decode_trt_version(int(parts[1]))}"
        except QuantError:
            pass
    return f"header {header}"
