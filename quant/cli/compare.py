"""quant compare: gate a CI job on accuracy regressions against a baseline report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from quant.cli.options import echo, verbose_option


@click.command(
    "compare",
    epilog="""\b
Exit codes: 0 within budget, 1 regression, 2 unusable input (schema, model or data differ).
Examples:
  quant compare baseline.json report.json --max-drop 0.5
  quant compare baseline.json report.json --min-sqnr 20 --format markdown >> $GITHUB_STEP_SUMMARY
""",
)
@click.argument("baseline", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("current", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-drop", type=float, default=0.5, show_default=True,
              help="Largest allowed accuracy / agreement drop in points (absolute).")
@click.option("--max-relative-drop", type=float, default=None, help="Largest allowed relative drop (0.01 = 1 %).")
@click.option("--min-sqnr", type=float, default=None, help="Smallest allowed output SQNR in dB.")
@click.option("--max-latency-increase", type=float, default=None,
              help="Largest allowed latency increase (0.2 = 20 %); latency is not gated by default.")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text", show_default=True)
@verbose_option()
def compare_command(
    baseline: Path,
    current: Path,
    max_drop: float,
    max_relative_drop: float | None,
    min_sqnr: float | None,
    max_latency_increase: float | None,
    fmt: str,
) -> None:
    """Compare CURRENT against BASELINE metric by metric; exit 1 on a regression."""
    from quant.errors import ReportError
    from quant.report.compare import Thresholds, compare_reports, render_comparison
    from quant.report.schema import load_report

    try:
        base = load_report(baseline)
        cur = load_report(current)
        result = compare_reports(
            base,
            cur,
            Thresholds(
                max_drop=max_drop,
                max_relative_drop=max_relative_drop,
                min_sqnr=min_sqnr,
                max_latency_increase=max_latency_increase,
            ),
        )
    except ReportError as exc:
        click.echo(f"quant: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    echo(render_comparison(result, fmt=fmt))
    if result.regressions:
        sys.exit(1)
