"""Report sections for the per-layer view: layer errors and activation histograms.

The report never runs models: :func:`layer_report_sections` turns result objects (the
:class:`~quant.eval.layers.LayerError` list and the calibration statistics) into two JSON-ready
sections stored in ``report.extra``:

* ``extra["layers"]`` (:class:`LayerSection`): every quantized layer's error, worst first.
* ``extra["histograms"]`` (:class:`HistogramSection`): for the worst layers, the |x| histogram of
  each quantized input tensor (the tensors whose amax was used), downsampled from the statistics
  file's bins (2048 by default) to about :data:`HISTOGRAM_BINS` bins over [0, absmax], with amax,
  absmax, the calibration method and how many values lie above amax.

Both are read back with :func:`read_sections` (ReportError naming the field when damaged).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant.calibrators.stats import TensorStats
from quant.errors import ReportError
from quant.eval._fields import (
    as_mapping,
    get_float,
    get_int,
    get_list,
    get_str,
)
from quant.eval.layers import LayerError, rank_layers

__all__ = [
    "HISTOGRAM_BINS",
    "WORST_LAYERS",
    "ActivationHistogram",
    "HistogramSection",
    "LayerSection",
    "downsample_histogram",
    "histogram_of",
    "layer_report_sections",
    "method_scores",
    "read_sections",
]

#: Target number of bins of a stored histogram (at most this many).
HISTOGRAM_BINS = 128
#: Number of worst layers whose input histograms are stored.
WORST_LAYERS = 6

LAYERS_KEY = "layers"
HISTOGRAMS_KEY = "histograms"


def _str_list(d: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = get_list(d, key, where)
    if not all(isinstance(i, str) for i in items):
        raise ReportError(f"field '{where}.{key}' should be a list of strings; the report is damaged")
    return tuple(items)


@dataclass(frozen=True)
class ActivationHistogram:
    """The |x| histogram of one quantized tensor over the calibration data, with its amax.

    ``counts[i]`` counts the elements with ``i * bin_width <= |x| < (i + 1) * bin_width``
    (the last bin also holds the largest values); the bins cover [0, absmax] (the last edge may
    pass absmax by less than one bin). ``clipped`` counts elements in bins lying wholly above amax
    (a lower bound of the values amax clips). ``bin_width`` is 0 when every value was zero.
    """

    tensor: str
    layers: tuple[str, ...]
    bin_width: float
    counts: tuple[int, ...]
    count: int
    absmax: float
    amax: float | None
    method: str | None
    clipped: int

    @property
    def edges(self) -> list[float]:
        return [i * self.bin_width for i in range(len(self.counts) + 1)]

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "layers": list(self.layers),
            "bin_width": self.bin_width,
            "counts": list(self.counts),
            "count": self.count,
            "absmax": self.absmax,
            "amax": self.amax,
            "method": self.method,
            "clipped": self.clipped,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "histogram") -> ActivationHistogram:
        d = as_mapping(data, where)
        counts = get_list(d, "counts", where)
        if not counts or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            raise ReportError(
                f"field '{where}.counts' should be a non-empty list of non-negative integers; the report is damaged"
            )
        hist = cls(
            tensor=get_str(d, "tensor", where),
            layers=_str_list(d, "layers", where),
            bin_width=get_float(d, "bin_width", where),
            counts=tuple(counts),
            count=get_int(d, "count", where),
            absmax=get_float(d, "absmax", where),
            amax=get_float(d, "amax", where, nullable=True),
            method=get_str(d, "method", where, nullable=True),
            clipped=get_int(d, "clipped", where),
        )
        if sum(hist.counts) != hist.count or hist.bin_width < 0 or hist.clipped > hist.count:
            raise ReportError(
                f"field '{where}' has inconsistent counts (they sum to {sum(hist.counts)}, not {hist.count}); "
                "the report is damaged or was edited by hand"
            )
        return hist


@dataclass(frozen=True)
class LayerSection:
    """``extra["layers"]``: the layer errors worst first and how they were measured (``unavailable``:
    why there are none, e.g. no layer runs in INT8)."""

    items: tuple[LayerError, ...]
    num_samples: int
    batch_size: int
    max_samples: int
    data: str | None = None
    unavailable: str | None = None

    @property
    def has_local(self) -> bool:
        return any(e.local is not None for e in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ranking": "local SQNR (this layer alone), then SQNR in the INT8 model",
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "max_samples": self.max_samples,
            "data": self.data,
            "unavailable": self.unavailable,
            "items": [e.to_dict() for e in self.items],
        }

    @classmethod
    def from_dict(cls, data: object, where: str = f"extra.{LAYERS_KEY}") -> LayerSection:
        d = as_mapping(data, where)
        items = get_list(d, "items", where)
        return cls(
            items=tuple(LayerError.from_dict(x, f"{where}.items[{i}]") for i, x in enumerate(items)),
            num_samples=get_int(d, "num_samples", where),
            batch_size=get_int(d, "batch_size", where, minimum=1),
            max_samples=get_int(d, "max_samples", where, minimum=1),
            data=get_str(d, "data", where, nullable=True),
            unavailable=get_str(d, "unavailable", where, nullable=True),
        )


@dataclass(frozen=True)
class HistogramSection:
    """``extra["histograms"]``: input histograms of the worst layers (or why there are none).

    ``missing`` lists wanted tensors the statistics do not hold; ``unavailable`` says why no
    histogram could be made at all (e.g. no statistics file next to the cache).
    """

    items: tuple[ActivationHistogram, ...]
    bins: int
    worst: int
    unavailable: str | None = None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "bins": self.bins,
            "worst": self.worst,
            "unavailable": self.unavailable,
            "missing": list(self.missing),
            "items": [h.to_dict() for h in self.items],
        }

    @classmethod
    def from_dict(cls, data: object, where: str = f"extra.{HISTOGRAMS_KEY}") -> HistogramSection:
        d = as_mapping(data, where)
        items = get_list(d, "items", where)
        return cls(
            items=tuple(ActivationHistogram.from_dict(x, f"{where}.items[{i}]") for i, x in enumerate(items)),
            bins=get_int(d, "bins", where, minimum=1),
            worst=get_int(d, "worst", where),
            unavailable=get_str(d, "unavailable", where, nullable=True),
            missing=_str_list(d, "missing", where) if "missing" in d else (),
        )


def downsample_histogram(stats: TensorStats, bins: int = HISTOGRAM_BINS) -> tuple[float, np.ndarray]:
    """(bin width, counts) of ``stats``'s |x| histogram in at most ``bins`` bins over [0, absmax].

    Whole fine bins are summed in groups, so the result is exact (no interpolation) and its
    counts still sum to ``stats.count``. All zeros (no range): width 0 and one bin.
    """
    if bins < 1:
        raise ValueError("bins must be at least 1")
    counts = np.asarray(stats.counts, dtype=np.int64)
    width = stats.bin_width
    if width <= 0 or stats.absmax <= 0:
        return 0.0, np.array([stats.count], dtype=np.int64)
    used = min(stats.num_bins, int(math.floor(stats.absmax / width)) + 1)
    group = math.ceil(used / bins)
    n_out = math.ceil(used / group)
    fine = np.zeros(n_out * group, dtype=np.int64)
    take = min(len(fine), len(counts))
    fine[:take] = counts[:take]
    fine[-1] += int(counts[take:].sum())  # values at the very top edge: keep the total exact
    return width * group, fine.reshape(n_out, group).sum(axis=1)


def histogram_of(
    tensor: str,
    stats: TensorStats,
    *,
    amax: float | None,
    method: str | None,
    layers: Sequence[str] = (),
    bins: int = HISTOGRAM_BINS,
) -> ActivationHistogram:
    """The stored histogram of one tensor (see :class:`ActivationHistogram`)."""
    width, counts = downsample_histogram(stats, bins)
    clipped = 0
    if amax is not None and amax > 0 and stats.bin_width > 0:
        first = math.ceil(amax / stats.bin_width)
        clipped = int(np.asarray(stats.counts)[first:].sum())
    return ActivationHistogram(
        tensor=tensor,
        layers=tuple(layers),
        bin_width=float(width),
        counts=tuple(int(c) for c in counts),
        count=int(stats.count),
        absmax=float(stats.absmax),
        amax=None if amax is None else float(amax),
        method=method,
        clipped=clipped,
    )


def layer_report_sections(
    errors: Sequence[LayerError],
    *,
    amax: Mapping[str, float],
    stats: Mapping[str, TensorStats] | None,
    method: str | Mapping[str, str] | None,
    batch_size: int,
    max_samples: int,
    data: str | None = None,
    worst: int = WORST_LAYERS,
    bins: int = HISTOGRAM_BINS,
    stats_unavailable: str | None = None,
    layers_unavailable: str | None = None,
) -> dict[str, Any]:
    """``{"layers": ..., "histograms": ...}`` for ``report.extra`` (JSON-ready dicts).

    ``stats`` are the calibration statistics (None: no histograms, ``stats_unavailable`` says
    why); ``amax`` the cache's ranges; ``method`` the calibration method, or per tensor the method
    ``--method auto`` chose; the histograms are those of the quantized inputs of the
    ``worst`` worst layers, in that order, each tensor once. ``layers_unavailable`` says why
    there are no layer errors (then both sections carry that reason).
    """
    ranked = rank_layers(errors)
    num_samples = ranked[0].fidelity.num_samples if ranked else 0
    layers = LayerSection(
        items=tuple(ranked),
        num_samples=num_samples,
        batch_size=batch_size,
        max_samples=max_samples,
        data=data,
        unavailable=layers_unavailable,
    )
    wanted: dict[str, list[str]] = {}
    for e in ranked[:worst]:
        for t in e.inputs:
            wanted.setdefault(t, []).append(e.layer)
    items: list[ActivationHistogram] = []
    missing: list[str] = []
    if stats is not None:
        for tensor, users in wanted.items():
            st = stats.get(tensor)
            if st is None:
                missing.append(tensor)
                continue
            how = method.get(tensor) if isinstance(method, Mapping) else method
            items.append(histogram_of(tensor, st, amax=amax.get(tensor), method=how, layers=users, bins=bins))
    unavailable = stats_unavailable if stats is None else None
    if layers_unavailable is not None:
        unavailable = layers_unavailable
    elif stats is None and unavailable is None:
        unavailable = "no calibration statistics were given"
    hist = HistogramSection(
        items=tuple(items), bins=bins, worst=worst, unavailable=unavailable, missing=tuple(missing)
    )
    return {LAYERS_KEY: layers.to_dict(), HISTOGRAMS_KEY: hist.to_dict()}


def read_sections(extra: Mapping[str, Any]) -> tuple[LayerSection | None, HistogramSection | None]:
    """The layer and histogram sections of ``report.extra`` (None where absent)."""
    layers = extra.get(LAYERS_KEY)
    hists = extra.get(HISTOGRAMS_KEY)
    return (
        None if layers is None else LayerSection.from_dict(layers),
        None if hists is None else HistogramSection.from_dict(hists),
    )



def method_scores(calibration: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Methods against fidelity, from a ``--method auto`` calibration section (``calibration["auto"]``,
    the sidecar's record): one row per candidate (``label``, ``params``, ``sqnr_db``, ``agreement``,
    ``tensors`` = how many tensors chose it), then the per-tensor choice (``label`` "auto"), all
    measured on the same held-out samples. Empty when the calibration was not ``auto``."""
    record = (calibration or {}).get("auto")
    if not isinstance(record, Mapping):
        return []
    scores = record.get("scores")
    if not isinstance(scores, Mapping):
        return []
    chosen: dict[str, int] = {}
    for lab in (record.get("choice") or {}).values():
        chosen[str(lab)] = chosen.get(str(lab), 0) + 1
    params = {
        str(c.get("label")): {k: v for k, v in c.items() if k not in ("label", "method")}
        for c in record.get("candidates") or ()
        if isinstance(c, Mapping)
    }
    firm = record.get("firmness")
    shares = firm.get("shares") if isinstance(firm, Mapping) else None
    shares = shares if isinstance(shares, Mapping) else {}
    rows: list[dict[str, Any]] = []
    for label, sc in scores.items():
        sc = sc if isinstance(sc, Mapping) else {}
        rows.append(
            {
                "label": str(label),
                "params": params.get(str(label), {}),
                "sqnr_db": sc.get("sqnr_db"),
                "agreement": sc.get("agreement"),
                "tensors": chosen.get(str(label), 0),
                "best_single": label == record.get("best_single"),
                "best_share": shares.get(label),
            }
        )
    score = record.get("score")
    final: Mapping[str, Any] = score if isinstance(score, Mapping) else {}
    rows.append(
        {
            "label": "auto",
            "params": {},
            "sqnr_db": final.get("sqnr_db"),
            "agreement": final.get("agreement"),
            "tensors": sum(chosen.values()),
            "best_single": False,
            "best_share": None,
        }
    )
    return rows
