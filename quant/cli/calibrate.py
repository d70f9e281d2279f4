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
""",
)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@data_options(batch_default=8, required=True)
@method_options()
@click.option("--cache", "cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cache to write (TensorRT text format) plus CACHE.json. Default: MODEL with .cache suffix.")
@click.option("--force", is_flag=True, help="Recalibrate even when the existing cache matches model, data and method.")
@progress_option()
@verbose_option()
def calibrate_command(
    model: Path,
    data: str,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
    method: str,
    percentile: float,
    trt_version: str | None,
    scope: str,
    cache: Path | None,
    force: bool,
    progress: bool | None,
) -> None:
    """Calibrate MODEL on --data and write a TensorRT calibration cache.

    The model runs in ONNX Runtime on CPU; every activation is reduced batch by batch into a
    histogram (memory does not grow with the number of samples). The cache is TensorRT's text
    format (`TRT-<version>-<algorithm>` header, `name: hex-scale` lines); CACHE.json records the
    exact ranges, the method and fingerprints of the model and data, so an unchanged cache is
    reused and a stale one is detected.
    """
    from quant import api
    from quant.config import CalibrationOptions

    opts = CalibrationOptions(
        method=method,  # type: ignore[arg-type]
        percentile=percentile,
        scope=scope,  # type: ignore[arg-type]
        trt_version=trt_version,
    )
    data_opts = make_data_options(
        data, max_samples=max_samples, seed=seed, batch_size=batch_size,
        preprocess=preprocess, on_bad_image=on_bad_image, workers=workers,
    )
    cache = cache or model.with_suffix(".cache")
    outcome = api.calibrate(model, data_opts, cache=cache, options=opts, force=force, progress=want_progress(progress))
    echo(outcome.message)
    echo(f"cache:   {outcome.cache_path} (header {_header(outcome.cache_path)})")
    echo(f"sidecar: {outcome.sidecar_path}")
    if not outcome.reused:
        echo(f"time:    {outcome.seconds:.2f} s")


def _header(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip()
