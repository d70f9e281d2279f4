"""Streaming evaluation metrics: pure NumPy, memory independent of the number of samples.

Accumulators take one batch at a time (``update``) and keep only float64 running sums and counts;
``result()`` returns a small frozen value object with ``to_dict`` / ``from_dict``.

* :class:`ClassificationAccumulator`: top-1 / top-5 accuracy against labels and top-1 agreement
  with a reference precision's outputs. Accuracy and agreement are exposed as **percent** (0-100),
  so "0.5 accuracy points" in :mod:`quant.report.compare` is ``0.5`` in these units.
* :class:`FidelityAccumulator`: how close one output tensor is to the reference's, over the whole
  evaluation set:

  - ``cosine``: cosine similarity of the whole output set flattened into one vector
    (``sum(x*r) / sqrt(sum(x^2) * sum(r^2))`` accumulated in float64). This is the number the text
    table shows ("min cos" = lowest over outputs) because it weighs samples by their energy, like SQNR.
  - ``mean_sample_cosine`` / ``min_sample_cosine``: the mean and minimum of the per-sample cosines
    (each sample's output flattened); JSON only, useful to spot a few broken samples.
  - ``sqnr_db``: ``10*log10(sum r^2 / sum (r - x)^2)``. Identical outputs have infinite SQNR,
    which JSON cannot hold: they are ``sqnr_db = None`` with ``exact = True`` ("exact" in tables).
    A zero reference with non-zero error is ``None`` with ``exact = False`` (undefined).
  - ``mean_rel_error``: ``sum |x - r| / sum |r|`` (an L1 ratio over all elements, robust to
    elements where r is ~0, unlike a mean of per-element ratios); 0.0 when both sums are 0, None
    when only the reference sum is 0.
  - ``max_abs_error``: ``max |x - r|``.
  - ``nonfinite``: elements where either tensor is NaN/inf. When it is non-zero the other metrics
    are None (not meaningful), and :attr:`FidelityMetrics.sqnr_value` is -inf (worst).

  Integer and boolean outputs are cast to float64 before any arithmetic.

Ties between logits are broken towards the lower class index (like ``argmax``), for top-1, top-5
and agreement alike, so quantized outputs with equal logits are scored deterministically. NaN logits
rank below every number (they never win).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quant.errors import DataError, ModelError, ReportError
from quant.eval._fields import (
    as_mapping,
    finite_or_none,
    get_bool,
    get_float,
    get_int,
    get_mapping,
    get_str,
)

TOP5_MIN_CLASSES = 5


def is_classifier_shape(shape: Sequence[int], dtype: np.dtype) -> bool:
    """True for a float output of shape (N, C) or (N, C, 1, 1) with C >= 2."""
    if not np.issubdtype(dtype, np.floating):
        return False
    if len(shape) == 2:
        return shape[1] >= 2
    if len(shape) == 4:
        return shape[1] >= 2 and shape[2] == 1 and shape[3] == 1
    return False


def find_classifier_output(outputs: Mapping[str, np.ndarray], preferred: str | None = None) -> str | None:
    """The output to score as a classifier: ``preferred`` if given (it must exist and qualify),
    otherwise the first output (in mapping order) that qualifies, or None when none does."""
    if preferred is not None:
        if preferred not in outputs:
            raise ModelError(
                f"classifier output '{preferred}' is not an output of the model "
                f"(outputs: {', '.join(repr(n) for n in outputs)}); choose one of those"
            )
        arr = outputs[preferred]
        if not is_classifier_shape(arr.shape, arr.dtype):
            raise ModelError(
                f"output '{preferred}' has shape {tuple(arr.shape)} and dtype {arr.dtype}; a classifier "
                "output must be float of shape (N, C) or (N, C, 1, 1) with C >= 2; choose another output"
            )
        return preferred
    for name, arr in outputs.items():
        if is_classifier_shape(arr.shape, arr.dtype):
            return name
    return None


def _as_scores(logits: np.ndarray, name: str) -> np.ndarray:
    """(N, C) float64 view of classifier logits, NaN replaced by -inf."""
    arr = np.asarray(logits)
    if arr.ndim == 4 and arr.shape[2] == 1 and arr.shape[3] == 1:
        arr = arr.reshape(arr.shape[0], arr.shape[1])
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise ModelError(
            f"output '{name}' has shape {tuple(np.shape(logits))}; a classifier output must be "
            "(N, C) or (N, C, 1, 1) with C >= 2; choose another classifier output"
        )
    scores = arr.astype(np.float64)  # always a copy: never modify the caller's array
    scores[np.isnan(scores)] = -np.inf
    return scores


def _label_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of each label's class, ties broken towards the lower class index."""
    n, c = scores.shape
    label_scores = scores[np.arange(n), labels][:, None]
    idx = np.arange(c)[None, :]
    ahead = (scores > label_scores) | ((scores == label_scores) & (idx < labels[:, None]))
    return ahead.sum(axis=1)


def _percent(count: int | None, total: int) -> float | None:
    if count is None or total == 0:
        return None
    return 100.0 * count / total


@dataclass(frozen=True)
class ClassificationMetrics:
    """Counts behind top-1/top-5 accuracy and agreement; percentages are derived properties.

    ``num_labeled`` samples had labels (accuracy is over those); ``num_compared`` samples were
    compared with a reference (agreement is over those). ``top5_correct`` is None when C < 5.
    """

    output: str
    num_samples: int
    num_classes: int
    num_labeled: int = 0
    top1_correct: int = 0
    top5_correct: int | None = None
    num_compared: int = 0
    agree_count: int = 0

    @property
    def top1(self) -> float | None:
        """Top-1 accuracy in percent, None without labels."""
        return _percent(self.top1_correct, self.num_labeled)

    @property
    def top5(self) -> float | None:
        """Top-5 accuracy in percent, None without labels or with fewer than 5 classes."""
        return _percent(self.top5_correct, self.num_labeled)

    @property
    def agreement(self) -> float | None:
        """Percent of samples whose top-1 class equals the reference's, None without a reference."""
        return _percent(self.agree_count, self.num_compared)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "num_labeled": self.num_labeled,
            "top1_correct": self.top1_correct,
            "top5_correct": self.top5_correct,
            "num_compared": self.num_compared,
            "agree_count": self.agree_count,
            # Derived, for people reading the JSON; from_dict recomputes them from the counts.
            "top1": self.top1,
            "top5": self.top5,
            "agreement": self.agreement,
        }

    def merge(self, other: ClassificationMetrics) -> ClassificationMetrics:
        """The counts of both (disjoint samples of the same output): what one run over both
        sample sets gives. ReportError when the output or the number of classes differs."""
        if other.output != self.output:
            raise ReportError(
                f"cannot merge classification of output '{other.output}' into '{self.output}'; "
                "the reports score different classifier outputs"
            )
        if self.num_samples and other.num_samples and other.num_classes != self.num_classes:
            raise ReportError(
                f"output '{self.output}' has {other.num_classes} classes in one report and "
                f"{self.num_classes} in another; the reports are of different models"
            )
        top5: int | None = None
        if self.top5_correct is not None or other.top5_correct is not None:
            top5 = (self.top5_correct or 0) + (other.top5_correct or 0)
        return ClassificationMetrics(
            output=self.output,
            num_samples=self.num_samples + other.num_samples,
            num_classes=self.num_classes if self.num_samples else other.num_classes,
            num_labeled=self.num_labeled + other.num_labeled,
            top1_correct=self.top1_correct + other.top1_correct,
            top5_correct=top5,
            num_compared=self.num_compared + other.num_compared,
            agree_count=self.agree_count + other.agree_count,
        )

    @classmethod
    def from_dict(cls, data: object, where: str = "classification") -> ClassificationMetrics:
        d = as_mapping(data, where)
        m = cls(
            output=get_str(d, "output", where),
            num_samples=get_int(d, "num_samples", where),
            num_classes=get_int(d, "num_classes", where),
            num_labeled=get_int(d, "num_labeled", where),
            top1_correct=get_int(d, "top1_correct", where),
            top5_correct=get_int(d, "top5_correct", where, nullable=True),
            num_compared=get_int(d, "num_compared", where),
            agree_count=get_int(d, "agree_count", where),
        )
        bad = (
            m.num_labeled > m.num_samples
            or m.num_compared > m.num_samples
            or m.top1_correct > m.num_labeled
            or (m.top5_correct is not None and not m.top1_correct <= m.top5_correct <= m.num_labeled)
            or m.agree_count > m.num_compared
        )
        if bad:
            raise ReportError(
                f"field '{where}' has inconsistent counts (e.g. more correct than labeled samples); "
                "the report is damaged or was edited by hand"
            )
        return m


class ClassificationAccumulator:
    """Streaming top-1/top-5 accuracy and top-1 agreement for one classifier output."""

    def __init__(self, output: str = "output") -> None:
        self.output = output
        self._num_classes: int | None = None
        self._num_samples = 0
        self._num_labeled = 0
        self._top1 = 0
        self._top5 = 0
        self._num_compared = 0
        self._agree = 0

    def update(
        self,
        logits: np.ndarray,
        labels: np.ndarray | None = None,
        reference_logits: np.ndarray | None = None,
    ) -> None:
        """Add one batch. ``labels``: integer class indices of shape (N,) (or (N, 1));
        ``reference_logits``: the reference precision's logits for the same batch."""
        scores = _as_scores(logits, self.output)
        n, c = scores.shape
        if self._num_classes is None:
            self._num_classes = c
        elif c != self._num_classes:
            raise ModelError(
                f"output '{self.output}' has {c} classes in this batch but {self._num_classes} before; "
                "the classifier output must have a fixed number of classes"
            )
        if labels is not None:
            lab = self._check_labels(labels, n, c)
            rank = _label_rank(scores, lab)
            self._top1 += int(np.count_nonzero(rank < 1))
            if c >= TOP5_MIN_CLASSES:
                self._top5 += int(np.count_nonzero(rank < TOP5_MIN_CLASSES))
            self._num_labeled += n
        if reference_logits is not None:
            ref = _as_scores(reference_logits, self.output)
            if ref.shape != scores.shape:
                raise ModelError(
                    f"output '{self.output}' has shape {scores.shape} but the reference's has shape "
                    f"{ref.shape} for the same batch; the models do not compute the same thing"
                )
            self._agree += int(np.count_nonzero(scores.argmax(axis=1) == ref.argmax(axis=1)))
            self._num_compared += n
        self._num_samples += n

    def _check_labels(self, labels: np.ndarray, n: int, c: int) -> np.ndarray:
        lab = np.asarray(labels)
        if lab.ndim == 2 and lab.shape[1] == 1:
            lab = lab[:, 0]
        if lab.ndim != 1 or lab.shape[0] != n:
            raise DataError(
                f"labels have shape {tuple(np.shape(labels))} but output '{self.output}' has {n} samples "
                "in this batch; labels must be one class index per sample"
            )
        if np.issubdtype(lab.dtype, np.floating):
            if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
                raise DataError("labels must be integer class indices; found non-integer values")
            lab = lab.astype(np.int64)
        elif not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"labels must be integer class indices, not {lab.dtype}")
        lab = lab.astype(np.int64)
        bad = np.flatnonzero((lab < 0) | (lab >= c))
        if bad.size:
            raise DataError(
                f"label {int(lab[bad[0]])} (batch position {int(bad[0])}) is outside the {c} classes of "
                f"output '{self.output}'; do the labels match the model's classes?"
            )
        return lab

    def result(self) -> ClassificationMetrics:
        c = self._num_classes or 0
        return ClassificationMetrics(
            output=self.output,
            num_samples=self._num_samples,
            num_classes=c,
            num_labeled=self._num_labeled,
            top1_correct=self._top1,
            top5_correct=self._top5 if c >= TOP5_MIN_CLASSES else None,
            num_compared=self._num_compared,
            agree_count=self._agree,
        )


@dataclass(frozen=True)
class FidelitySums:
    """The float64 sums, counts and extremes behind :class:`FidelityMetrics`.

    Every metric is a function of these, and two disjoint sample sets' sums combine by addition
    (``max`` / ``min`` for the extremes), so partial results of shards merge into what one run
    over all samples gives (up to the order of float64 additions: about 1e-16 relative).
    ``cos_min`` is None before any sample.
    """

    samples: int = 0
    elements: int = 0
    dot: float = 0.0
    xx: float = 0.0
    rr: float = 0.0
    noise: float = 0.0
    abs_err: float = 0.0
    abs_ref: float = 0.0
    max_abs: float = 0.0
    cos_sum: float = 0.0
    cos_min: float | None = None
    nonfinite: int = 0

    def merge(self, other: FidelitySums) -> FidelitySums:
        """The sums of both sample sets."""
        mins = [v for v in (self.cos_min, other.cos_min) if v is not None]
        return FidelitySums(
            samples=self.samples + other.samples,
            elements=self.elements + other.elements,
            dot=self.dot + other.dot,
            xx=self.xx + other.xx,
            rr=self.rr + other.rr,
            noise=self.noise + other.noise,
            abs_err=self.abs_err + other.abs_err,
            abs_ref=self.abs_ref + other.abs_ref,
            max_abs=max(self.max_abs, other.max_abs),
            cos_sum=self.cos_sum + other.cos_sum,
            cos_min=min(mins) if mins else None,
            nonfinite=self.nonfinite + other.nonfinite,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "elements": self.elements,
            "dot": self.dot,
            "xx": self.xx,
            "rr": self.rr,
            "noise": self.noise,
            "abs_err": self.abs_err,
            "abs_ref": self.abs_ref,
            "max_abs": self.max_abs,
            "cos_sum": self.cos_sum,
            "cos_min": self.cos_min,
            "nonfinite": self.nonfinite,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "sums") -> FidelitySums:
        d = as_mapping(data, where)
        floats = {
            k: get_float(d, k, where)
            for k in ("dot", "xx", "rr", "noise", "abs_err", "abs_ref", "max_abs", "cos_sum")
        }
        bad = [k for k, v in floats.items() if not math.isfinite(v)]
        if bad:
            raise ReportError(f"field '{where}.{bad[0]}' is not a finite number; the report is damaged")
        return cls(
            samples=get_int(d, "samples", where),
            elements=get_int(d, "elements", where),
            cos_min=get_float(d, "cos_min", where, nullable=True),
            nonfinite=get_int(d, "nonfinite", where),
            **floats,
        )


@dataclass(frozen=True)
class FidelityMetrics:
    """How close one output is to the reference's over the whole set (see the module docstring).

    ``sums`` holds what the metrics are computed from (:class:`FidelitySums`); results of
    :class:`FidelityAccumulator` always have it, so that partial results merge exactly
    (:meth:`merge`). Reports written before it existed load with ``sums = None``.
    """

    output: str
    num_samples: int
    num_elements: int
    cosine: float | None
    mean_sample_cosine: float | None
    min_sample_cosine: float | None
    sqnr_db: float | None
    exact: bool
    mean_rel_error: float | None
    max_abs_error: float | None
    nonfinite: int = 0
    sums: FidelitySums | None = None

    @classmethod
    def from_sums(cls, output: str, sums: FidelitySums) -> FidelityMetrics:
        """The metrics of ``output`` computed from its sums (the one place the formulas live)."""
        if sums.nonfinite or sums.samples == 0:
            return cls(
                output=output,
                num_samples=sums.samples,
                num_elements=sums.elements,
                cosine=None,
                mean_sample_cosine=None,
                min_sample_cosine=None,
                sqnr_db=None,
                exact=False,
                mean_rel_error=None,
                max_abs_error=None,
                nonfinite=sums.nonfinite,
                sums=sums,
            )
        exact = sums.noise == 0.0
        sqnr: float | None = None
        if not exact and sums.rr > 0:
            sqnr = 10.0 * math.log10(sums.rr / sums.noise)
        if sums.abs_ref > 0:
            rel: float | None = sums.abs_err / sums.abs_ref
        else:
            rel = 0.0 if sums.abs_err == 0 else None
        return cls(
            output=output,
            num_samples=sums.samples,
            num_elements=sums.elements,
            cosine=float(_cosine(sums.dot, sums.xx, sums.rr)),
            mean_sample_cosine=sums.cos_sum / sums.samples,
            min_sample_cosine=sums.cos_min,
            sqnr_db=sqnr,
            exact=exact,
            mean_rel_error=rel,
            max_abs_error=sums.max_abs,
            nonfinite=0,
            sums=sums,
        )

    def merge(self, other: FidelityMetrics) -> FidelityMetrics:
        """The metrics over both (disjoint) sample sets, from the sums: what one run over all
        the samples gives. ReportError when either has no sums or the outputs differ."""
        if other.output != self.output:
            raise ReportError(
                f"cannot merge fidelity of output '{other.output}' into '{self.output}'; the reports "
                "are of models with different outputs"
            )
        if self.sums is None or other.sums is None:
            raise ReportError(
                f"fidelity of output '{self.output}' has no sums (a report written by an older quant); "
                "evaluate the shards again with this version"
            )
        return FidelityMetrics.from_sums(self.output, self.sums.merge(other.sums))

    @property
    def sqnr_value(self) -> float:
        """SQNR as a number for ranking: +inf when exact, -inf when undefined or non-finite."""
        if self.exact:
            return math.inf
        if self.sqnr_db is None:
            return -math.inf
        return self.sqnr_db

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "num_samples": self.num_samples,
            "num_elements": self.num_elements,
            "cosine": finite_or_none(self.cosine),
            "mean_sample_cosine": finite_or_none(self.mean_sample_cosine),
            "min_sample_cosine": finite_or_none(self.min_sample_cosine),
            "sqnr_db": finite_or_none(self.sqnr_db),
            "exact": self.exact,
            "mean_rel_error": finite_or_none(self.mean_rel_error),
            "max_abs_error": finite_or_none(self.max_abs_error),
            "nonfinite": self.nonfinite,
            **({} if self.sums is None else {"sums": self.sums.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "fidelity") -> FidelityMetrics:
        d = as_mapping(data, where)
        sums_d = get_mapping(d, "sums", where, nullable=True) if "sums" in d else None
        return cls(
            output=get_str(d, "output", where),
            num_samples=get_int(d, "num_samples", where),
            num_elements=get_int(d, "num_elements", where),
            cosine=get_float(d, "cosine", where, nullable=True),
            mean_sample_cosine=get_float(d, "mean_sample_cosine", where, nullable=True),
            min_sample_cosine=get_float(d, "min_sample_cosine", where, nullable=True),
            sqnr_db=get_float(d, "sqnr_db", where, nullable=True),
            exact=get_bool(d, "exact", where),
            mean_rel_error=get_float(d, "mean_rel_error", where, nullable=True),
            max_abs_error=get_float(d, "max_abs_error", where, nullable=True),
            nonfinite=get_int(d, "nonfinite", where),
            sums=None if sums_d is None else FidelitySums.from_dict(sums_d, f"{where}.sums"),
        )


def _cosine(dot: np.ndarray | float, nx: np.ndarray | float, nr: np.ndarray | float) -> np.ndarray:
    """Cosine from dot product and squared norms: 1 when both are zero, 0 when only one is."""
    dot_a, nx_a, nr_a = (np.asarray(v, dtype=np.float64) for v in (dot, nx, nr))
    denom = np.sqrt(nx_a) * np.sqrt(nr_a)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, dot_a / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.where((nx_a == 0) & (nr_a == 0), 1.0, cos)
    return np.clip(cos, -1.0, 1.0)


class FidelityAccumulator:
    """Streaming fidelity of one output tensor against the reference's (float64 sums)."""

    def __init__(self, output: str = "output") -> None:
        self.output = output
        self._samples = 0
        self._elements = 0
        self._dot = 0.0
        self._xx = 0.0
        self._rr = 0.0
        self._noise = 0.0
        self._abs_err = 0.0
        self._abs_ref = 0.0
        self._max_abs = 0.0
        self._cos_sum = 0.0
        self._cos_min = math.inf
        self._nonfinite = 0

    def update(self, output: np.ndarray, reference: np.ndarray) -> None:
        """Add one batch: this precision's output and the reference's, same shape (N, ...)."""
        x = np.asarray(output)
        r = np.asarray(reference)
        if x.shape != r.shape:
            raise ModelError(
                f"output '{self.output}' has shape {x.shape} but the reference's has shape {r.shape} "
                "for the same batch; the models do not compute the same thing"
            )
        x = x.astype(np.float64)
        r = r.astype(np.float64)
        if x.ndim == 0:
            x = x.reshape(1, 1)
            r = r.reshape(1, 1)
        n = x.shape[0]
        finite = np.isfinite(x) & np.isfinite(r)
        bad = int(x.size - np.count_nonzero(finite))
        if bad:
            # Metrics become None in result(); zero the bad positions so the sums stay warning-free.
            self._nonfinite += bad
            x = np.where(finite, x, 0.0)
            r = np.where(finite, r, 0.0)
        diff = x - r
        self._dot += float(np.sum(x * r))
        self._xx += float(np.sum(x * x))
        self._rr += float(np.sum(r * r))
        self._noise += float(np.sum(diff * diff))
        self._abs_err += float(np.sum(np.abs(diff)))
        self._abs_ref += float(np.sum(np.abs(r)))
        if diff.size:
            self._max_abs = max(self._max_abs, float(np.max(np.abs(diff))))
        if n:
            xs = x.reshape(n, -1)
            rs = r.reshape(n, -1)
            cos = _cosine(np.sum(xs * rs, axis=1), np.sum(xs * xs, axis=1), np.sum(rs * rs, axis=1))
            self._cos_sum += float(np.sum(cos))
            self._cos_min = min(self._cos_min, float(np.min(cos)))
        self._samples += n
        self._elements += int(x.size)

    def sums(self) -> FidelitySums:
        """The running sums so far (what :meth:`result` computes the metrics from)."""
        return FidelitySums(
            samples=self._samples,
            elements=self._elements,
            dot=self._dot,
            xx=self._xx,
            rr=self._rr,
            noise=self._noise,
            abs_err=self._abs_err,
            abs_ref=self._abs_ref,
            max_abs=self._max_abs,
            cos_sum=self._cos_sum,
            cos_min=self._cos_min if self._samples else None,
            nonfinite=self._nonfinite,
        )

    def result(self) -> FidelityMetrics:
        return FidelityMetrics.from_sums(self.output, self.sums())


@dataclass(frozen=True)
class LatencyStats:
    """Latency of ``infer`` per batch over the timed batches (warm-up batches excluded).

    ``batch_size`` is the requested batch size; ``num_batches`` / ``num_samples`` count the timed
    batches and their samples; ``throughput`` is samples per second over those batches.
    """

    batch_size: int
    num_batches: int
    num_samples: int
    mean_ms: float
    median_ms: float
    min_ms: float
    max_ms: float
    throughput: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "num_batches": self.num_batches,
            "num_samples": self.num_samples,
            "mean_ms": self.mean_ms,
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "throughput": self.throughput,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "latency") -> LatencyStats:
        d = as_mapping(data, where)
        return cls(
            batch_size=get_int(d, "batch_size", where, minimum=1),
            num_batches=get_int(d, "num_batches", where, minimum=1),
            num_samples=get_int(d, "num_samples", where, minimum=1),
            mean_ms=get_float(d, "mean_ms", where),
            median_ms=get_float(d, "median_ms", where),
            min_ms=get_float(d, "min_ms", where),
            max_ms=get_float(d, "max_ms", where),
            throughput=get_float(d, "throughput", where),
        )


def summarize_latency(seconds: Sequence[float], sizes: Sequence[int], batch_size: int) -> LatencyStats | None:
    """Latency stats from per-batch wall times (seconds) and batch sizes; None when empty.

    A final partial batch is left out when at least one full batch was timed, so "ms per batch"
    means per ``batch_size`` samples; throughput uses the same batches.
    """
    if len(seconds) != len(sizes):
        raise ValueError("seconds and sizes must have the same length")
    pairs = list(zip(seconds, sizes, strict=True))
    full = [(t, s) for t, s in pairs if s == batch_size]
    if full:
        pairs = full
    if not pairs:
        return None
    times = np.asarray([t for t, _ in pairs], dtype=np.float64)
    samples = int(sum(s for _, s in pairs))
    total = float(times.sum())
    return LatencyStats(
        batch_size=batch_size,
        num_batches=len(pairs),
        num_samples=samples,
        mean_ms=float(times.mean() * 1e3),
        median_ms=float(np.median(times) * 1e3),
        min_ms=float(times.min() * 1e3),
        max_ms=float(times.max() * 1e3),
        throughput=samples / total if total > 0 else 0.0,
    )
