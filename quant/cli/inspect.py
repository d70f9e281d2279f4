"""quant inspect: describe a calibration cache, a (Q/DQ) ONNX model or a TensorRT engine."""

from __future__ import annotations

from pathlib import Path

import click

from quant.cli.options import echo, verbose_option


@click.command(
    "inspect",
    epilog="""\b
Examples:
  quant inspect model.cache                 # header, algorithm, tensor count, amax table
  quant inspect model.cache --sort amax --json
  quant inspect model.int8.onnx             # which nodes run INT8, orphan Q/DQ pairs
  quant inspect model.engine                # per-layer precision (needs TensorRT)
""",
)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--sort", type=click.Choice(["file", "name", "amax"]), default="file", show_default=True,
              help="Order of the cache's amax table.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@verbose_option()
def inspect_command(path: Path, sort: str, as_json: bool) -> None:
    """Describe PATH: a calibration cache (TensorRT, quant or ONNX Runtime format), an ONNX model, or an engine."""
    import json

    suffix = path.suffix.lower()
    if suffix in (".engine", ".plan", ".trt"):
        from quant.backends.tensorrt.inspect import inspect_engine, render_engine_inspection

        info = inspect_engine(path)
        echo(json.dumps(info.to_dict(), indent=2) if as_json else render_engine_inspection(info))
        return
    if suffix == ".onnx":
        from quant.graph.inspect import precision_view, render_precision_view
        from quant.graph.load import load_model

        view = precision_view(load_model(path))
        echo(json.dumps(view.to_dict(), indent=2) if as_json else render_precision_view(view))
        return
    from quant.cache.inspect import cache_table, describe_cache, render_cache_description
    from quant.cache.io import read_cache

    loaded = read_cache(path)
    desc = describe_cache(loaded)
    rows = cache_table(loaded, sort=sort)  # type: ignore[arg-type]
    if as_json:
        echo(json.dumps({"cache": desc, "tensors": rows}, indent=2))
    else:
        echo(render_cache_description(desc, rows))
