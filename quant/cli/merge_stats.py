"""quant merge-stats: merge the statistics of calibration data shards into one file."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import echo, verbose_option


@click.command(
    "merge-stats",
    epilog="""\b
Examples:
  quant calibrate model.onnx --data shard1/ --cache s1.cache
  quant calibrate model.onnx --data shard2/ --cache s2.cache
  quant merge-stats s1.cache.stats.npz s2.cache.stats.npz -o all.stats.npz
  quant calibrate model.onnx --from-stats all.stats.npz --method entropy --cache model.cache
""",
)
@click.argument("stats", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Merged statistics file to write (.stats.npz).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@verbose_option()
def merge_stats_command(stats: tuple[Path, ...], output: Path, as_json: bool) -> None:
    """Merge statistics files (CACHE.stats.npz) of data shards of one model.

    The histograms merge exactly: the result is what one calibration over all shards together
    would have collected, so every method gives the same ranges. The shards must come from the
    same model (same graph and weights), the same --scope and bin count, and must not overlap
    (a shard given twice is refused). The merged data fingerprint does not depend on the order
    of the files. Write a cache from the result with 'quant calibrate MODEL --from-stats'.
    """
    import json

    from quant import api

    if len(stats) < 2:
        raise click.UsageError("give at least two statistics files to merge")
    outcome = api.merge_stats(stats, output=output)
    if as_json:
        echo(json.dumps(outcome.to_dict(), indent=2))
    else:
        echo(outcome.message)
        echo(f"data fingerprint: {outcome.data_fingerprint}")
