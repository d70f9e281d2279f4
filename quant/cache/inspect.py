"""Tables and summaries of a loaded cache, for ``quant cache inspect`` (pure)."""

from __future__ import annotations

from typing import Any, Literal

from quant.cache.io import LoadedCache
from quant.cache.trt import LEGACY_NOTE, decode_trt_version, scale_for_amax, scale_to_hex
from quant.errors import QuantError, UsageError

SortKey = Literal["name", "amax", "file"]
SORT_KEYS: tuple[str, ...] = ("file", "name", "amax")


def cache_table(loaded: LoadedCache, *, sort: SortKey = "file") -> list[dict[str, Any]]:
    """One row per cache entry: ``name``, ``amax`` (None for zero-scale entries), ``scale``
    (the float32 scale, as a float) and ``hex`` (its 8-digit bit pattern); for a ``--method auto``
    cache also ``method``, the candidate chosen for the tensor.

    ``sort``: ``file`` (file order; zero-scale entries last), ``name``, or ``amax`` (largest first,
    zero-scale entries last: outliers first is what one looks for).
    """
    if sort not in SORT_KEYS:
        raise UsageError(f"--sort '{sort}' is not a sort order; use one of {', '.join(SORT_KEYS)}")
    rows: list[dict[str, Any]] = []
    choice = (loaded.auto or {}).get("choice")
    choice = choice if isinstance(choice, dict) else None
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
                **({"method": choice.get(name)} if choice is not None else {}),
            }
        )
    for name in loaded.parsed.zero_scale_names:
        rows.append(
            {
                "name": name, "amax": None, "scale": 0.0, "hex": scale_to_hex(0.0),
                **({"method": None} if choice is not None else {}),
            }
        )
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
    if p.is_legacy:
        desc["legacy"] = {**(p.legacy or {}), "note": LEGACY_NOTE}
    record = loaded.auto
    if record is not None:
        choice = record.get("choice") or {}
        counts: dict[str, int] = {}
        for lab in choice.values():
            counts[str(lab)] = counts.get(str(lab), 0) + 1
        desc["auto"] = {
            "metric": record.get("metric"),
            "scores": record.get("scores"),
            "best_single": record.get("best_single"),
            "score": record.get("score"),
            "methods": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "held_out": record.get("held_out"),
            "scoring_data": record.get("scoring_data"),
            "evaluations": record.get("evaluations"),
            "cost": record.get("cost"),
            "firmness": record.get("firmness"),
        }
    return desc


def render_auto_scores(record: dict[str, Any]) -> str:
    """The model-level score of every candidate and of the per-tensor choice (``--method auto``),
    from a sidecar's ``auto`` record or :func:`describe_cache`'s summary of it."""
    scores = record.get("scores") or {}
    best = record.get("best_single")
    held = record.get("held_out")
    where = "held-out calibration samples" if record.get("scoring_data", "held-out") == "held-out" else "samples of --data"
    folds = int((record.get("cost") or {}).get("folds") or 1)
    if folds > 1:
        where += f" ({folds} folds, each scored with ranges from the other samples' statistics)"
    lines = [f"auto: output SQNR (dB) and top-1 agreement (%) on {held} {where}, exact TensorRT arithmetic"]
    got = record.get("firmness")
    firm: dict[str, Any] = got if isinstance(got, dict) else {}
    got = firm.get("shares")
    shares: dict[str, Any] = got if isinstance(got, dict) else {}
    rows: list[tuple[str, ...]] = []
    for label, sc in scores.items():
        mark = " (best single)" if label == best else ""
        row: tuple[str, ...] = (f"{label}{mark}", _score_text(sc, "sqnr_db"), _score_text(sc, "agreement"))
        rows.append(row + ((_share_text(shares.get(label)),) if shares else ()))
    final = record.get("score") or {}
    choice = record.get("choice")
    counts = record.get("methods")
    if counts is None and isinstance(choice, dict):
        counts = {}
        for lab in choice.values():
            counts[lab] = counts.get(lab, 0) + 1
    mix = ", ".join(f"{k} {v}" for k, v in (counts or {}).items())
    rows.append((f"auto ({mix})", _score_text(final, "sqnr_db"), _score_text(final, "agreement"))
                + (("",) if shares else ()))
    width = max(len(r[0]) for r in rows)
    head = f"  {'candidate'.ljust(width)}  {'SQNR dB':>8}  {'agree %':>8}"
    lines.append(head + (f"  {'best in %':>9}" if shares else ""))
    lines.extend(f"  {r[0].ljust(width)}  " + "  ".join(f"{c:>{w}}" for c, w in zip(r[1:], (8, 8, 9), strict=False))
                 for r in rows)
    if best_share(firm, str(best)) is not None:
        lines.append("  " + firmness_line(firm, str(best)))
    cost = record.get("cost") or {}
    if cost:
        lines.append(
            f"  {record.get('evaluations')} evaluations, {cost.get('sample_forwards')} sample forwards = "
            f"{_fmt(cost.get('passes'))}x one pass over the {cost.get('calibration_samples')} calibration samples"
            + ("; the FP32 reference came from the statistics pass" if cost.get("reference") == "statistics pass" else "")
        )
    return "\n".join(lines)


def _share_text(share: Any) -> str:
    return "-" if share is None else f"{100.0 * float(share):.0f}"


def best_share(firmness: Any, best: str) -> tuple[float, bool] | None:
    """(share, uncertain) of ``best`` in ``--method auto``'s ``firmness`` record
    (:func:`quant.calibrators.auto.bootstrap_shares`); None where the record has no share for it."""
    shares = firmness.get("shares") if isinstance(firmness, dict) else None
    if not isinstance(shares, dict) or shares.get(best) is None:
        return None
    share = float(shares[best])
    return share, share < float(firmness.get("firm_share", 0.5))


def firmness_line(firmness: dict[str, Any], best: str) -> str:
    """One sentence on how firmly the scored samples back ``best`` (see :func:`best_share`)."""
    share, uncertain = best_share(firmness, best) or (0.0, False)
    text = (f"'best in %': the share of {firmness.get('resamples')} bootstrap resamples of the "
            f"{firmness.get('samples')} scored samples in which a candidate scores best; {best}: "
            f"{100.0 * share:.0f} %")
    if uncertain:
        return (text + ". Uncertain: the candidates lie within the noise of these samples, so a "
                "similar set could have chosen another; more calibration data would settle it")
    return text


def _score_text(score: Any, key: str) -> str:
    if not isinstance(score, dict):
        return "-"
    v = score.get(key)
    if v is None:
        return "inf" if key == "sqnr_db" and key in score else "-"
    return f"{float(v):.2f}" if key == "sqnr_db" else f"{float(v):.1f}"


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
    legacy = desc.get("legacy")
    if legacy:
        if legacy.get("quantile") is not None:
            lines.append(f"quantile   {legacy['quantile']:.10g}")
        if legacy.get("regression_cutoff") is not None:
            lines.append(f"cutoff     {legacy['regression_cutoff']:.10g}")
        if legacy.get("fields"):
            lines.append(f"legacy     {' '.join(legacy['fields'])} (the calibrator's parameter line)")
        lines.append(f"note       {legacy['note']}")
    for w in desc.get("warnings") or ():
        lines.append(f"warning    {w}")
    if desc.get("auto"):
        lines.append(render_auto_scores(desc["auto"]))
    if rows:
        with_method = any("method" in r for r in rows)
        headers: tuple[str, ...] = ("name", "amax", "scale", "hex", *(("method",) if with_method else ()))
        cells = [
            (str(r["name"]), _fmt(r["amax"]), _fmt(r["scale"]), _fmt(r["hex"]),
             *((_fmt(r.get("method")),) if with_method else ()))
            for r in rows
        ]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
        lines.append("")
        lines.append(_row(headers, widths))
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(_row(c, widths) for c in cells)
    return "\n".join(lines) + "\n"


__all__ = ["SORT_KEYS", "cache_table", "describe_cache", "render_auto_scores", "render_cache_description"]
