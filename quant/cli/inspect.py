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
  quant inspect cache calibration.json      # ONNX Runtime tables too (.json, .flatbuffers, .cache)
  quant inspect model.cache.stats.npz       # saved histograms: samples, fingerprints, per-tensor range
  quant inspect model.int8.onnx             # which nodes run INT8, orphan Q/DQ pairs
  quant inspect model.int8.onnx --trt       # TensorRT's parser: layers by type, Q/DQ layers, refusals
  quant inspect model.engine                # per-layer precision (needs TensorRT)
""",
)
@click.argument("args", nargs=-1, required=True, metavar="[cache|stats|model|engine] PATH")
@click.option("--sort", type=click.Choice(["file", "name", "amax"]), default="file", show_default=True,
              help="Order of the cache's amax table.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--trt", "with_trt", is_flag=True,
              help="ONNX models: show TensorRT's view instead (NVIDIA's ONNX parser; TensorRT-RTX where "
              "installed, no GPU needed): layers by type, Q/DQ layers, what the parser refused (exit 1).")
@verbose_option()
def inspect_command(args: tuple[str, ...], sort: str, as_json: bool, with_trt: bool) -> None:
    """Describe PATH: a calibration cache (TensorRT, quant or ONNX Runtime format), a statistics
    file, an ONNX model, or an engine. The kind is taken from the suffix unless given first."""
    import json

    kind, path = _kind_and_path(args)
    suffix = path.suffix.lower()
    if kind == "stats" or (kind is None and suffix == ".npz"):
        _inspect_stats(path, sort=sort, as_json=as_json)
        return
    if kind == "engine" or (kind is None and suffix in (".engine", ".plan", ".trt")):
        from quant.backends.tensorrt.inspect import inspect_engine, render_engine_inspection

        info = inspect_engine(path)
        echo(json.dumps(info.to_dict(), indent=2) if as_json else render_engine_inspection(info))
        return
    if with_trt and not (kind == "model" or (kind is None and suffix == ".onnx")):
        raise click.UsageError("--trt applies to ONNX models (quant inspect model.onnx --trt)")
    if with_trt:
        from quant import api
        from quant.backends.tensorrt.network import render_network_view
        from quant.errors import ModelError

        net = api.inspect_tensorrt_network(path)
        echo(json.dumps(net.to_dict(), indent=2) if as_json else render_network_view(net))
        if not net.parsed:
            raise ModelError(f"{net.trt} cannot parse '{path}': {net.parser_errors[0]}")
        return
    if kind == "model" or (kind is None and suffix == ".onnx"):
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
    stats = _stats_beside(path)
    if as_json:
        echo(json.dumps({"cache": {**desc, "stats": stats}, "tensors": rows}, indent=2))
    else:
        text = render_cache_description(desc, rows)
        if stats is not None:
            line = f"stats      {stats['path']} ({stats['num_samples']} samples, {stats['tensors']} tensors)\n"
            head, sep, rest = text.partition("\n\n")
            text = head + "\n" + line.rstrip("\n") + sep + rest if sep else text + line
        echo(text.rstrip("\n"))


KINDS = ("cache", "stats", "model", "engine")


def _kind_and_path(args: tuple[str, ...]) -> tuple[str | None, Path]:
    """``PATH`` or ``KIND PATH`` (KIND one of :data:`KINDS`)."""
    if len(args) == 1:
        return None, Path(args[0])
    if len(args) == 2 and args[0] in KINDS:
        return args[0], Path(args[1])
    raise click.UsageError(f"expected PATH or KIND PATH with KIND one of {', '.join(KINDS)}; got {' '.join(args)!r}")


def _stats_beside(cache: Path) -> dict[str, object] | None:
    """Summary of CACHE.stats.npz when it exists and is readable (a broken one is not the cache's problem)."""
    from quant.calibrators.stats_io import load_stats, stats_path
    from quant.errors import CacheError

    p = stats_path(cache)
    if not p.is_file():
        return None
    try:
        stats, meta = load_stats(p)
    except CacheError:
        return None
    return {"path": str(p), "num_samples": meta.get("num_samples"), "tensors": len(stats)}


def _inspect_stats(path: Path, *, sort: str, as_json: bool) -> None:
    """Describe a statistics file: provenance, then one row per tensor."""
    import json

    from quant.calibrators.stats_io import data_shards, load_stats, summarize_stats

    stats, meta = load_stats(path)
    rows = summarize_stats(stats, meta, sort=sort)
    model_fp = meta.get("model_fingerprint")
    shards = data_shards(meta)
    desc = {
        "path": str(path),
        "format": "quant-stats",
        "tensors": len(stats),
        "num_bins": meta.get("num_bins"),
        "num_samples": meta.get("num_samples"),
        "scope": meta.get("scope"),
        "model_fingerprint": model_fp,
        "data_fingerprint": meta.get("data_fingerprint"),
        "data_shards": shards,
        "data": meta.get("data_manifest"),
        "quant_version": meta.get("quant_version"),
    }
    if as_json:
        echo(json.dumps({"stats": desc, "tensors": rows}, indent=2))
        return
    combined = model_fp.get("combined") if isinstance(model_fp, dict) else model_fp
    lines = [
        f"statistics {path}",
        f"samples    {desc['num_samples']} ({len(shards)} data shard(s))",
        f"tensors    {desc['tensors']} ({desc['num_bins']} bins, scope {desc['scope']})",
        f"model      {str(combined)[:16]}",
        f"data       {str(desc['data_fingerprint'])[:16]}",
        "",
    ]
    cells = [
        (r["name"], str(r["count"]), _num(r["min"]), _num(r["max"]), _num(r["absmax"])) for r in rows
    ]
    headers = ("name", "count", "min", "max", "absmax")
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = [str.ljust] + [str.rjust] * 4
    lines.append("  ".join(f(h, w) for f, h, w in zip(fmt, headers, widths, strict=True)).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(f(v, w) for f, v, w in zip(fmt, c, widths, strict=True)).rstrip())
    echo("\n".join(lines))


def _num(v: object) -> str:
    return "-" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)
