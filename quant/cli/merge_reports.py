"""quant merge-reports: merge the partial reports of a sharded run into one report, exactly."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import echo, verbose_option


@click.command(
    "merge-reports",
    epilog="""\b
Examples:
  quant eval model.onnx --data val/ --cache model.cache --shard 1/2 --report part1.json
  quant eval model.onnx --data val/ --cache model.cache --shard 2/2 --report part2.json
  quant merge-reports part1.json part2.json -o report.json
""",
)
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Merged report to write (report.json).")
@verbose_option()
def merge_reports_command(reports: tuple[Path, ...], output: Path) -> None:
    """Merge the partial reports that 'quant eval --shard K/N' (or 'quant sensitivity --shard
    K/N') wrote, one per shard, in any order.

    Accuracy, top-5, agreement, SQNR, cosine, errors and sample counts are computed from the
    shards' sums and counts: what one unsharded run gives. Latency is kept per shard
    (extra.shards), not merged. Reports of another model, data set, cache, precision set or run
    are refused, and so is a missing or repeated shard.
    """
    import sys

    from quant import api

    merged = api.merge_reports(list(reports), output=output, command=["quant", *sys.argv[1:]])
    what = "evaluation" if merged.evaluation is not None else "sensitivity"
    echo(f"merged {len(reports)} shard reports ({what}, {merged.data.get('num_samples')} samples) into {output}")
