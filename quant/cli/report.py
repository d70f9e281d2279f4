"""quant report: print a saved report as a table (and render it as HTML)."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import echo, verbose_option


@click.command(
    "report",
    epilog="""\b
Examples:
  quant report runs/demo/report.json
  quant report runs/demo/report.json --json
""",
)
@click.argument("report", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a self-contained HTML report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the validated report as JSON.")
@verbose_option()
def report_command(report: Path, output: Path | None, as_json: bool) -> None:
    """Show REPORT (a report.json from quant eval / quant run) as a readable table."""
    import json

    from quant.report.schema import load_report
    from quant.report.table import render_table

    rep = load_report(report)
    if as_json:
        echo(json.dumps(rep.to_dict(), indent=2, sort_keys=True))
    else:
        echo(render_table(rep))
    if output is not None:
        from quant.report.html import write_html_report

        write_html_report(rep, output)
        echo(f"wrote {output}")
