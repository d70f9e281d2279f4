"""``--method auto``: per tensor, the calibration method that gives the model's outputs the best
fidelity, measured.

The four methods all reduce the same saved histograms (:mod:`quant.calibrators.methods`), so
every candidate's ranges cost a fraction of a second; what costs is *scoring* them. Scoring here
means running the Q/DQ model with TensorRT's exact arithmetic (``OrtRunner(int8="exact")``) on
calibration samples held aside from those that made the statistics, and comparing its outputs
with FP32: output SQNR in dB (the weakest output of a multi-output model). Top-1 agreement is
recorded alongside for class-score outputs, but it does not decide: on the few dozen held-out
samples a search can afford, agreement moves in steps of several points and ties most
candidates, while SQNR is continuous and paired (every candidate sees the same samples).

The search (:func:`search`), bounded by a number of evaluations fixed before it starts:

1. score each candidate for every tensor at once (model level); the best by the pooled SQNR of
   the scored samples (:data:`SCORE_RULE`) is the starting point;
2. cut the quantized tensors, in graph (topological) order, into ``groups`` runs of consecutive
   tensors; for each run, in order, try the runner-up candidates (by model-level score) on that
   run only and keep the best if it beats the current score by more than ``min_gain`` dB.

Every accepted step improves the score measured on the same samples, so the result is never
below the best single method on them. One evaluation costs one forward pass of the held-out
samples; the held-out share and the budget are chosen so the whole search costs a small multiple
of one FP32 pass over the calibration set (:func:`plan_search`). The model with the scales as
graph inputs (:func:`scale_input_model`) lets one ONNX Runtime session evaluate every
configuration: a configuration is a feed, not a new model.

Seeded and deterministic: the held-out split depends only on the sample count and the seed, the
candidates and the group cut only on the statistics and the graph, and ties go to the earlier
candidate in :data:`CANDIDATES` order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.calibrators.methods import CalibConfig, compute_amax
from quant.calibrators.stats import DEFAULT_NUM_BINS, TensorStats
from quant.errors import CacheError, CalibrationError, ModelError, UsageError

if TYPE_CHECKING:
    import onnx

    from quant.calibrators.stats import StatsCollector
    from quant.datasets.base import Batch, Dataset, DataSummary

log = logging.getLogger(__name__)

#: Default search budget in sample forward passes per calibration sample (held-out reference
#: pass plus every evaluation), i.e. a multiple of one FP32 pass over the calibration set.
DEFAULT_BUDGET = 2.5
#: Share of the calibration samples held aside for scoring, and its bounds. One evaluation costs
#: a forward pass of the held-out samples, so this share sets the price of the search: 1/8 keeps
#: six or more groups within the default budget on 128 samples.
HELD_OUT_FRACTION = 0.125
MIN_HELD_OUT = 8  # with 2 x this, the fewest samples that score
MAX_HELD_OUT = 32
#: Smallest cross-validation fold on small sets, and the most folds: a fold is 1/8 of the set
#: (at least 2 samples), as the held-out part of a large set is, so that the statistics behind
#: every score hold 7/8 of the samples whatever the set's size and the refit on all of them
#: changes the ranges as little as it does on large sets.
FOLD_SAMPLES = 2
MAX_FOLDS = 8
#: An improvement smaller than this (dB) is not taken (float rounding of scores is ~1e-6 dB).
MIN_GAIN_DB = 0.01
#: Runner-up candidates tried per group.
ALTERNATIVES = 2
#: Calibration samples --method auto needs.
MIN_SAMPLES = 16
#: What decides between configurations: "pooled" (the default), the SQNR of all scored samples
#: together (what an evaluation set reports); "samples", the mean over the scored samples of each
#: sample's SQNR in dB (:attr:`Score.sample_db`); or "adaptive": whichever of the two, judged on
#: the model-level round's own per-sample scores by :func:`choose_rule`, carries over better from
#: one half of the scored samples to the other. "adaptive" was the default for one release; chosen
#: on 6 splits of real photos and confirmed on 6 others (scripts/study_auto.py, docs/CALIBRATION.md
#: "Which rule decides"), "pooled" comes closer to the best single method on average (-0.58 dB
#: against -0.78 over 5 real models) and in the worst case (-2.89 against -4.48). The others stay
#: for scripts/bench_methods.py and scripts/study_auto.py, which set this to compare rules.
SCORE_RULE = "pooled"
#: At most this many scoring batches run at once (each on its own thread, the CPUs shared out as
#: ONNX Runtime intra-op threads); see :func:`scoring_layout`.
MAX_SCORING_WORKERS = 4
#: Score with ORT's optimized Q/DQ graph rewritten so that QuantizeLinear, DequantizeLinear, the
#: activations and same-shape arithmetic (the residual Add) run on the blocked (NCHWc) tensors,
#: without the reorders ORT wraps them in (:func:`quant.calibrators.blocked.blocked_qdq_model`; the
#: same outputs bit for bit). A module constant so that the benchmark and the tests can compare
#: with the plain session.
BLOCKED_SCORING = True
#: Take the FP32 reference of the scoring batches from the statistics pass, which runs them
#: anyway (their outputs are fetched with the statistics), instead of another pass of the FP32
#: model. A module constant so that the benchmark and the tests can compare.
REUSE_REFERENCE = True
#: Seeded random halvings :func:`choose_rule` judges the rules on.
RULE_HALVINGS = 200
#: Seeded bootstrap resamples of the scored samples behind :func:`bootstrap_shares`.
FIRMNESS_RESAMPLES = 200
#: Below this share of resamples won, the model-level choice is reported as uncertain.
FIRM_SHARE = 0.5
#: A per-sample SQNR is clipped to +-this (dB), so that one exact or all-zero sample does not
#: make the mean infinite.
SAMPLE_DB_CLIP = 300.0


@dataclass(frozen=True)
class Candidate:
    """One method with its parameters; ``label`` names it in sidecars, reports and logs."""

    method: str
    percentile: float | None = None

    def __post_init__(self) -> None:
        self.config()  # validates

    @property
    def label(self) -> str:
        if self.method == "percentile":
            return f"percentile {_fmt(self.percentile or 0.0)}"
        return self.method

    def config(self, num_bins: int = DEFAULT_NUM_BINS) -> CalibConfig:
        if self.method == "percentile":
            return CalibConfig(method="percentile", percentile=float(self.percentile or 0.0), num_bins=num_bins)
        return CalibConfig(method=self.method, num_bins=num_bins)

    def params(self) -> dict[str, Any]:
        return {} if self.percentile is None else {"percentile": self.percentile}

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "method": self.method, **self.params()}

    @classmethod
    def parse(cls, label: str) -> Candidate:
        """``"entropy"``, ``"mse"``, ``"minmax"`` or ``"percentile 99.9"`` -> Candidate."""
        parts = str(label).split()
        try:
            if len(parts) == 2 and parts[0] == "percentile":
                return cls("percentile", float(parts[1]))
            if len(parts) == 1 and parts[0] != "percentile":
                return cls(parts[0])
        except (ValueError, UsageError):
            pass
        raise UsageError(
            f"calibration candidate {label!r} is not a method; use entropy, minmax, mse or 'percentile P'"
        )


def _fmt(x: float) -> str:
    return f"{x:g}"


#: The candidates, in tie-break order (entropy, TensorRT's default, first).
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("entropy"),
    Candidate("minmax"),
    Candidate("percentile", 99.9),
    Candidate("percentile", 99.99),
    Candidate("percentile", 99.999),
    Candidate("mse"),
)


def candidate_ranges(
    stats: Mapping[str, TensorStats],
    candidates: Sequence[Candidate] = CANDIDATES,
) -> dict[str, dict[str, float | None]]:
    """label -> tensor -> amax for every candidate, from the same statistics (no model run).

    A tensor has a range under every candidate or under none (all zeros): a method that finds
    none where another does falls back to the exact absmax.
    """
    out: dict[str, dict[str, float | None]] = {}
    for cand in candidates:
        num_bins = next((s.num_bins for s in stats.values()), DEFAULT_NUM_BINS)
        out[cand.label] = compute_amax(stats, cand.config(num_bins))
    for name, st in stats.items():
        if st.has_range:
            for table in out.values():
                if table[name] is None:
                    table[name] = float(st.absmax)
    return out


# --------------------------------------------------------------------------------------------
# scores and the search (pure: the model is a callable)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """Fidelity of one configuration on the held-out samples: the weakest output's SQNR (dB)
    pooled over the samples, the mean over samples of each sample's weakest-output SQNR (dB,
    ``sample_db``), and top-1 agreement with FP32 (%) where an output holds class scores.

    ``value`` decides: ``sqnr_db`` or ``sample_db`` by ``rule`` (:func:`choose_rule`). The pooled
    SQNR is what an evaluation set reports, but on the 16-32 samples auto scores it is set by the
    one or two samples with the largest error energy; the mean of per-sample dB weighs every
    sample alike, and is meaningless where a sample's reference output is nearly all zeros (a
    text detector's map of a photo without text). Pooled decides unless :data:`SCORE_RULE` says
    otherwise; docs/CALIBRATION.md ("Which rule decides") has the measurement behind that."""

    sqnr_db: float
    agreement: float | None = None
    sample_db: float | None = None
    rule: str = "pooled"  # which figure is `value`: "pooled" (sqnr_db) or "samples" (sample_db)
    #: per scored sample (rows) and output (columns): sum(ref^2) and sum(err^2), for choose_rule
    parts: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def value(self) -> float:
        """The number the search maximises."""
        if self.rule == "samples" and self.sample_db is not None:
            return self.sample_db
        return self.sqnr_db

    def better_than(self, other: Score, min_gain: float = MIN_GAIN_DB) -> bool:
        return self.value > other.value + min_gain

    def to_dict(self) -> dict[str, Any]:
        return {"sqnr_db": _finite(self.sqnr_db), "agreement": self.agreement,
                "sample_db": None if self.sample_db is None else _finite(self.sample_db), "rule": self.rule}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Score:
        try:
            sqnr = data["sqnr_db"]
            agreement = data.get("agreement")
            sample = data.get("sample_db")
            return cls(
                sqnr_db=math.inf if sqnr is None else float(sqnr),
                agreement=None if agreement is None else float(agreement),
                sample_db=None if sample is None else float(sample),
                rule=str(data.get("rule", "pooled")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"auto calibration score is malformed ({exc}); recalibrate with --method auto") from exc


def _finite(x: float) -> float | None:
    return None if math.isinf(x) else float(x)  # JSON has no infinity; None = identical outputs


ScoreFn = Callable[[Mapping[str, Any]], Score]


@dataclass(frozen=True)
class SearchPlan:
    """How many evaluations the search may spend and how it spends them."""

    max_evaluations: int
    groups: int
    alternatives: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_evaluations": self.max_evaluations, "groups": self.groups, "alternatives": self.alternatives}


def plan_search(
    *,
    num_tensors: int,
    num_candidates: int,
    calibration_samples: int,
    held_out: int,
    budget: float = DEFAULT_BUDGET,
    alternatives: int = ALTERNATIVES,
) -> SearchPlan:
    """The evaluation budget: ``budget`` x ``calibration_samples`` sample forwards, of which the FP32
    reference of the held-out samples takes ``held_out`` and each evaluation ``held_out``. The
    model-level round (one evaluation per candidate) always runs; what is left buys groups of
    ``alternatives`` evaluations each, at most one group per tensor."""
    if budget <= 0 or not math.isfinite(budget):
        raise UsageError(f"--auto-budget must be a positive number of forward passes (got {budget})")
    if held_out < 1:
        raise UsageError("auto calibration needs at least one held-out sample")
    max_evals = max(num_candidates, int(budget * calibration_samples // held_out) - 1)
    alternatives = max(1, min(alternatives, num_candidates - 1))
    groups = max(0, min(num_tensors, (max_evals - num_candidates) // alternatives)) if num_candidates > 1 else 0
    return SearchPlan(max_evaluations=max_evals, groups=groups, alternatives=alternatives)


def split_groups(tensors: Sequence[str], groups: int) -> list[list[str]]:
    """``tensors`` cut into ``groups`` consecutive runs whose sizes differ by at most one."""
    n = len(tensors)
    groups = max(0, min(groups, n))
    return [list(tensors[i * n // groups : (i + 1) * n // groups]) for i in range(groups)]


@dataclass(frozen=True)
class SearchResult:
    """What :func:`search` found: per tensor the candidate label, and the measurements."""

    choice: dict[str, str]
    scores: dict[str, Score]  # every candidate applied to every tensor (model level)
    best_single: str
    score: Score
    evaluations: int
    plan: SearchPlan
    steps: tuple[dict[str, Any], ...] = ()
    rule: dict[str, Any] = field(default_factory=dict)
    firmness: dict[str, Any] = field(default_factory=dict)  # bootstrap_shares of the model-level round


def search(
    table: Mapping[str, Mapping[str, Any]],
    tensors: Sequence[str],
    score_fn: ScoreFn,
    *,
    plan: SearchPlan,
    min_gain: float = MIN_GAIN_DB,
    seed: int = 0,
) -> SearchResult:
    """Greedy per-tensor search over ``table`` (label -> tensor -> amax, or a tuple of amax, one per
    scoring fold; labels in tie-break order) for the quantized ``tensors`` (graph order);
    ``score_fn`` measures one full assignment (tensor -> table value) of those tensors. See the
    module docstring for the procedure."""
    labels = list(table)
    if not labels:
        raise UsageError("auto calibration needs at least one candidate method")
    tensors = [t for t in tensors if all(table[lab].get(t) is not None for lab in labels)]

    def assignment(choice: Mapping[str, str]) -> dict[str, Any]:
        return {t: table[choice[t]][t] for t in tensors}

    evaluations = 0

    rule = "pooled"

    def measure(choice: Mapping[str, str]) -> Score:
        nonlocal evaluations
        evaluations += 1
        got = score_fn(assignment(choice))
        return replace(got, rule=rule, parts=None) if rule != "pooled" else got

    scores: dict[str, Score] = {}
    for lab in labels:
        same = next((k for k in scores if all(table[k][t] == table[lab][t] for t in tensors)), None)
        # a candidate whose ranges equal an earlier one's everywhere (the high percentiles and
        # minmax on a few samples) scores what that one scored: not measured again
        scores[lab] = scores[same] if same is not None else measure({t: lab for t in tensors})
        log.info("auto: %-18s %s%s", lab, _describe(scores[lab]), f" (the ranges of {same})" if same else "")
    rule, regret = choose_rule(scores, seed=seed)
    firmness = bootstrap_shares(scores, rule=rule, seed=seed)
    if firmness:
        log.info("auto: best in bootstrap resamples of the %d scored samples: %s", firmness["samples"],
                 ", ".join(f"{k} {v:.0%}" for k, v in firmness["shares"].items()))
    scores = {lab: replace(sc, rule=rule, parts=None) for lab, sc in scores.items()}
    if regret:
        log.info("auto: rule %s (halving regret %s)", rule, ", ".join(f"{k} {v:.2f} dB" for k, v in regret.items()))
    # the best single candidate; ties keep the earlier label (max returns the first maximum)
    best_single = max(labels, key=lambda lab: scores[lab].value)
    choice = {t: best_single for t in tensors}
    current = scores[best_single]
    ranked = sorted((lab for lab in labels if lab != best_single), key=lambda lab: -scores[lab].value)
    alternatives = ranked[: plan.alternatives]
    steps: list[dict[str, Any]] = []
    for gi, group in enumerate(split_groups(tensors, plan.groups)):
        best: tuple[Score, str] | None = None
        for lab in alternatives:
            if all(table[lab][t] == table[choice[t]][t] for t in group):
                continue  # the same ranges: nothing to measure
            trial = {**choice, **{t: lab for t in group}}
            s = measure(trial)
            if s.better_than(current, min_gain) and (best is None or s.value > best[0].value):
                best = (s, lab)
        if best is not None:
            log.info("auto: group %d (%d tensors from '%s') -> %s: %s", gi, len(group), group[0], best[1], _describe(best[0]))
            steps.append(
                {
                    "group": gi,
                    "first": group[0],
                    "tensors": len(group),
                    "method": best[1],
                    "sqnr_db": _finite(best[0].sqnr_db),
                    "sample_db": None if best[0].sample_db is None else _finite(best[0].sample_db),
                    "gain_db": _finite(best[0].value - current.value),
                }
            )
            choice.update({t: best[1] for t in group})
            current = best[0]
    return SearchResult(
        choice=choice,
        scores=scores,
        best_single=best_single,
        score=replace(current, parts=None),
        evaluations=evaluations,
        plan=plan,
        steps=tuple(steps),
        rule={"rule": rule, "halving_regret_db": regret, "halvings": RULE_HALVINGS if regret else 0},
        firmness=firmness,
    )


def _pooled_db(signal: np.ndarray, noise: np.ndarray) -> float:
    sig, err = signal.sum(axis=0), noise.sum(axis=0)
    return min(_sqnr(float(a), float(b)) for a, b in zip(sig, err, strict=True))


def _mean_sample_db(signal: np.ndarray, noise: np.ndarray) -> float:
    per = [min(_sqnr(float(a), float(b)) for a, b in zip(sr, er, strict=True)) for sr, er in zip(signal, noise, strict=True)]
    return float(np.mean(np.clip(per, -SAMPLE_DB_CLIP, SAMPLE_DB_CLIP)))


def choose_rule(scores: Mapping[str, Score], *, seed: int = 0) -> tuple[str, dict[str, float]]:
    """(rule, mean regret per rule in dB): which figure should decide between configurations.

    With :data:`SCORE_RULE` "adaptive" and per-sample figures for every candidate: over
    :data:`RULE_HALVINGS` seeded random halvings of the scored samples, each rule picks a
    candidate on one half; its regret is the other half's best pooled SQNR minus its pick's. The
    rule of the smaller mean regret wins; a tie goes to "pooled" (the figure evaluation sets
    report). Uses only the model-level round's measurements: no extra forward pass."""
    if SCORE_RULE in ("pooled", "samples"):
        return SCORE_RULE, {}
    parts = [sc.parts for sc in scores.values()]
    if any(p is None for p in parts) or len(scores) < 2:
        return "pooled", {}
    m = int(parts[0][0].shape[0])  # type: ignore[index]
    if m < 4:
        return "pooled", {}
    labels = list(scores)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x2A1E])
    rules = {"pooled": _pooled_db, "samples": _mean_sample_db}
    regret = dict.fromkeys(rules, 0.0)
    for _ in range(RULE_HALVINGS):
        order = rng.permutation(m)
        a, b = order[: m // 2], order[m // 2 :]
        other = {lab: _pooled_db(scores[lab].parts[0][b], scores[lab].parts[1][b]) for lab in labels}  # type: ignore[index]
        best = max(other.values())
        for name, fn in rules.items():
            pick = max(labels, key=lambda lab: fn(scores[lab].parts[0][a], scores[lab].parts[1][a]))  # type: ignore[index]  # noqa: B023
            regret[name] += best - other[pick]
    regret = {k: v / RULE_HALVINGS for k, v in regret.items()}
    return ("samples" if regret["samples"] < regret["pooled"] - 1e-9 else "pooled"), regret


def bootstrap_shares(scores: Mapping[str, Score], *, rule: str = "pooled", seed: int = 0,
                     resamples: int = FIRMNESS_RESAMPLES) -> dict[str, Any]:
    """How firmly the scored samples back the model-level choice: over ``resamples`` seeded
    bootstrap resamples of the scored samples (drawn with replacement), the share of resamples in
    which each candidate has the best deciding figure (``rule``: pooled SQNR, or the mean of
    per-sample dB; ties go to the earlier label, as in :func:`search`). A share near 1 means any
    similar set of samples would have chosen the same; a share below :data:`FIRM_SHARE` means the
    candidates lie within the noise of these few samples, and more calibration data would be
    needed to tell them apart. Uses the model-level round's per-sample figures: no forward pass.
    Empty where those are missing (fewer than 2 candidates or 4 samples)."""
    labels = list(scores)
    parts = [scores[lab].parts for lab in labels]
    if len(labels) < 2 or any(p is None for p in parts):
        return {}
    m = int(parts[0][0].shape[0])  # type: ignore[index]
    if m < 4:
        return {}
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xB007])
    figure = _mean_sample_db if rule == "samples" else _pooled_db  # what decides, as in search
    figures = [[figure(p[0][d], p[1][d]) for p in parts] for d in rng.integers(0, m, size=(resamples, m))]  # type: ignore[index]
    wins = np.bincount(np.argmax(np.asarray(figures), axis=1), minlength=len(labels))  # argmax: first maximum
    shares = {lab: round(float(w) / resamples, 4) for lab, w in zip(labels, wins, strict=True)}
    return {"resamples": resamples, "samples": m, "shares": shares, "firm_share": FIRM_SHARE}


def _describe(s: Score) -> str:
    text = f"SQNR {s.sqnr_db:.2f} dB"
    if s.sample_db is not None:
        text += f" (mean of samples {s.sample_db:.2f} dB)"
    return text if s.agreement is None else f"{text}, top-1 agreement {s.agreement:.1f} %"


# --------------------------------------------------------------------------------------------
# the record kept in the sidecar and the report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoRecord:
    """Per tensor the chosen candidate, and the model-level score of every candidate.

    ``choice`` covers every calibrated tensor: those the search scored (the Q/DQ inputs,
    ``searched``) and the others (implicit-quantization tensors TensorRT reads from the cache),
    which take ``best_single``. ``cost`` states the search's forward passes as a multiple of one
    pass over the calibration samples.
    """

    choice: dict[str, str]
    candidates: tuple[dict[str, Any], ...]
    scores: dict[str, Score]
    best_single: str
    score: Score
    searched: int
    evaluations: int
    plan: SearchPlan
    held_out: int
    statistics_samples: int
    seed: int
    metric: str = "sqnr"
    steps: tuple[dict[str, Any], ...] = ()
    scoring_data: str = "held-out"  # "held-out" split of --data, or "separate" data (--from-stats)
    seconds: float | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    rule: dict[str, Any] = field(default_factory=dict)  # choose_rule: the rule and each rule's regret
    firmness: dict[str, Any] = field(default_factory=dict)  # bootstrap_shares of the model-level round

    @classmethod
    def from_search(
        cls, found: SearchResult, tensors: Iterable[str], *, plan: SearchPlan, held_out: int,
        statistics_samples: int, seed: int, seconds: float, cost: dict[str, Any], scoring_data: str = "held-out",
    ) -> AutoRecord:
        """The record of a search over ``tensors`` (those it did not score take ``best_single``)."""
        return cls(
            metric=_metric(),
            choice={t: found.choice.get(t, found.best_single) for t in tensors},
            candidates=tuple(c.to_dict() for c in CANDIDATES),
            scores=found.scores,
            best_single=found.best_single,
            score=found.score,
            searched=len(found.choice),
            evaluations=found.evaluations,
            plan=plan,
            held_out=held_out,
            statistics_samples=statistics_samples,
            seed=seed,
            steps=found.steps,
            scoring_data=scoring_data,
            seconds=round(seconds, 3),
            cost=cost,
            rule=dict(found.rule),
            firmness=dict(found.firmness),
        )

    def method_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for lab in self.choice.values():
            counts[lab] = counts.get(lab, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "choice": dict(self.choice),
            "candidates": [dict(c) for c in self.candidates],
            "scores": {k: v.to_dict() for k, v in self.scores.items()},
            "best_single": self.best_single,
            "score": self.score.to_dict(),
            "searched": self.searched,
            "evaluations": self.evaluations,
            "plan": self.plan.to_dict(),
            "held_out": self.held_out,
            "statistics_samples": self.statistics_samples,
            "seed": self.seed,
            "steps": [dict(s) for s in self.steps],
            "scoring_data": self.scoring_data,
            "seconds": self.seconds,
            "cost": dict(self.cost),
            "rule": dict(self.rule),
            "firmness": dict(self.firmness),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AutoRecord:
        try:
            plan = data["plan"]
            return cls(
                metric=str(data.get("metric", "sqnr")),
                choice={str(k): str(v) for k, v in data["choice"].items()},
                candidates=tuple(dict(c) for c in data["candidates"]),
                scores={str(k): Score.from_dict(v) for k, v in data["scores"].items()},
                best_single=str(data["best_single"]),
                score=Score.from_dict(data["score"]),
                searched=int(data["searched"]),
                evaluations=int(data["evaluations"]),
                plan=SearchPlan(int(plan["max_evaluations"]), int(plan["groups"]), int(plan["alternatives"])),
                held_out=int(data["held_out"]),
                statistics_samples=int(data["statistics_samples"]),
                seed=int(data["seed"]),
                steps=tuple(dict(s) for s in data.get("steps", ())),
                scoring_data=str(data.get("scoring_data", "held-out")),
                seconds=None if data.get("seconds") is None else float(data["seconds"]),
                cost=dict(data.get("cost") or {}),
                rule=dict(data.get("rule") or {}),
                firmness=dict(data.get("firmness") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CacheError(
                f"the sidecar's 'auto' record is malformed ({exc}); recalibrate with --method auto"
            ) from exc


def choose_amax(
    table: Mapping[str, Mapping[str, float | None]], choice: Mapping[str, str], default: str
) -> dict[str, float | None]:
    """tensor -> amax: each tensor's chosen candidate, ``default`` for tensors not in ``choice``."""
    tensors = next(iter(table.values())).keys() if table else ()
    return {t: table[choice.get(t, default)][t] for t in tensors}


# --------------------------------------------------------------------------------------------
# the held-out split
# --------------------------------------------------------------------------------------------


def scoring_plan(num_samples: int, *, batch: int | None = None) -> tuple[int, int]:
    """(samples that score, folds): 1/8 of ``num_samples`` clamped to 16..32 samples score (all of
    them for 16 to 19 samples). Where that is more than 1/8 of the set (sets under 128 samples),
    the scored samples are cut into folds of about 1/8 of the set (at least 2 samples, at most 8
    folds), each scored with ranges from the statistics of every other sample (cross-validation:
    a small set is not judged by a handful of images, and the statistics behind each score hold
    7/8 of the set, as on large sets); otherwise one fold. For models with a
    fixed batch size: one fold of whole batches. CalibrationError when there are too few samples."""
    if num_samples < MIN_SAMPLES:
        raise CalibrationError(
            f"--method auto holds part of --data aside to score the methods and needs at least {MIN_SAMPLES} "
            f"samples (got {num_samples}); give more calibration data or pick a --method"
        )
    eighth = round(num_samples * HELD_OUT_FRACTION)
    scored = min(num_samples, max(2 * MIN_HELD_OUT, min(MAX_HELD_OUT, eighth)))
    if batch is not None and batch > 1:
        scored = max(batch, min(scored, num_samples - 1) // batch * batch)
        if num_samples - scored < 1:
            raise CalibrationError(
                f"--method auto: {num_samples} samples are too few for a model with fixed batch size {batch}; "
                "give more calibration data or pick a --method"
            )
        return scored, 1
    fold = max(FOLD_SAMPLES, eighth)
    folds = max(1, min(MAX_FOLDS, round(scored / fold)))
    return scored, folds


def held_out_count(num_samples: int, *, batch: int | None = None) -> int:
    """How many of ``num_samples`` calibration samples score the candidates (see :func:`scoring_plan`)."""
    return scoring_plan(num_samples, batch=batch)[0]


def split_folds(num_samples: int, scored: int, folds: int, *, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(positions never scored, the scored positions cut into ``folds`` sorted folds): a seeded
    choice, the same for the same count and seed; fold sizes differ by at most one."""
    rest, held = split_held_out(num_samples, scored, seed=seed) if scored < num_samples else (
        np.zeros(0, dtype=np.int64), np.arange(num_samples))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xF01D])
    order = rng.permutation(held)
    return rest, [np.sort(order[i::folds]) for i in range(folds)]


def split_held_out(num_samples: int, held_out: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(statistics positions, held-out positions), each sorted: a seeded random choice of
    ``held_out`` sample positions, the same for the same count and seed."""
    if not 0 < held_out < num_samples:
        raise UsageError(f"cannot hold {held_out} of {num_samples} samples aside")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x51A7])  # own stream: independent of --seed's other uses
    held = np.sort(rng.choice(num_samples, size=held_out, replace=False))
    mask = np.ones(num_samples, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held


class SubsetDataset:
    """The samples of ``dataset`` at ``positions`` (positions in its iteration order), re-batched.

    Reads the whole data set on each pass and keeps the selected samples (regrouped by
    :func:`quant.datasets.base.partition_batches`: copies, or a batch of the dataset selected whole).
    ``fingerprint()`` is the parent's plus the positions, so statistics made from a subset are
    never taken for the whole set's."""

    def __init__(self, dataset: Dataset, positions: Sequence[int] | np.ndarray, *, tag: str) -> None:
        self._full = dataset
        self._pos = np.asarray(sorted(int(p) for p in positions), dtype=np.int64)
        self._tag = tag
        self._fp: str | None = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._full.input_names

    @property
    def has_labels(self) -> bool:
        return self._full.has_labels

    def __len__(self) -> int:
        return int(self._pos.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        from quant.datasets.base import partition_batches

        part_of = np.full(int(self._pos[-1]) + 1 if self._pos.size else 0, -1, dtype=np.int64)
        part_of[self._pos] = 0
        for _part, batch in partition_batches(iter(self._full.batches(batch_size)), part_of, 1, batch_size):
            yield batch

    def fingerprint(self) -> str:
        if self._fp is None:
            import hashlib

            h = hashlib.sha256(self._full.fingerprint().encode())
            h.update(f"\0{self._tag}\0".encode())
            h.update(self._pos.tobytes())
            self._fp = h.hexdigest()
        return self._fp

    def summary(self) -> DataSummary:
        from dataclasses import replace

        return replace(self._full.summary(), num_samples=len(self))


# --------------------------------------------------------------------------------------------
# scoring with exact TensorRT arithmetic
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleInputModel:
    """A TensorRT-placement Q/DQ model whose activation scales are graph inputs (tensor -> input)."""

    model: onnx.ModelProto = field(repr=False, compare=False)
    scale_inputs: dict[str, str]
    quantized: tuple[str, ...]


def scale_input_model(clean: onnx.ModelProto, amax: Mapping[str, float | None]) -> ScaleInputModel:
    """``insert_qdq(clean, amax)`` (TensorRT target) with each activation's scale initializer turned
    into a float scalar graph input of the same name: one session then evaluates any ranges. The
    weights' per-channel scales do not depend on the activation ranges and stay initializers."""
    from onnx import TensorProto, helper

    from quant.graph.qdq import insert_qdq

    result = insert_qdq(clean, amax, target="tensorrt")
    model = result.model
    g = model.graph
    quantized = set(result.quantized_tensors)
    scale_inputs: dict[str, str] = {}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in quantized:
            scale_inputs[node.input[0]] = node.input[1]
    names = set(scale_inputs.values())
    keep = [init for init in g.initializer if init.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
    for name in scale_inputs.values():
        g.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, []))
    return ScaleInputModel(model=model, scale_inputs=scale_inputs, quantized=tuple(result.quantized_tensors))


class OutputScorer:
    """Scores activation ranges by the fidelity of the Q/DQ model's outputs against FP32 on fixed
    feeds, with TensorRT's exact arithmetic. Call it with tensor -> amax for every quantized tensor.

    ``feeds`` are the held-out batches (kept in memory: at most :data:`MAX_HELD_OUT` samples);
    ``reference``, where given, their FP32 outputs (the statistics pass made them); otherwise
    they are computed once here, while the Q/DQ model is built. With ``folds`` (the fold of each
    batch), a tensor's value may be a tuple of amax, one per fold: each batch is scored with its
    fold's."""

    def __init__(
        self,
        clean: onnx.ModelProto,
        base_amax: Mapping[str, float | None],
        feeds: Sequence[Mapping[str, np.ndarray]],
        *,
        threads: int | None = None,
        folds: Sequence[int] | None = None,
        reference: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        import threading
        from concurrent.futures import ThreadPoolExecutor

        if not feeds:
            raise CalibrationError("auto calibration has no held-out samples to score with")
        self.feeds = [dict(f) for f in feeds]
        self.samples = sum(int(next(iter(f.values())).shape[0]) for f in self.feeds)
        workers, intra = scoring_layout(threads, len(self.feeds))
        self._map = BatchMap(workers)
        try:
            # Without a given reference, the FP32 model runs while this thread builds the Q/DQ
            # model and its session (Python and ORT's graph optimization: one core, about a
            # second on ResNet-50).
            with ThreadPoolExecutor(1, thread_name_prefix="quant-auto-reference") as pool:
                pending = pool.submit(self._reference, clean, intra, reference)
                self.sim = scale_input_model(clean, base_amax)
                self._runner, self.layout = _scoring_runner(self.sim.model, intra)
                self._intra, self._switch = intra, threading.Lock()
                self._retired: list[Any] = []  # blocked sessions replaced after a run-time failure
                try:
                    self.outputs, self.reference, computed = pending.result()
                except BaseException:
                    self._runner.close()
                    raise
        except BaseException:
            self._map.close()
            raise
        self._classifier = _classifier_outputs(self.reference[0])
        #: sample forward passes spent: the reference pass, unless the statistics pass made it
        self.forwards = self.samples if computed else 0
        self.reference_source = "own pass" if computed else "statistics pass"
        self.folds = list(folds) if folds is not None else [0] * len(self.feeds)
        if len(self.folds) != len(self.feeds):
            raise UsageError("auto calibration: one fold index per scoring batch")

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One scoring batch. Should ORT fail to run the blocked graph (a rewrite it does not
        accept at run time), scoring goes on with the plain Q/DQ session, which computes the same
        values; an error of the plain session is the model's own and propagates."""
        runner = self._runner
        try:
            return runner.infer(feed)
        except ModelError as exc:
            if not self.layout.startswith("blocked"):
                raise
            with self._switch:
                if self._runner is runner:  # the first batch to fail switches, the others follow
                    log.warning("auto: the blocked Q/DQ graph failed in ONNX Runtime (%s); scoring with the plain one", exc)
                    self._runner = _scoring_runner(self.sim.model, self._intra, blocked=False)[0]
                    self._retired.append(runner)  # other workers may still be inside it
                    self.layout = "plain (the blocked graph failed)"
            return self._runner.infer(feed)

    def _reference(
        self, clean: onnx.ModelProto, threads: int, given: Sequence[Mapping[str, np.ndarray]] | None
    ) -> tuple[list[str], list[dict[str, np.ndarray]], bool]:
        """(output names, the FP32 outputs of each feed, whether they were computed here):
        ``given`` (the statistics pass computed them) where it holds every output of every feed,
        else a pass of the FP32 model."""
        from quant.backends.onnxruntime import OrtRunner

        names = [o.name for o in clean.graph.output]
        if given is not None and len(given) == len(self.feeds) and all(all(n in g for n in names) for g in given):
            return names, [{n: np.asarray(g[n]) for n in names} for g in given], False
        with OrtRunner(clean, threads=threads, name="fp32 reference") as ref:
            return list(ref.output_names()), self._map(ref.infer, self.feeds), True

    @property
    def quantized(self) -> tuple[str, ...]:
        return self.sim.quantized

    @property
    def workers(self) -> int:
        """Scoring batches run at once (:func:`scoring_layout`)."""
        return self._map.workers

    def close(self) -> None:
        self._map.close()
        self._runner.close()
        for runner in self._retired:
            runner.close()
        self._retired.clear()

    def __enter__(self) -> OutputScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scales(self, amax: Mapping[str, Any], fold: int) -> dict[str, np.ndarray]:
        scales = {}
        for tensor, name in self.sim.scale_inputs.items():
            a = amax.get(tensor)
            if isinstance(a, tuple):
                a = a[fold]
            if a is None or not a > 0:
                raise CalibrationError(f"auto calibration: no range for quantized tensor '{tensor}'")
            scales[name] = np.array(np.float32(a / 127.0), dtype=np.float32)
        return scales

    def per_sample(self, amax: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(signal, noise, top-1 agreement or None): per scored sample (rows, in feed order) and
        output (columns, :attr:`outputs` order), sum(ref^2) and sum(err^2)."""
        by_fold = {k: self._scales(amax, k) for k in sorted(set(self.folds))}
        scales = [by_fold[fold] for fold in self.folds]
        outs = self._map(lambda fs: self._infer({**fs[0], **fs[1]}), zip(self.feeds, scales, strict=True))
        signal: list[np.ndarray] = []
        noise: list[np.ndarray] = []
        agree: list[np.ndarray] = []
        for feed, ref, out in zip(self.feeds, self.reference, outs, strict=True):
            n = int(next(iter(feed.values())).shape[0])
            self.forwards += n
            sig = np.zeros((n, len(self.outputs)))
            err = np.zeros((n, len(self.outputs)))
            for j, name in enumerate(self.outputs):
                r = np.asarray(ref[name], dtype=np.float64).reshape(n, -1)
                q = np.asarray(out[name], dtype=np.float64).reshape(n, -1)
                sig[:, j] = np.sum(r * r, axis=1)
                err[:, j] = np.sum((q - r) ** 2, axis=1)
            signal.append(sig)
            noise.append(err)
            for name in self._classifier[:1]:
                r2 = np.asarray(ref[name]).reshape(n, -1)
                q2 = np.asarray(out[name]).reshape(n, -1)
                agree.append(np.argmax(r2, axis=1) == np.argmax(q2, axis=1))
        return np.concatenate(signal), np.concatenate(noise), (np.concatenate(agree) if agree else None)

    def __call__(self, amax: Mapping[str, Any]) -> Score:
        signal, noise, agree = self.per_sample(amax)
        sig, err = signal.sum(axis=0), noise.sum(axis=0)
        sqnr = min(_sqnr(float(sig[j]), float(err[j])) for j in range(len(self.outputs)))
        return Score(sqnr_db=sqnr, agreement=None if agree is None else 100.0 * float(np.mean(agree)),
                     sample_db=_mean_sample_db(signal, noise), parts=(signal, noise))


def _scoring_runner(sim: onnx.ModelProto, threads: int, *, blocked: bool | None = None) -> tuple[Any, str]:
    """The scorer's session of the scale-input Q/DQ model, and its layout ("blocked (R of T
    reorders removed)" or "plain"): see :data:`BLOCKED_SCORING` (``blocked``: None follows it)."""
    from quant.backends.onnxruntime import OrtRunner
    from quant.calibrators.blocked import blocked_qdq_model

    name = "auto calibration scorer"
    if blocked is None:
        blocked = BLOCKED_SCORING
    rewritten = blocked_qdq_model(sim, name=name) if blocked else None
    if rewritten is not None:
        try:  # ORT optimized this graph already
            runner = OrtRunner(rewritten.model, threads=threads, int8="exact", name=name, optimization="none",
                               initializers=rewritten.weights)
        except ModelError as exc:
            log.debug("auto: ORT refused the blocked Q/DQ graph (%s); scoring with the plain one", exc)
        else:
            return runner, f"blocked ({rewritten.removed} of {rewritten.reorders} reorders removed)"
    return OrtRunner(sim, threads=threads, int8="exact", name=name), "plain"


def scoring_layout(threads: int | None, batches: int) -> tuple[int, int]:
    """(workers, ORT intra-op threads per worker) for scoring ``batches`` batches on ``threads``
    CPUs (None: the CPUs this process may use).

    The Q/DQ model's QuantizeLinear, DequantizeLinear and layout reorders parallelise poorly inside
    one ONNX Runtime run, so independent batches on single-threaded workers keep the cores busier:
    on 2 EPYC cores ResNet-50's Q/DQ model ran 4 batches of 8 in 1.60 s on two 1-thread workers
    against 1.80-2.08 s in one 2-thread session, while the FP32 model ran as fast either way
    (1.34-1.41 s). Scores do not depend on the layout: each batch is computed by the same kernels
    whichever thread runs it."""
    from quant.backends.onnxruntime import default_threads

    total = default_threads() if threads is None else max(1, int(threads))
    workers = max(1, min(total, batches, MAX_SCORING_WORKERS))
    return workers, max(1, total // workers)


class BatchMap:
    """``fn`` over items on ``workers`` threads, results in item order; errors propagate."""

    def __init__(self, workers: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="quant-auto-score") if workers > 1 else None

    def __call__(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        if self._pool is None:
            return [fn(item) for item in items]
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _sqnr(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _classifier_outputs(outputs: Mapping[str, np.ndarray]) -> list[str]:
    from quant.eval.metrics import find_classifier_output

    name = find_classifier_output(dict(outputs))
    return [] if name is None else [name]


def collect_feeds(dataset: Dataset, batch_size: int) -> list[dict[str, np.ndarray]]:
    """Every batch of ``dataset`` as feeds, in memory (for the small held-out set)."""
    return [dict(b.feed) for b in dataset.batches(batch_size)]


def score_and_search(
    clean: onnx.ModelProto,
    stats: Sequence[Mapping[str, TensorStats]],
    scoring: Sequence[Sequence[Mapping[str, np.ndarray]]],
    *,
    budget: float = DEFAULT_BUDGET,
    seed: int = 0,
    calibration_samples: int,
    statistics_samples: int,
    scoring_data: str = "held-out",
    threads: int | None = None,
    references: Sequence[Sequence[Mapping[str, np.ndarray]]] | None = None,
) -> AutoRecord:
    """Score the candidates and search per tensor: fold ``k``'s batches (``scoring[k]``, feeds
    in memory: :func:`collect_feeds`) are scored with the ranges of ``stats[k]`` (statistics
    without them); exact arithmetic. ``references``, where given, holds the FP32 outputs of
    every scoring batch (as ``scoring``), so that no reference pass is run."""
    import time

    if len(stats) != len(scoring) or not stats:
        raise UsageError("auto calibration: one statistics set per scoring fold")
    start = time.perf_counter()
    tables = [candidate_ranges(st, CANDIDATES) for st in stats]
    table = {
        lab: {t: tuple(tb[lab][t] for tb in tables) for t in tables[0][lab]} for lab in tables[0]
    }
    feeds: list[dict[str, np.ndarray]] = []
    folds: list[int] = []
    for k, part in enumerate(scoring):
        feeds.extend(dict(f) for f in part)
        folds.extend([k] * len(part))
    given = [dict(r) for part in references for r in part] if references is not None else None
    base = {t: v[0] for t, v in table["minmax"].items()}
    with OutputScorer(clean, base, feeds, threads=threads, folds=folds, reference=given) as scorer:
        plan = plan_search(
            num_tensors=len(scorer.quantized),
            num_candidates=len(CANDIDATES),
            calibration_samples=calibration_samples,
            held_out=scorer.samples,
            budget=budget,
        )
        searched = [t for t in scorer.quantized if all(all(x is not None for x in table[lab][t]) for lab in table)]
        found = search(table, searched, scorer, plan=plan, seed=seed)
        forwards = scorer.forwards
        workers = scorer.workers
        layout = scorer.layout
        source = scorer.reference_source
        held = scorer.samples
    return AutoRecord.from_search(
        found, stats[0], plan=plan, held_out=held, statistics_samples=statistics_samples, seed=seed,
        scoring_data=scoring_data, seconds=time.perf_counter() - start,
        cost={
            "sample_forwards": forwards,
            "calibration_samples": calibration_samples,
            "passes": round(forwards / calibration_samples, 3),
            "scoring_workers": workers,
            "scoring_layout": layout,
            "reference": source,
            "folds": len(stats),
        },
    )


def auto_calibrate(
    clean: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    *,
    batch_size: int = 8,
    num_bins: int = DEFAULT_NUM_BINS,
    budget: float = DEFAULT_BUDGET,
    seed: int = 0,
    fixed_batch: int | None = None,
    progress: bool = False,
    model_name: str | None = None,
) -> tuple[dict[str, float | None], StatsCollector, int, AutoRecord]:
    """``--method auto`` over ``dataset``. The scored samples (:func:`scoring_plan`) are held
    aside in folds; each fold is scored with the candidates' ranges from the statistics of every
    other sample (:func:`score_and_search`); each tensor's chosen method is then applied to the
    statistics of every sample, as a hyperparameter chosen on validation data is refitted on all
    of it. One pass over the data collects each part's statistics (the folds' and the rest's,
    merged exactly afterwards) and keeps the folds' batches for scoring, so the data is read and
    the model runs over every sample once, as for any method.

    Returns (amax, the collector of every sample's statistics, the samples seen, the record)."""
    from quant.calibrators.calibrate import collect_partitioned_statistics
    from quant.calibrators.stats import StatsCollector

    total = len(dataset)
    scored, nfolds = scoring_plan(total, batch=fixed_batch)
    rest_pos, fold_pos = split_folds(total, scored, nfolds, seed=seed)
    # one read of the data and one set of sessions: each fold's statistics, the rest's, and the
    # folds' batches (what scores) come out of the same pass
    got = collect_partitioned_statistics(
        clean, dataset, tensors, [*fold_pos, rest_pos], keep=range(nfolds), keep_outputs=REUSE_REFERENCE,
        batch_size=batch_size, num_bins=num_bins, progress=progress, model_name=model_name,
    )
    collected = [(k, col) for k, col in enumerate(got.collectors) if col is not None]
    seen = got.seen
    parts = [[dict(b.feed) for b in got.kept.get(k, [])] for k in range(nfolds)]
    # the FP32 outputs of the scoring batches, from the same pass (a part's are there only when
    # complete; None: the scorer runs them)
    references = [got.outputs[k] for k in range(nfolds)] if all(k in got.outputs for k in range(nfolds)) else None

    def merged(skip: int | None) -> StatsCollector:
        out = StatsCollector(num_bins=num_bins)
        for k, col in collected:
            if k != skip:
                out.merge(col)
        return out

    fold_stats = [merged(k).stats() for k in range(nfolds)]
    record = score_and_search(
        clean, fold_stats, parts, budget=budget, seed=seed, calibration_samples=total,
        statistics_samples=total - scored // nfolds, references=references,
    )
    everything = merged(None)
    amax = choose_amax(candidate_ranges(everything.stats(), CANDIDATES), record.choice, record.best_single)
    return amax, everything, seen, record


def auto_params(*, num_bins: int, budget: float, seed: int, candidates: Sequence[Candidate] = CANDIDATES) -> dict[str, Any]:
    """The parameters of an auto calibration, as the sidecar records them (reuse compares them)."""
    return {
        "num_bins": num_bins,
        "candidates": [c.label for c in candidates],
        "budget": float(budget),
        "seed": int(seed),
        "metric": _metric(),
    }


def _metric() -> str:
    return {"samples": "sqnr, mean of samples", "adaptive": "sqnr, pooled or mean of samples by halving regret"}.get(
        SCORE_RULE, "sqnr")


__all__ = [
    "BatchMap",
    "CANDIDATES",
    "DEFAULT_BUDGET",
    "AutoRecord",
    "Candidate",
    "OutputScorer",
    "Score",
    "ScaleInputModel",
    "SearchPlan",
    "SearchResult",
    "SubsetDataset",
    "auto_calibrate",
    "auto_params",
    "candidate_ranges",
    "choose_amax",
    "choose_rule",
    "collect_feeds",
    "held_out_count",
    "scoring_layout",
    "scoring_plan",
    "split_folds",
    "plan_search",
    "scale_input_model",
    "score_and_search",
    "search",
    "split_groups",
    "split_held_out",
]
