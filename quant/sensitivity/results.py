"""Pure value objects and maths of sensitivity and fallback: measurements, ranking, budgets.

Metrics (``metric``), each turned into a *loss* where higher is worse:

- ``accuracy``: top-1 accuracy on the data's labels; loss = FP32 top-1 minus this top-1, in points.
- ``agreement``: top-1 agreement with FP32's class (no labels needed); loss = 100 - agreement.
- ``sqnr``: the worst output SQNR against FP32; loss = noise-to-signal power ratio
  ``10 ** (-SQNR / 10)`` (linear, 0 when exact), so that the noise of several layers adds up.

``auto`` is ``accuracy`` for a classifier with labelled data, ``agreement`` for a classifier
without labels, ``sqnr`` otherwise. Every measurement also records the SQNR (and top-1 /
agreement for a classifier), whatever the metric.

Per layer ``k`` (see :func:`rank_layers`):

- ``damage`` = loss(only ``k`` in INT8) - loss(FP32): what quantizing this layer costs by itself;
- ``gain`` = loss(all INT8) - loss(all INT8 but ``k``): what keeping this layer in float saves;
- ``score`` = damage + gain (each counted as 0 when negative: INT8 "helping" a few samples is
  noise), ranked highest first. Ties (common with a classification metric on few samples: most
  single layers flip no prediction) are broken by ``noise_score``, the same sum computed with the
  SQNR noise ratios, which is continuous; then by graph order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from quant.errors import DataError, ModelError, UsageError
from quant.eval._fields import (
    as_mapping,
    finite_or_none,
    get_bool,
    get_float,
    get_int,
    get_list,
    get_mapping,
    get_str,
)
from quant.eval.metrics import (
    ClassificationAccumulator,
    ClassificationMetrics,
    FidelityAccumulator,
    FidelityMetrics,
    FidelitySums,
)

__all__ = [
    "METRICS",
    "Budget",
    "FallbackResult",
    "FallbackStep",
    "LayerSensitivity",
    "Measurement",
    "MeasurementAccumulator",
    "SensitivityOptions",
    "SensitivityResult",
    "format_measurement",
    "metric_loss",
    "merge_partials",
    "rank_layers",
    "ranks",
    "render_fallback",
    "render_sensitivity",
    "resolve_metric",
    "spearman",
]

METRICS = ("auto", "accuracy", "agreement", "sqnr")
#: Noise ratios are capped here in sums, so that scores stay finite (JSON has no infinity).
NOISE_CAP = 1e12
#: How ``quant sensitivity`` ranks (SensitivityOptions.ranking).
RANKINGS = ("auto", "first-order", "measured")


# --- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitivityOptions:
    """How sensitivity is measured: the metric (``auto`` picks, see the module docstring), the
    classifier output to score (default: the first (N, C) float output), layers kept in float in
    every configuration (``exclude``: node names or op types), ONNX Runtime threads, and the
    number of suffix models that let single-layer configurations skip the unchanged prefix
    (``segments``; 0: none; each holds part of the weights, see quant.sensitivity.measure)."""

    metric: str = "auto"
    classifier_output: str | None = None
    exclude: tuple[str, ...] = ()
    threads: int | None = None
    segments: int = 4
    exact: bool = False
    confidence: float = 0.9
    round_samples: int = 4
    min_samples: int = 16
    #: auto: the first-order estimate (quant.sensitivity.estimate) where it applies (metric sqnr,
    #: PyTorch installed, every op supported, no --exact, no layer shards), else the measurement;
    #: first-order: the estimate or an error; measured: the ONNX Runtime measurement.
    ranking: str = "auto"
    probes: int = 2
    #: First-order: estimate each gain from an INT8 autograd pass (True), or take it equal to the
    #: damage (False, the default: its first-order value; 13x instead of 17x one FP32 pass on
    #: ResNet-50, and the rankings of real models held either way: docs/SENSITIVITY.md).
    gains: bool = False

    def __post_init__(self) -> None:
        if self.ranking not in RANKINGS:
            raise UsageError(f"--ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        if self.probes < 1:
            raise UsageError(f"--probes must be at least 1, got {self.probes}")
        if not 0.0 < self.confidence <= 1.0:
            raise UsageError(f"--confidence must be in (0, 1], got {self.confidence}")
        if self.round_samples < 1:
            raise UsageError(f"--round-samples must be at least 1, got {self.round_samples}")
        if self.metric not in METRICS:
            raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.segments < 0:
            raise UsageError(f"--segments must be 0 or more, got {self.segments}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "classifier_output": self.classifier_output,
            "exclude": list(self.exclude),
            "threads": self.threads,
            "segments": self.segments,
            "exact": self.exact,
            "confidence": self.confidence,
            "round_samples": self.round_samples,
            "min_samples": self.min_samples,
            "ranking": self.ranking,
            "probes": self.probes,
            "gains": self.gains,
        }


# --- measurements ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One precision configuration measured against FP32 on the same samples.

    ``top1``: accuracy on labels in percent (None without labels or classifier); ``agreement``:
    percent of samples whose top-1 class is FP32's (None without classifier); ``sqnr_db``: the
    lowest SQNR over the model outputs (None when ``exact`` or when undefined, e.g. NaN outputs).
    """

    num_samples: int
    top1: float | None
    agreement: float | None
    sqnr_db: float | None
    exact: bool

    @property
    def noise(self) -> float:
        """Noise-to-signal power ratio: 0 when exact, +inf when undefined."""
        if self.exact:
            return 0.0
        if self.sqnr_db is None:
            return math.inf
        return float(10.0 ** (-self.sqnr_db / 10.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_samples": self.num_samples,
            "top1": finite_or_none(self.top1),
            "agreement": finite_or_none(self.agreement),
            "sqnr_db": finite_or_none(self.sqnr_db),
            "exact": self.exact,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "measurement") -> Measurement:
        d = as_mapping(data, where)
        return cls(
            num_samples=get_int(d, "num_samples", where),
            top1=get_float(d, "top1", where, nullable=True),
            agreement=get_float(d, "agreement", where, nullable=True),
            sqnr_db=get_float(d, "sqnr_db", where, nullable=True),
            exact=get_bool(d, "exact", where),
        )


@dataclass(frozen=True)
class PartialMeasurement:
    """The sums and counts behind a :class:`Measurement` on some of the samples: partials of
    disjoint samples merge (:meth:`merge`) into what one measurement over all of them gives."""

    samples: int
    fidelity: tuple[tuple[str, FidelitySums], ...]
    classification: ClassificationMetrics | None

    def merge(self, other: PartialMeasurement) -> PartialMeasurement:
        theirs = dict(other.fidelity)
        cls = self.classification
        if cls is not None and other.classification is not None:
            cls = cls.merge(other.classification)
        return PartialMeasurement(
            samples=self.samples + other.samples,
            fidelity=tuple((o, f.merge(theirs[o])) for o, f in self.fidelity),
            classification=cls if cls is not None else other.classification,
        )

    def result(self) -> Measurement:
        worst = min(
            (FidelityMetrics.from_sums(o, f).sqnr_value for o, f in self.fidelity), default=math.inf
        )
        top1 = agreement = None
        if self.classification is not None:
            top1, agreement = self.classification.top1, self.classification.agreement
        return Measurement(
            num_samples=self.samples,
            top1=top1,
            agreement=agreement,
            sqnr_db=worst if math.isfinite(worst) else None,
            exact=worst == math.inf,
        )


def merge_partials(parts: Sequence[PartialMeasurement]) -> Measurement:
    """One Measurement from the partials of disjoint sample sets (at least one)."""
    total = parts[0]
    for p in parts[1:]:
        total = total.merge(p)
    return total.result()


class MeasurementAccumulator:
    """Streams batches of one configuration's outputs against the reference's into a Measurement."""

    def __init__(self, outputs: Sequence[str], classifier_output: str | None) -> None:
        self._outputs = tuple(outputs)
        self._cls = ClassificationAccumulator(classifier_output) if classifier_output is not None else None
        self._fid = {o: FidelityAccumulator(o) for o in self._outputs}
        self._samples = 0

    def update(
        self,
        outputs: Mapping[str, np.ndarray],
        reference: Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
    ) -> None:
        for o in self._outputs:
            self._fid[o].update(outputs[o], reference[o])
        if self._cls is not None:
            name = self._cls.output
            self._cls.update(outputs[name], labels, reference[name])
        self._samples += int(np.asarray(reference[self._outputs[0]]).shape[0]) if self._outputs else 0

    def partial(self) -> PartialMeasurement:
        """The sums and counts so far (mergeable with other samples' partials)."""
        return PartialMeasurement(
            samples=self._samples,
            fidelity=tuple((o, f.sums()) for o, f in self._fid.items()),
            classification=None if self._cls is None else self._cls.result(),
        )

    def result(self) -> Measurement:
        return self.partial().result()


def resolve_metric(requested: str, *, classifier_output: str | None, has_labels: bool) -> str:
    """The metric actually used for ``requested`` (see the module docstring); errors name the fix."""
    if requested not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got {requested!r}")
    if requested == "auto":
        if classifier_output is None:
            return "sqnr"
        return "accuracy" if has_labels else "agreement"
    if requested in ("accuracy", "agreement") and classifier_output is None:
        raise ModelError(
            f"--metric {requested} needs a classifier output (float (N, C) or (N, C, 1, 1)) and the model "
            "has none; use --metric sqnr"
        )
    if requested == "accuracy" and not has_labels:
        raise DataError(
            "--metric accuracy needs labelled data (class subfolders or an npz 'labels' key); "
            "use --metric agreement"
        )
    return requested


def metric_loss(metric: str, m: Measurement, reference: Measurement) -> float:
    """How much worse ``m`` is than FP32 under ``metric`` (points, or a noise ratio for sqnr)."""
    if metric == "accuracy":
        if m.top1 is None or reference.top1 is None:
            raise DataError(
                "accuracy is not available for this measurement (no labels); use --metric agreement"
            )
        return reference.top1 - m.top1
    if metric == "agreement":
        if m.agreement is None:
            raise ModelError("agreement is not available for this measurement (no classifier output)")
        return 100.0 - m.agreement
    if metric == "sqnr":
        return min(m.noise, NOISE_CAP)
    raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS[1:])}")


def format_measurement(m: Measurement) -> str:
    """``top-1 97.30 %, agreement 99.10 %, SQNR 31.2 dB`` (the parts that exist)."""
    parts = []
    if m.top1 is not None:
        parts.append(f"top-1 {m.top1:.2f} %")
    if m.agreement is not None:
        parts.append(f"agreement {m.agreement:.2f} %")
    if m.exact:
        parts.append("SQNR exact")
    elif m.sqnr_db is None:
        parts.append("SQNR undefined")
    else:
        parts.append(f"SQNR {m.sqnr_db:.1f} dB")
    return ", ".join(parts)


def _loss_text(metric: str, loss: float) -> str:
    if metric == "sqnr":
        if loss <= 0:
            return "exact"
        return f"{-10.0 * math.log10(loss):.1f} dB" if loss < NOISE_CAP else "undefined"
    return f"{loss:.2f} points"


# --- ranking -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's measurements and scores (see the module docstring); ``rank`` 1 = most sensitive.

    ``pattern`` is the ``--exclude`` pattern that keeps this layer alone in float (None: the node
    cannot be excluded by name).
    """

    rank: int
    index: int
    name: str
    op_type: str
    pattern: str | None
    quantized_alone: Measurement
    float_alone: Measurement
    damage: float
    gain: float
    score: float
    noise_score: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "index": self.index,
            "name": self.name,
            "op_type": self.op_type,
            "pattern": self.pattern,
            "damage": self.damage,
            "gain": self.gain,
            "score": self.score,
            "noise_score": self.noise_score,
            "quantized_alone": self.quantized_alone.to_dict(),
            "float_alone": self.float_alone.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "layer") -> LayerSensitivity:
        d = as_mapping(data, where)
        return cls(
            rank=get_int(d, "rank", where, minimum=1),
            index=get_int(d, "index", where),
            name=get_str(d, "name", where),
            op_type=get_str(d, "op_type", where),
            pattern=get_str(d, "pattern", where, nullable=True),
            quantized_alone=Measurement.from_dict(
                get_mapping(d, "quantized_alone", where), f"{where}.quantized_alone"
            ),
            float_alone=Measurement.from_dict(get_mapping(d, "float_alone", where), f"{where}.float_alone"),
            damage=get_float(d, "damage", where),
            gain=get_float(d, "gain", where),
            score=get_float(d, "score", where),
            noise_score=get_float(d, "noise_score", where),
        )


class LayerLike(Protocol):
    """What ranking needs to know of a layer (:class:`~quant.sensitivity.switchable.Layer` fits)."""

    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def op_type(self) -> str: ...
    @property
    def pattern(self) -> str | None: ...


def rank_layers(
    layers: Sequence[LayerLike],
    quantized_alone: Sequence[Measurement],
    float_alone: Sequence[Measurement],
    *,
    metric: str,
    reference: Measurement,
    all_int8: Measurement,
) -> tuple[LayerSensitivity, ...]:
    """Score and rank ``layers``, most sensitive first (see the module docstring).

    ``quantized_alone[i]`` / ``float_alone[i]`` are layer i's two configurations.
    """
    if not len(layers) == len(quantized_alone) == len(float_alone):
        raise UsageError(
            "rank_layers needs one 'quantized alone' and one 'float alone' measurement per layer"
        )
    base = metric_loss(metric, reference, reference)
    loss_all = metric_loss(metric, all_int8, reference)
    noise_all = min(all_int8.noise, NOISE_CAP)
    scored = []
    for layer, alone, allbut in zip(layers, quantized_alone, float_alone, strict=True):
        damage = metric_loss(metric, alone, reference) - base
        gain = loss_all - metric_loss(metric, allbut, reference)
        noise_score = min(alone.noise, NOISE_CAP) + noise_all - min(allbut.noise, NOISE_CAP)
        # A negative damage or gain (INT8 "helped": a few lucky flips) is noise: it counts as 0.
        scored.append((layer, alone, allbut, damage, gain, max(damage, 0.0) + max(gain, 0.0), noise_score))
    scored.sort(key=lambda s: (-s[5], -s[6], s[0].index))
    return tuple(
        LayerSensitivity(
            rank=r,
            index=layer.index,
            name=layer.name,
            op_type=layer.op_type,
            pattern=layer.pattern,
            quantized_alone=alone,
            float_alone=allbut,
            damage=float(damage),
            gain=float(gain),
            score=float(score),
            noise_score=float(noise_score),
        )
        for r, (layer, alone, allbut, damage, gain, score, noise_score) in enumerate(scored, start=1)
    )


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values`` (ties get their average rank), for Spearman's correlation."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v), dtype=np.float64)
    r[order] = np.arange(1, len(v) + 1, dtype=np.float64)
    for value in np.unique(v):
        same = v == value
        if np.count_nonzero(same) > 1:
            r[same] = r[same].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences (1.0 when either is constant
    and both are: nothing to disagree on; 0.0 when only one is)."""
    ra, rb = ranks(a), ranks(b)
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if denom == 0.0:
        return 1.0 if float(np.sum(da * da)) == float(np.sum(db * db)) == 0.0 else 0.0
    return float(np.sum(da * db)) / denom


def positions(layers: Sequence[LayerSensitivity]) -> dict[int, int]:
    """{layer index: rank} of a ranking."""
    return {layer.index: layer.rank for layer in layers}


@dataclass(frozen=True)
class SensitivityResult:
    """Per-layer sensitivity of a model: the ranked layers, the reference and the all-INT8 result.

    ``configurations`` counts the precision configurations run (FP32 included: 2 + 2 x layers)
    and ``forward_passes`` = configurations x samples: the cost, which grows as layers x samples.
    ``segments`` suffix models let single-layer configurations skip the unchanged prefix;
    ``work_fraction`` is the share of full-model work those passes actually did.
    """

    metric: str
    classifier_output: str | None
    outputs: tuple[str, ...]
    num_samples: int
    batch_size: int
    has_labels: bool
    reference: Measurement
    all_int8: Measurement
    layers: tuple[LayerSensitivity, ...]
    configurations: int
    forward_passes: int
    seconds: float
    base_exclude: tuple[str, ...] = ()
    segments: int = 0
    work_fraction: float = 1.0
    sampling: str = "all"
    samples_available: int | None = None
    confidence: float | None = None
    #: How a first-order estimate was made (quant.sensitivity.estimate); None when measured.
    estimate: Mapping[str, Any] | None = None

    @property
    def ranking(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def all_int8_loss(self) -> float:
        return metric_loss(self.metric, self.all_int8, self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "classifier_output": self.classifier_output,
            "outputs": list(self.outputs),
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "has_labels": self.has_labels,
            "reference": self.reference.to_dict(),
            "all_int8": self.all_int8.to_dict(),
            "all_int8_loss": finite_or_none(self.all_int8_loss),
            "layers": [layer.to_dict() for layer in self.layers],
            "configurations": self.configurations,
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
            "base_exclude": list(self.base_exclude),
            "segments": self.segments,
            "work_fraction": self.work_fraction,
            "sampling": self.sampling,
            "samples_available": self.samples_available,
            "confidence": finite_or_none(self.confidence),
            "estimate": None if self.estimate is None else dict(self.estimate),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "sensitivity") -> SensitivityResult:
        d = as_mapping(data, where)
        metric = get_str(d, "metric", where)
        if metric not in METRICS[1:]:
            raise DataError(f"field '{where}.metric' is {metric!r}; expected one of {', '.join(METRICS[1:])}")
        outputs = get_list(d, "outputs", where)
        excl = get_list(d, "base_exclude", where)
        if not all(isinstance(o, str) for o in [*outputs, *excl]):
            raise DataError(f"field '{where}.outputs' / '{where}.base_exclude' must list strings")
        return cls(
            metric=metric,
            classifier_output=get_str(d, "classifier_output", where, nullable=True),
            outputs=tuple(outputs),
            num_samples=get_int(d, "num_samples", where),
            batch_size=get_int(d, "batch_size", where, minimum=1),
            has_labels=get_bool(d, "has_labels", where),
            reference=Measurement.from_dict(get_mapping(d, "reference", where), f"{where}.reference"),
            all_int8=Measurement.from_dict(get_mapping(d, "all_int8", where), f"{where}.all_int8"),
            layers=tuple(
                LayerSensitivity.from_dict(x, f"{where}.layers[{i}]")
                for i, x in enumerate(get_list(d, "layers", where))
            ),
            configurations=get_int(d, "configurations", where),
            forward_passes=get_int(d, "forward_passes", where),
            seconds=get_float(d, "seconds", where),
            base_exclude=tuple(excl),
            segments=get_int(d, "segments", where),
            work_fraction=get_float(d, "work_fraction", where),
            sampling=get_str(d, "sampling", where) if "sampling" in d else "all",
            samples_available=get_int(d, "samples_available", where, nullable=True)
            if "samples_available" in d
            else None,
            confidence=get_float(d, "confidence", where, nullable=True) if "confidence" in d else None,
            estimate=dict(get_mapping(d, "estimate", where)) if d.get("estimate") is not None else None,
        )


def render_sensitivity(result: SensitivityResult, *, top: int | None = None) -> str:
    """A plain-text table of the ranking (the ``top`` first layers, all by default)."""
    m = result.metric
    unit = {"accuracy": "points of top-1", "agreement": "points of agreement", "sqnr": "noise/signal"}[m]
    lines = [
        f"per-layer sensitivity: {len(result.layers)} layers, {result.num_samples} samples, metric {m}"
        + (f" (output '{result.classifier_output}')" if result.classifier_output else ""),
        f"  FP32:      {format_measurement(result.reference)}",
        f"  all INT8:  {format_measurement(result.all_int8)}  (loss {_loss_text(m, result.all_int8_loss)})",
        "",
    ]
    head = "" if m == "sqnr" else f" ({'top-1' if m == 'accuracy' else 'agreement'} / SQNR)"
    rows = [("rank", "layer", "op", "damage", "gain", f"INT8 alone{head}", f"float alone{head}")]
    shown = result.layers if top is None else result.layers[:top]
    for layer in shown:
        rows.append(
            (
                str(layer.rank),
                layer.name,
                layer.op_type,
                _score_text(m, layer.damage),
                _score_text(m, layer.gain),
                _short(layer.quantized_alone, m),
                _short(layer.float_alone, m),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if top is not None and len(result.layers) > top:
        lines.append(f"... and {len(result.layers) - top} more layers")
    lines.append("")
    lines.append(f"damage / gain in {unit}; ranked by damage + gain, ties by SQNR")
    if result.estimate is not None:
        est = result.estimate
        exact = list(est.get("exact_outputs") or [])
        lines.append(
            f"ranking: first-order estimate (INT8 alone / float alone are estimated; FP32 and all INT8 are run): "
            f"2 forward + {est.get('backward_passes')} backward passes over {result.num_samples} samples "
            f"in {result.seconds:.1f} s; "
            + (f"exact damage on {', '.join(exact)}" if exact else f"{est.get('probes')} sign probes per batch")
        )
        lines.append("  (--ranking measured or --exact measures every configuration in ONNX Runtime)")
        return "\n".join(lines)
    lines.append(
        f"cost: {result.configurations} configurations x {result.num_samples} samples = "
        f"{result.forward_passes} forward passes in {result.seconds:.1f} s"
        + (
            f" ({result.segments} segments: {100 * result.work_fraction:.0f} % of the work of full passes)"
            if result.segments
            else ""
        )
    )
    if result.samples_available is not None:
        how = "stopped once steady" if result.sampling == "adaptive" else "every sample"
        conf = "n/a" if result.confidence is None else f"{result.confidence:.2f}"
        lines.append(
            f"samples: {result.num_samples} of {result.samples_available} ({how}); "
            f"ranking confidence (split-half reliability) {conf}"
        )
    return "\n".join(lines)


def _score_text(metric: str, value: float) -> str:
    return f"{value:.3g}" if metric == "sqnr" else f"{value:+.2f}"


def _short(m: Measurement, metric: str) -> str:
    """The metric's value, then the SQNR (what breaks ties) for a classification metric."""
    sqnr = "exact" if m.exact else ("undefined" if m.sqnr_db is None else f"{m.sqnr_db:.1f} dB")
    if metric == "accuracy" and m.top1 is not None:
        return f"{m.top1:.2f} % / {sqnr}"
    if metric == "agreement" and m.agreement is not None:
        return f"{m.agreement:.2f} % / {sqnr}"
    return sqnr


# --- fallback ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What a fallback build must meet: at most ``accuracy_points`` of top-1 lost against FP32 (on
    labels when the data has them, else 100 - agreement) and/or an SQNR of at least
    ``min_sqnr_db`` on every output. At least one must be given."""

    accuracy_points: float | None = None
    min_sqnr_db: float | None = None

    def __post_init__(self) -> None:
        if self.accuracy_points is None and self.min_sqnr_db is None:
            raise UsageError("a fallback needs --accuracy-budget POINTS or --min-sqnr DB")
        if self.accuracy_points is not None and not (
            math.isfinite(self.accuracy_points) and 0 <= self.accuracy_points <= 100
        ):
            raise UsageError(
                f"--accuracy-budget must be between 0 and 100 points, got {self.accuracy_points}"
            )
        if self.min_sqnr_db is not None and not math.isfinite(self.min_sqnr_db):
            raise UsageError(f"--min-sqnr must be a finite number of dB, got {self.min_sqnr_db}")

    def classification_metric(self, *, classifier_output: str | None, has_labels: bool) -> str | None:
        """``accuracy`` / ``agreement`` for the accuracy budget (None without one)."""
        if self.accuracy_points is None:
            return None
        if classifier_output is None:
            raise ModelError(
                "--accuracy-budget needs a classifier output (float (N, C) or (N, C, 1, 1)) and the model has "
                "none; use --min-sqnr DB"
            )
        return "accuracy" if has_labels else "agreement"

    def drop(self, m: Measurement, reference: Measurement, cls_metric: str | None) -> float | None:
        """Points lost against FP32 (None without an accuracy budget)."""
        if self.accuracy_points is None or cls_metric is None:
            return None
        return metric_loss(cls_metric, m, reference)

    def met(self, m: Measurement, reference: Measurement, cls_metric: str | None) -> bool:
        drop = self.drop(m, reference, cls_metric)
        if drop is not None and self.accuracy_points is not None and drop > self.accuracy_points + 1e-9:
            return False
        return not (
            self.min_sqnr_db is not None
            and not m.exact
            and (m.sqnr_db is None or m.sqnr_db < self.min_sqnr_db)
        )

    def describe(self, cls_metric: str | None = None) -> str:
        parts = []
        if self.accuracy_points is not None:
            what = "top-1 agreement" if cls_metric == "agreement" else "top-1"
            parts.append(f"at most {self.accuracy_points:g} points of {what} lost against FP32")
        if self.min_sqnr_db is not None:
            parts.append(f"SQNR at least {self.min_sqnr_db:g} dB")
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy_points": self.accuracy_points, "min_sqnr_db": self.min_sqnr_db}

    @classmethod
    def from_dict(cls, data: object, where: str = "budget") -> Budget:
        d = as_mapping(data, where)
        return cls(
            accuracy_points=get_float(d, "accuracy_points", where, nullable=True),
            min_sqnr_db=get_float(d, "min_sqnr_db", where, nullable=True),
        )


@dataclass(frozen=True)
class FallbackStep:
    """One greedy step: ``layer`` joined the float layers; the model then measured ``measurement``."""

    step: int
    layer: str
    op_type: str
    measurement: Measurement
    drop: float | None
    met: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "layer": self.layer,
            "op_type": self.op_type,
            "measurement": self.measurement.to_dict(),
            "drop": finite_or_none(self.drop),
            "met": self.met,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "step") -> FallbackStep:
        d = as_mapping(data, where)
        return cls(
            step=get_int(d, "step", where, minimum=1),
            layer=get_str(d, "layer", where),
            op_type=get_str(d, "op_type", where),
            measurement=Measurement.from_dict(get_mapping(d, "measurement", where), f"{where}.measurement"),
            drop=get_float(d, "drop", where, nullable=True),
            met=get_bool(d, "met", where),
        )


@dataclass(frozen=True)
class FallbackResult:
    """The greedy fallback: the budget, FP32 and all-INT8 measurements, every step, the layers kept
    in float (``fell_back``), the full exclusion list to rebuild the model (``exclude``: the user's
    own exclusions, then one pattern per fallen-back layer), whether the budget is met, and the
    measurement of the saved Q/DQ model itself (``verified``, ONNX Runtime on the same samples)."""

    budget: Budget
    metric: str | None
    reference: Measurement
    start: Measurement
    steps: tuple[FallbackStep, ...]
    fell_back: tuple[str, ...]
    exclude: tuple[str, ...]
    met: bool
    verified: Measurement | None = None
    forward_passes: int = 0
    seconds: float = 0.0

    @property
    def final(self) -> Measurement:
        """The last switchable-model measurement (the start when no layer fell back)."""
        return self.steps[-1].measurement if self.steps else self.start

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget.to_dict(),
            "metric": self.metric,
            "reference": self.reference.to_dict(),
            "start": self.start.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "fell_back": list(self.fell_back),
            "exclude": list(self.exclude),
            "met": self.met,
            "verified": None if self.verified is None else self.verified.to_dict(),
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "fallback") -> FallbackResult:
        d = as_mapping(data, where)
        verified = get_mapping(d, "verified", where, nullable=True)
        lists = {k: get_list(d, k, where) for k in ("fell_back", "exclude")}
        for k, v in lists.items():
            if not all(isinstance(x, str) for x in v):
                raise DataError(f"field '{where}.{k}' must be a list of strings")
        return cls(
            budget=Budget.from_dict(get_mapping(d, "budget", where), f"{where}.budget"),
            metric=get_str(d, "metric", where, nullable=True),
            reference=Measurement.from_dict(get_mapping(d, "reference", where), f"{where}.reference"),
            start=Measurement.from_dict(get_mapping(d, "start", where), f"{where}.start"),
            steps=tuple(
                FallbackStep.from_dict(s, f"{where}.steps[{i}]")
                for i, s in enumerate(get_list(d, "steps", where))
            ),
            fell_back=tuple(lists["fell_back"]),
            exclude=tuple(lists["exclude"]),
            met=get_bool(d, "met", where),
            verified=None if verified is None else Measurement.from_dict(verified, f"{where}.verified"),
            forward_passes=get_int(d, "forward_passes", where),
            seconds=get_float(d, "seconds", where),
        )


def render_fallback(result: FallbackResult) -> str:
    """The greedy steps as text: budget, start, one line per layer kept in float, verdict."""
    b = result.budget
    lines = [
        f"fallback budget: {b.describe(result.metric)}",
        f"  FP32:      {format_measurement(result.reference)}",
        f"  all INT8:  {format_measurement(result.start)}" + _drop_text(b, result.start, result),
    ]
    for s in result.steps:
        lines.append(
            f"  step {s.step}: {s.layer} ({s.op_type}) -> float: {format_measurement(s.measurement)}"
            + _drop_text(b, s.measurement, result)
            + ("  [budget met]" if s.met else "")
        )
    if result.verified is not None:
        lines.append(
            f"  saved model: {format_measurement(result.verified)}" + _drop_text(b, result.verified, result)
        )
    if not result.steps:
        lines.append("no layer needed to fall back" if result.met else "no layer could fall back")
    else:
        lines.append(f"{len(result.fell_back)} layers kept in float: {', '.join(result.fell_back)}")
    lines.append("budget met" if result.met else "budget NOT met")
    return "\n".join(lines)


def _drop_text(b: Budget, m: Measurement, result: FallbackResult) -> str:
    d = b.drop(m, result.reference, result.metric)
    return "" if d is None else f"  (drop {d:.2f} points)"
