"""Tables and summaries of a loaded cache, for ``quant cache inspect`` (pure)."""

from __future__ import annotations

from typing import Any, Literal

from quant.cache.io import LoadedCache
from quant.cache.trt import decode_trt_version, scale_for_amax, scale_to_hex
from quant.errors import QuantError, UsageError

SortKey = Literal["name", "amax", "file"]
SORT_KEYS: tuple[str, ...] = ("file", "name", "amax")


def cache_table(loaded: LoadedCache, *, sort: SortKey = "file") -> list[dict[str, Any]]:
    """One row per cache entry: ``name``, ``amax`` (None for zero-scale entries), ``scale``
    (the float32 scale, as a float) and ``hex`` (its 8-digit bit pattern).

    ``sort``: ``file`` (file order; zero-scale entries last), ``name``, or ``amax`` (largest first,
    zero-scale entries last: outliers first is what one looks for).
    """
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort '{sort}' is not a sort order; use one of {', '.join(SORT_KEYS)}")
    rows: list[dict[str, Any]] = []
    for name, amax in loaded.amax.items():
        try:
            scale: float | None = scale_for_amax(amax)
        except OverflowError:  # an ONNX Runtime table can hold an amax past float32 * 127
            scale = None
        rows.append(
            {
                "name": name,
                "amax": amax,
                "scale": scale,
                "hex": None if scale is None else scale_to_hex(scale),
            }
        )
    for name in loaded.parsed.zero_scale_names:
        rows.append({"name": name, "amax": None, "scale": 0.0, "hex": scale_to_hex(0.0)})
    if sort == "name":
        rows.sort(key=lambda r: r["name"])
    elif sort == "amax":
        rows.sort(key=lambda r: (r["amax"] is None, -(r["amax"] or 0.0)))
    return rows


def _version_text(n: int | None) -> str | None:
    if n is None:
        return None
    try:
        return decode_trt_version(n)
    except QuantError:
        return f"unknown ({n})"


def describe_cache(loaded: LoadedCache) -> dict[str, Any]:
    """Summary of a cache: format, TensorRT version (number and text), algorithm, counts,
    warnings, and the sidecar's method / samples / created time when there is a sidecar."""
    p = loaded.parsed
    desc: dict[str, Any] = {
        "path": str(loaded.path),
        "format": loaded.format,
        "header": p.header,
        "trt_version": p.trt_version,
        "trt_version_text": _version_text(p.trt_version),
        "algorithm": p.algorithm,
        "tensors": len(loaded.amax) + len(p.zero_scale_names),
        "with_range": len(loaded.amax),
        "zero_scale": len(p.zero_scale_names),
        "warnings": list(p.warnings),
        "sidecar": None,
    }
    cal = loaded.calibration
    if cal is not None:
        desc["sidecar"] = {
            "method": cal.get("method"),
            "params": cal.get("params"),
            "num_samples": cal.get("num_samples"),
            "created": cal.get("created"),
            "quant_version": cal.get("quant_version"),
            "tensors_scope": cal.get("tensors_scope"),
            "no_range": len(cal.get("no_range") or ()),
        }
    return desc


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _row(cells: tuple[str, ...], widths: list[int]) -> str:
    """Name column left-aligned, numbers right-aligned."""
    out = [cells[0].ljust(widths[0])]
    out.extend(c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
    return "  ".join(out).rstrip()


def render_cache_description(desc: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Human-readable text: a summary block, then a table of ``rows`` (from :func:`cache_table`)."""
    lines = [f"cache      {desc['path']}", f"format     {desc['format']}"]
    if desc.get("trt_version") is not None:
        lines.append(f"TensorRT   {desc['trt_version_text']} (header {desc['trt_version']})")
    if desc.get("algorithm"):
        lines.append(f"algorithm  {desc['algorithm']}")
    lines.append(
        f"tensors    {desc['tensors']} ({desc['with_range']} with a range, {desc['zero_scale']} zero-scale)"
    )
    side = desc.get("sidecar")
    if side:
        params = side.get("params") or {}
        ptxt = ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else str(params)
        method = _fmt(side.get("method")) + (f" ({ptxt})" if ptxt else "")
        lines.append(f"method     {method}")
        lines.append(f"samples    {_fmt(side.get('num_samples'))}")
        lines.append(f"created    {_fmt(side.get('created'))}")
    else:
        lines.append("sidecar    none")
    for w in desc.get("warnings") or ():
        lines.append(f"warning    {w}")
    if rows:
        headers = ("name", "amax", "scale", "hex")
        cells = [(str(r["name"]), _fmt(r["amax"]), _fmt(r["scale"]), _fmt(r["hex"])) for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        lines.append("")
        lines.append(_row(headers, widths))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(_row(c, widths) for c in cells)
    return "\n".join(lines) + "\n"


__all__ = ["SORT_KEYS", "cache_table", "describe_cache", "render_cache_description"]
