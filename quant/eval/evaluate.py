"""The evaluation loop: the same batches through every precision, compared with a reference.

All runners are opened once. For each batch the reference precision runs first, then every other
precision runs and is compared with the reference's outputs *of that same batch*; only streaming
accumulators survive the batch, so memory does not grow with the data (per-batch wall times are
kept: a few floats per batch).

Latency is ``time.perf_counter`` around ``runner.infer`` only (no data loading, no metrics), per
batch. The first ``warmup`` batches are left out of the latency statistics (they still count for
accuracy); a final partial batch is left out too when a full one was timed (see
:func:`quant.eval.metrics.summarize_latency`). With too few batches the latency is None.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from quant.datasets.base import Dataset
from quant.errors import DataError, ModelError, ReportError, UsageError
from quant.eval._fields import (
    as_mapping,
    get_bool,
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
    LatencyStats,
    find_classifier_output,
    summarize_latency,
)

if TYPE_CHECKING:
    import onnx

    from quant.backends.base import Runner

    ModelLike = onnx.ModelProto | str | Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionResult:
    """Results of one precision (e.g. "fp32", "fp16", "int8").

    The reference has ``classification`` (accuracy, no agreement) and ``latency``; every other
    precision also has agreement (inside ``classification``) and one :class:`FidelityMetrics` per
    model output, in the reference's output order. ``classification`` is None when no output is a
    classifier; ``latency`` is None when no batch was timed.
    """

    name: str
    is_reference: bool
    classification: ClassificationMetrics | None = None
    fidelity: tuple[FidelityMetrics, ...] = ()
    latency: LatencyStats | None = None

    def fidelity_for(self, output: str) -> FidelityMetrics | None:
        for f in self.fidelity:
            if f.output == output:
                return f
        return None

    @property
    def worst_sqnr(self) -> float | None:
        """Lowest SQNR over the outputs (+inf when all are exact, -inf when one is undefined or
        non-finite); None for the reference or without fidelity."""
        if not self.fidelity:
            return None
        return min(f.sqnr_value for f in self.fidelity)

    @property
    def min_cosine(self) -> float | None:
        """Lowest whole-set cosine over the outputs; None when unavailable (reference, non-finite)."""
        values = [f.cosine for f in self.fidelity]
        if not values or any(v is None for v in values):
            return None
        return min(cast(list[float], values))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "is_reference": self.is_reference,
            "classification": None if self.classification is None else self.classification.to_dict(),
            "fidelity": [f.to_dict() for f in self.fidelity],
            "latency": None if self.latency is None else self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "precision") -> PrecisionResult:
        d = as_mapping(data, where)
        cls_d = get_mapping(d, "classification", where, nullable=True)
        lat_d = get_mapping(d, "latency", where, nullable=True)
        fid = get_list(d, "fidelity", where)
        return cls(
            name=get_str(d, "name", where),
            is_reference=get_bool(d, "is_reference", where),
            classification=(
                None if cls_d is None else ClassificationMetrics.from_dict(cls_d, f"{where}.classification")
            ),
            fidelity=tuple(FidelityMetrics.from_dict(f, f"{where}.fidelity[{i}]") for i, f in enumerate(fid)),
            latency=None if lat_d is None else LatencyStats.from_dict(lat_d, f"{where}.latency"),
        )


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measured: one :class:`PrecisionResult` per precision, reference first."""

    reference: str
    precisions: tuple[PrecisionResult, ...]
    num_samples: int
    num_batches: int
    batch_size: int
    warmup: int
    has_labels: bool
    classifier_output: str | None
    outputs: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.precisions)

    def precision(self, name: str) -> PrecisionResult:
        for p in self.precisions:
            if p.name == name:
                return p
        raise KeyError(f"no precision '{name}' in this evaluation (has: {', '.join(self.names)})")

    def get(self, name: str) -> PrecisionResult | None:
        for p in self.precisions:
            if p.name == name:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "precisions": [p.to_dict() for p in self.precisions],
            "num_samples": self.num_samples,
            "num_batches": self.num_batches,
            "batch_size": self.batch_size,
            "warmup": self.warmup,
            "has_labels": self.has_labels,
            "classifier_output": self.classifier_output,
            "outputs": list(self.outputs),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "evaluation") -> EvalResult:
        d = as_mapping(data, where)
        precs = tuple(
            PrecisionResult.from_dict(p, f"{where}.precisions[{i}]")
            for i, p in enumerate(get_list(d, "precisions", where))
        )
        outputs = get_list(d, "outputs", where)
        if not all(isinstance(o, str) for o in outputs):
            raise ReportError(f"field '{where}.outputs' should be a list of strings; the report is damaged")
        result = cls(
            reference=get_str(d, "reference", where),
            precisions=precs,
            num_samples=get_int(d, "num_samples", where),
            num_batches=get_int(d, "num_batches", where),
            batch_size=get_int(d, "batch_size", where, minimum=1),
            warmup=get_int(d, "warmup", where),
            has_labels=get_bool(d, "has_labels", where),
            classifier_output=get_str(d, "classifier_output", where, nullable=True),
            outputs=tuple(outputs),
        )
        refs = [p.name for p in precs if p.is_reference]
        if refs != [result.reference]:
            raise ReportError(
                f"field '{where}.reference' is '{result.reference}' but the precisions marked as "
                f"reference are {refs}; the report is damaged or was edited by hand"
            )
        if len(set(result.names)) != len(result.names):
            raise ReportError(f"field '{where}.precisions' names a precision twice; the report is damaged")
        return result


def _describe(name: str, model: object) -> str:
    if isinstance(model, (str, Path)):
        return f"'{name}' ({model})"
    return f"'{name}'"


def _default_runner_factory() -> Callable[[ModelLike], Runner]:
    # Imported here: ONNX Runtime must not load on `import quant` / `quant --help`.
    module = importlib.import_module("quant.backends.onnxruntime")
    return cast("Callable[[ModelLike], Runner]", module.OrtRunner)


def _check_outputs(
    runners: Mapping[str, Runner], models: Mapping[str, object], reference: str
) -> tuple[str, ...]:
    ref_outputs = tuple(runners[reference].output_names())
    for name, runner in runners.items():
        outs = runner.output_names()
        if set(outs) != set(ref_outputs):
            raise ModelError(
                f"model {_describe(name, models[name])} has outputs {sorted(outs)} but the reference "
                f"{_describe(reference, models[reference])} has {sorted(ref_outputs)}; all precisions "
                "must be the same model with the same output names"
            )
    return ref_outputs


def _check_inputs(
    runners: Mapping[str, Runner], models: Mapping[str, object], dataset: Dataset
) -> dict[str, list[str]]:
    available = set(dataset.input_names)
    needed: dict[str, list[str]] = {}
    for name, runner in runners.items():
        inputs = [spec.name for spec in runner.input_specs()]
        missing = [i for i in inputs if i not in available]
        if missing:
            raise DataError(
                f"model {_describe(name, models[name])} needs inputs {missing} that the data set does not "
                f"provide (it provides {sorted(available)}); check --input names or the data"
            )
        needed[name] = inputs
    return needed


def _run(
    runner: Runner, feed: dict[str, np.ndarray], outputs: tuple[str, ...], label: str
) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    result = runner.infer(feed)
    elapsed = time.perf_counter() - start
    missing = [o for o in outputs if o not in result]
    if missing:
        raise ModelError(f"runner for {label} returned no value for outputs {missing}; the backend is broken")
    return result, elapsed


def evaluate(
    models: Mapping[str, ModelLike],
    dataset: Dataset,
    *,
    batch_size: int = 32,
    reference: str = "fp32",
    runner_factory: Callable[[ModelLike], Runner] | None = None,
    warmup: int = 1,
    progress: bool = False,
    classifier_output: str | None = None,
) -> EvalResult:
    """Run ``dataset`` through every model and measure accuracy, agreement, fidelity and latency.

    ``models`` maps a precision name to a ModelProto or path; ``reference`` must be one of them.
    ``runner_factory`` opens a :class:`~quant.backends.base.Runner` for a model (default: ONNX
    Runtime's ``OrtRunner``). ``classifier_output`` picks the output scored for accuracy (default:
    the first float (N, C) / (N, C, 1, 1) output with C >= 2; none: only fidelity is measured).
    """
    if not models:
        raise UsageError("evaluate needs at least one model")
    if reference not in models:
        raise UsageError(
            f"reference precision '{reference}' is not among the models ({', '.join(models)}); "
            "pass one of those as the reference"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer, not {batch_size!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"warmup must be a non-negative number of batches, not {warmup!r}")

    factory = runner_factory if runner_factory is not None else _default_runner_factory()
    names = [reference] + [n for n in models if n != reference]
    expected_batches = math.ceil(len(dataset) / batch_size)

    with contextlib.ExitStack() as stack:
        runners: dict[str, Runner] = {}
        for name in names:
            runners[name] = stack.enter_context(factory(models[name]))
        outputs = _check_outputs(runners, models, reference)
        inputs = _check_inputs(runners, models, dataset)

        from tqdm import tqdm  # lazy: only the loop needs it

        bar = stack.enter_context(
            tqdm(total=expected_batches, desc="evaluate", unit="batch", file=sys.stderr, disable=not progress)
        )
        times: dict[str, list[float]] = {n: [] for n in names}
        sizes: list[int] = []
        cls_acc: dict[str, ClassificationAccumulator] = {}
        fid_acc: dict[str, dict[str, FidelityAccumulator]] = {
            n: {o: FidelityAccumulator(o) for o in outputs} for n in names if n != reference
        }
        cls_name: str | None = None
        num_samples = 0
        num_batches = 0
        saw_labels = False

        for index, batch in enumerate(dataset.batches(batch_size)):
            n = batch.size
            labels = batch.labels
            if labels is not None:
                saw_labels = True
            timed = index >= warmup
            ref_feed = {k: batch.feed[k] for k in inputs[reference]}
            ref_out, elapsed = _run(
                runners[reference], ref_feed, outputs, _describe(reference, models[reference])
            )
            if timed:
                times[reference].append(elapsed)
                sizes.append(n)
            if index == 0:
                cls_name = find_classifier_output(
                    {o: np.asarray(ref_out[o]) for o in outputs}, classifier_output
                )
                if cls_name is None:
                    logger.info("no classifier output among %s: measuring fidelity only", list(outputs))
                else:
                    cls_acc = {p: ClassificationAccumulator(cls_name) for p in names}
            if cls_name is not None:
                cls_acc[reference].update(ref_out[cls_name], labels)
            for name in names[1:]:
                feed = {k: batch.feed[k] for k in inputs[name]}
                out, elapsed = _run(runners[name], feed, outputs, _describe(name, models[name]))
                if timed:
                    times[name].append(elapsed)
                if cls_name is not None:
                    cls_acc[name].update(out[cls_name], labels, ref_out[cls_name])
                for o in outputs:
                    fid_acc[name][o].update(out[o], ref_out[o])
                del out
            num_samples += n
            num_batches += 1
            bar.update(1)

    if num_batches == 0:
        raise DataError(
            f"data set '{dataset.summary().source}' yielded no samples to evaluate; "
            "check the data path and --max-samples"
        )
    if num_batches <= warmup:
        logger.warning(
            "only %d batch(es) with %d warm-up batch(es): no latency measured; use more data or --warmup 0",
            num_batches,
            warmup,
        )

    precisions = []
    for name in names:
        is_ref = name == reference
        precisions.append(
            PrecisionResult(
                name=name,
                is_reference=is_ref,
                classification=cls_acc[name].result() if cls_name is not None else None,
                fidelity=() if is_ref else tuple(fid_acc[name][o].result() for o in outputs),
                latency=summarize_latency(times[name], sizes, batch_size),
            )
        )
    result = EvalResult(
        reference=reference,
        precisions=tuple(precisions),
        num_samples=num_samples,
        num_batches=num_batches,
        batch_size=batch_size,
        warmup=warmup,
        has_labels=saw_labels and cls_name is not None,
        classifier_output=cls_name,
        outputs=outputs,
    )
    logger.info("evaluated %d samples in %d batches over %s", num_samples, num_batches, ", ".join(names))
    return result
