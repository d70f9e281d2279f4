"""Running the switchable model: per-layer sensitivity and the greedy fallback (ONNX Runtime).

Cost model. One ONNX Runtime session serves every configuration (:mod:`.switchable`). The data
is read once: for each batch the FP32 reference runs once (the all-float configuration), then
every configuration runs on the same inputs and is compared with that reference, so a
sensitivity pass costs ``(2 * layers + 2) x samples`` forward passes (FP32, all INT8, and per
layer "INT8 alone" and "float alone"; duplicates run once), and memory holds one batch. When a
:class:`BatchStore` is given, the inputs, FP32 outputs and labels are kept for later passes (the
fallback's steps) so that images are not decoded again and FP32 never runs again.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.errors import DataError
from quant.eval.metrics import find_classifier_output
from quant.sensitivity.results import (
    Budget,
    FallbackResult,
    FallbackStep,
    LayerSensitivity,
    Measurement,
    MeasurementAccumulator,
    PartialMeasurement,
    SensitivityResult,
    format_measurement,
    merge_partials,
    positions,
    rank_layers,
    resolve_metric,
    spearman,
)
from quant.sensitivity.switchable import Segment, SwitchableModel, plan_segments, suffix_model

if TYPE_CHECKING:
    from quant.datasets.base import Batch, Dataset, DataSummary

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_STORE_BYTES",
    "BatchStore",
    "StoredBatch",
    "StoredDataset",
    "SwitchableRunner",
    "fill_store",
    "greedy_fallback",
    "measure_reference",
    "measure_sensitivity",
    "measure_stored",
    "ranking_confidence",
]

#: Stored batches beyond this many bytes go to temporary .npz files (read back for every pass).
DEFAULT_STORE_BYTES = 1 << 30
#: Suffix sessions for single-layer configurations. Each holds the weights of its suffix: on
#: ResNet-50 (2 cores), 4 segments did 62 % of the full-pass work for 1.5 GB more memory, 8 did
#: 57 % for 3 GB more.
DEFAULT_SEGMENTS = 4

Infer = Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclass(frozen=True)
class StoredBatch:
    """One batch: the model inputs, the FP32 reference outputs and the labels (None without)."""

    feed: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    labels: np.ndarray | None

    @property
    def size(self) -> int:
        return int(next(iter(self.feed.values())).shape[0])

    @property
    def nbytes(self) -> int:
        arrays = [*self.feed.values(), *self.reference.values()]
        if self.labels is not None:
            arrays.append(self.labels)
        return int(sum(a.nbytes for a in arrays))


class BatchStore:
    """Batches kept for repeated passes, in memory up to ``memory_limit`` bytes, then in temporary
    ``.npz`` files (one per batch, removed on :meth:`close`). Iteration yields them in order."""

    def __init__(self, *, memory_limit: int = DEFAULT_STORE_BYTES) -> None:
        self._limit = memory_limit
        self._items: list[StoredBatch | tuple[Path, list[str], list[str], bool]] = []
        self._bytes = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.num_samples = 0

    def __enter__(self) -> BatchStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def num_batches(self) -> int:
        return len(self._items)

    @property
    def spilled(self) -> int:
        """Batches held on disk."""
        return sum(1 for item in self._items if not isinstance(item, StoredBatch))

    def add(
        self, feed: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], labels: np.ndarray | None
    ) -> None:
        batch = StoredBatch(dict(feed), dict(reference), labels)
        self.num_samples += batch.size
        if self._bytes + batch.nbytes <= self._limit:
            self._items.append(batch)
            self._bytes += batch.nbytes
            return
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="quant-sensitivity-")
            log.info(
                "stored batches exceed %d MiB; keeping the rest in %s", self._limit >> 20, self._tmp.name
            )
        path = Path(self._tmp.name) / f"batch{len(self._items)}.npz"
        feed_keys, ref_keys = list(batch.feed), list(batch.reference)
        arrays = [*batch.feed.values(), *batch.reference.values()]
        if labels is not None:
            arrays.append(labels)
        np.savez(path, *arrays)
        self._items.append((path, feed_keys, ref_keys, labels is not None))

    def __iter__(self) -> Iterator[StoredBatch]:
        for item in self._items:
            if isinstance(item, StoredBatch):
                yield item
                continue
            path, feed_keys, ref_keys, has_labels = item
            with np.load(path) as z:
                arrays = [z[f"arr_{i}"] for i in range(len(feed_keys) + len(ref_keys) + int(has_labels))]
            n = len(feed_keys)
            yield StoredBatch(
                dict(zip(feed_keys, arrays[:n], strict=True)),
                dict(zip(ref_keys, arrays[n : n + len(ref_keys)], strict=True)),
                arrays[-1] if has_labels else None,
            )

    def close(self) -> None:
        self._items = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class SwitchableRunner:
    """ONNX Runtime sessions over a switchable model: :meth:`run` takes a flags array.

    With ``segments`` > 0, up to that many suffix models (:func:`plan_segments`) are prepared: the
    full session also returns the cut tensors (:meth:`run_with_cuts`), and :meth:`run_from` runs
    a configuration from a cut, skipping the prefix. Suffix sessions open on first use and are
    freed by :meth:`release_segments` (the fallback does not need them).
    """

    def __init__(
        self,
        switchable: SwitchableModel,
        *,
        threads: int | None = None,
        optimization: str = "all",
        segments: int = DEFAULT_SEGMENTS,
    ) -> None:
        from quant.backends.onnxruntime import OrtRunner

        self.switchable = switchable
        self._threads = threads
        self._optimization = optimization
        self.segments: tuple[Segment, ...] = plan_segments(switchable, max_segments=segments)
        self.cuts = tuple(dict.fromkeys(s.cut for s in self.segments))
        self._runner = OrtRunner(
            switchable.model,
            threads=threads,
            optimization=optimization,
            extra_outputs=self.cuts,
            name="switchable model",
        )
        self.outputs = tuple(o.name for o in switchable.model.graph.output)
        self.input_names = tuple(
            s.name for s in self._runner.input_specs() if s.name != switchable.flags_input
        )
        self._suffix: dict[int, Any] = {}

    def __enter__(self) -> SwitchableRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _feed(self, feed: Mapping[str, np.ndarray], flags: np.ndarray) -> dict[str, np.ndarray]:
        full = {name: feed[name] for name in self.input_names}
        full[self.switchable.flags_input] = np.asarray(flags, dtype=np.bool_)
        return full

    def run(self, feed: Mapping[str, np.ndarray], flags: np.ndarray) -> dict[str, np.ndarray]:
        """The model outputs for ``feed`` with the layers whose flag is True in INT8."""
        return self._runner.infer(self._feed(feed, flags), outputs=self.outputs)

    def run_with_cuts(
        self, feed: Mapping[str, np.ndarray], flags: np.ndarray
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(model outputs, values of the cut tensors) for one configuration."""
        values = self._runner.infer(self._feed(feed, flags))
        return {o: values[o] for o in self.outputs}, {c: values[c] for c in self.cuts}

    def run_from(self, segment: int, cut_value: np.ndarray, flags: np.ndarray) -> dict[str, np.ndarray]:
        """The model outputs of a configuration, run from segment ``segment``'s cut tensor."""
        from quant.backends.onnxruntime import OrtRunner

        seg = self.segments[segment]
        runner = self._suffix.get(segment)
        if runner is None:
            runner = OrtRunner(
                suffix_model(self.switchable, seg),
                threads=self._threads,
                optimization=self._optimization,
                name=f"suffix from '{seg.cut}'",
            )
            self._suffix[segment] = runner
        feed = {seg.cut: cut_value, self.switchable.flags_input: np.asarray(flags, dtype=np.bool_)}
        return runner.infer(feed, outputs=self.outputs)

    def release_segments(self) -> None:
        """Close the suffix sessions and forget the segments (memory for later passes)."""
        for runner in self._suffix.values():
            runner.close()
        self._suffix = {}
        self.segments = ()

    def close(self) -> None:
        self.release_segments()
        self._runner.close()


def _check_inputs(runner: SwitchableRunner, available: Sequence[str]) -> None:
    missing = [n for n in runner.input_names if n not in available]
    if missing:
        raise DataError(
            f"the data has no input {missing[0]!r} that the model needs (data inputs: "
            f"{', '.join(available) or 'none'}); check the input names of the data"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _ranking(
    layers: Sequence[Any],
    parts: Sequence[Sequence[PartialMeasurement]],
    rounds: Sequence[int],
    metric: str,
) -> tuple[LayerSensitivity, ...]:
    """The ranking measured on the rounds ``rounds`` only (``parts[round][config]``)."""
    merged = [merge_partials([parts[r][c] for r in rounds]) for c in range(len(parts[0]))]
    n = len(layers)
    return rank_layers(
        layers,
        merged[2 : 2 + n],
        merged[2 + n : 2 + 2 * n],
        metric=metric,
        reference=merged[0],
        all_int8=merged[1],
    )


def ranking_confidence(
    layers: Sequence[Any], parts: Sequence[Sequence[PartialMeasurement]], metric: str
) -> float | None:
    """Split-half reliability of the ranking over the rounds measured so far: Spearman's
    correlation between the rankings of the even and the odd rounds, stepped up to the whole
    set with the Spearman-Brown formula ``2 r / (1 + r)``. It estimates how well this ranking
    agrees with the ranking of another set of as many samples; None before two rounds."""
    if len(parts) < 2 or len(layers) < 2:
        return None
    even = positions(_ranking(layers, parts, range(0, len(parts), 2), metric))
    odd = positions(_ranking(layers, parts, range(1, len(parts), 2), metric))
    keys = sorted(even)
    r = spearman([even[k] for k in keys], [odd[k] for k in keys])
    return max(0.0, 2.0 * r / (1.0 + r)) if r > -1.0 else 0.0


def measure_sensitivity(
    runner: SwitchableRunner,
    dataset: Dataset,
    *,
    batch_size: int,
    metric: str = "auto",
    classifier_output: str | None = None,
    progress: bool = False,
    store: BatchStore | None = None,
    layers: Sequence[int] | None = None,
    confidence: float | None = None,
    round_samples: int = 4,
    min_samples: int = 16,
) -> SensitivityResult:
    """Measure every layer alone in INT8 and alone in float against FP32, and rank the layers.

    One pass over ``dataset``. Each batch runs FP32 and all-INT8 once (keeping the runner's cut
    tensors), then each layer's two configurations, from the layer's segment cut when it has one
    (fed FP32's cut value for "INT8 alone", all-INT8's for "float alone"). With ``store``, each
    batch (inputs, FP32 outputs, labels) is kept for later passes. ``layers``: measure only these
    layer indices (a layer shard; FP32 and all INT8 are measured by every shard).

    ``confidence`` (adaptive sampling): the data is read in rounds of ``round_samples`` samples
    and, from ``min_samples`` samples on, the pass stops as soon as the ranking's split-half
    reliability (:func:`ranking_confidence`) reaches ``confidence``, or the data ends. None: every sample in
    batches of ``batch_size`` (the full measurement). Every configuration's sums are kept per
    round (a few numbers), so that rankings of any set of rounds can be computed.
    """
    from tqdm import tqdm

    sw = runner.switchable
    _check_inputs(runner, dataset.input_names)
    n_all = sw.num_layers
    chosen = list(range(n_all)) if layers is None else sorted(set(layers))
    if any(not 0 <= k < n_all for k in chosen):
        raise DataError(f"layer indices must be in 0..{n_all - 1}; got {chosen}")
    measured = [sw.layers[k] for k in chosen]
    n_layers = len(chosen)
    seg_of = {k: j for j, seg in enumerate(runner.segments) for k in seg.layers}
    fraction = [runner.segments[seg_of[k]].fraction if k in seg_of else 1.0 for k in chosen]
    none, every = sw.all_float(), sw.all_int8()
    single = n_all == 1  # then "INT8 alone" is all INT8 and "float alone" is FP32
    configurations = 2 if single or n_layers == 0 else 2 + 2 * n_layers
    work = (2.0 if single or n_layers == 0 else 2.0 + 2.0 * sum(fraction)) / configurations
    adaptive = confidence is not None
    step = round_samples if adaptive else batch_size
    expected = math.ceil(len(dataset) / step)
    log.info(
        "sensitivity: %d layers, %d configurations x %s%d samples = %d forward passes "
        "(%d segments: %.0f %% of the nodes of full passes)",
        n_layers,
        configurations,
        "at most " if adaptive else "",
        len(dataset),
        configurations * len(dataset),
        len(runner.segments),
        100.0 * work,
    )

    outputs = runner.outputs
    parts: list[list[PartialMeasurement]] = []  # per round: ref, all INT8, alone[...], allbut[...]
    cls_name: str | None = None
    resolved = ""
    samples = 0
    reached: float | None = None
    start = time.perf_counter()
    first = 0.0
    batches = dataset.batches(step)
    try:
        with tqdm(
            total=expected * configurations, desc="sensitivity", unit="run", file=sys.stderr,
            disable=not progress,
        ) as bar:
            for index, batch in enumerate(batches):
                feed = {k: batch.feed[k] for k in runner.input_names}
                labels = batch.labels
                ref, ref_cuts = runner.run_with_cuts(feed, none)
                if index == 0:
                    cls_name = find_classifier_output({o: np.asarray(ref[o]) for o in outputs}, classifier_output)
                    resolved = resolve_metric(metric, classifier_output=cls_name, has_labels=dataset.has_labels)
                accs = [MeasurementAccumulator(outputs, cls_name) for _ in range(2 + 2 * n_layers)]
                accs[0].update(ref, ref, labels)
                every_out, every_cuts = runner.run_with_cuts(feed, every)
                accs[1].update(every_out, ref, labels)
                bar.update(2)
                for i, k in enumerate(chosen):
                    if single:
                        quantized, floating = every_out, ref
                    elif k in seg_of:
                        j = seg_of[k]
                        cut = runner.segments[j].cut
                        quantized = runner.run_from(j, ref_cuts[cut], sw.flags([k]))
                        floating = runner.run_from(j, every_cuts[cut], ~sw.flags([k]))
                        bar.update(2)
                    else:
                        quantized = runner.run(feed, sw.flags([k]))
                        floating = runner.run(feed, ~sw.flags([k]))
                        bar.update(2)
                    accs[2 + i].update(quantized, ref, labels)
                    accs[2 + n_layers + i].update(floating, ref, labels)
                parts.append([a.partial() for a in accs])
                if store is not None:
                    store.add(feed, ref, labels)
                samples += batch.size
                # Estimate from the second batch: the first one includes ONNX Runtime's warm-up.
                if index == 0:
                    first = time.perf_counter() - start
                elif index == 1 and expected > 2 and not adaptive:
                    per_batch = time.perf_counter() - start - first
                    log.info("sensitivity: about %s more", _duration(per_batch * (expected - 2)))
                if adaptive and confidence is not None and n_layers > 1 and samples >= min_samples:
                    reached = ranking_confidence(measured, parts, resolved)
                    if reached is not None and reached >= confidence:
                        log.info(
                            "sensitivity: ranking confidence %.3f >= %.3f after %d of %d samples; stopping",
                            reached, confidence, samples, len(dataset),
                        )
                        break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    if not parts:
        raise DataError(
            f"data set '{dataset.summary().source}' yielded no samples; check the data path and --max-samples"
        )
    if not adaptive or reached is None:
        reached = ranking_confidence(measured, parts, resolved) if n_layers > 1 else None
    if adaptive and confidence is not None and (reached is None or reached < confidence):
        log.warning(
            "sensitivity: ranking confidence %s after all %d samples, below the %.2f asked for; "
            "give more samples (--max-samples) for a steadier ranking",
            "n/a" if reached is None else f"{reached:.3f}", samples, confidence,
        )
    seconds = time.perf_counter() - start
    all_rounds = range(len(parts))
    reference = merge_partials([p[0] for p in parts])
    all_int8 = merge_partials([p[1] for p in parts])
    ranked = _ranking(measured, parts, all_rounds, resolved) if n_layers else ()
    return SensitivityResult(
        metric=resolved,
        classifier_output=cls_name,
        outputs=tuple(outputs),
        num_samples=samples,
        batch_size=step,
        has_labels=reference.top1 is not None,
        reference=reference,
        all_int8=all_int8,
        layers=ranked,
        configurations=configurations,
        forward_passes=configurations * samples,
        seconds=seconds,
        base_exclude=sw.base_exclude,
        segments=len(runner.segments),
        work_fraction=work,
        sampling="adaptive" if adaptive else "all",
        samples_available=len(dataset),
        confidence=reached,
    )


def measure_stored(
    infer: Infer,
    store: BatchStore,
    *,
    outputs: Sequence[str],
    classifier_output: str | None,
) -> Measurement:
    """Run ``infer`` on every stored batch and measure it against the stored FP32 outputs."""
    acc = MeasurementAccumulator(outputs, classifier_output)
    for batch in store:
        acc.update(infer(batch.feed), batch.reference, batch.labels)
    return acc.result()


def measure_reference(store: BatchStore, *, outputs: Sequence[str], classifier_output: str | None) -> Measurement:
    """FP32 itself on the stored batches: its top-1 on the labels (agreement 100 %, exact)."""
    acc = MeasurementAccumulator(outputs, classifier_output)
    for batch in store:
        acc.update(batch.reference, batch.reference, batch.labels)
    return acc.result()


def fill_store(
    runner: SwitchableRunner, dataset: Dataset, store: BatchStore, *, batch_size: int, progress: bool = False
) -> None:
    """One FP32 pass over ``dataset``: keep each batch's inputs, FP32 outputs and labels in ``store``."""
    from tqdm import tqdm

    _check_inputs(runner, dataset.input_names)
    none = runner.switchable.all_float()
    with tqdm(
        total=math.ceil(len(dataset) / batch_size),
        desc="FP32",
        unit="batch",
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        for batch in dataset.batches(batch_size):
            feed = {k: batch.feed[k] for k in runner.input_names}
            store.add(feed, runner.run(feed, none), batch.labels)
            bar.update(1)
    if store.num_samples == 0:
        raise DataError(
            f"data set '{dataset.summary().source}' yielded no samples; check the data path and --max-samples"
        )


class StoredDataset:
    """The first whole batches of a :class:`BatchStore` holding at least ``limit`` samples, as a
    Dataset (batches keep the store's size; ``batches(batch_size)`` ignores its argument)."""

    def __init__(
        self, store: BatchStore, *, limit: int | None = None, source: str = "stored batches"
    ) -> None:
        self._store = store
        self._source = source
        self._count = 0
        self._batches = 0
        for b in store:
            if limit is not None and self._count >= limit:
                break
            self._count += b.size
            self._batches += 1
        first = next(iter(store), None)
        self._names = tuple(first.feed) if first is not None else ()
        self._labels = first is not None and first.labels is not None

    @property
    def input_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def has_labels(self) -> bool:
        return self._labels

    def __len__(self) -> int:
        return self._count

    def batches(self, batch_size: int) -> Iterator[Batch]:
        from quant.datasets.base import Batch

        for i, b in enumerate(self._store):
            if i >= self._batches:
                return
            yield Batch(feed=dict(b.feed), labels=b.labels)

    def fingerprint(self) -> str:
        return f"stored:{self._count}"

    def summary(self) -> DataSummary:
        from quant.datasets.base import DataSummary

        return DataSummary(source=self._source, kind="stored", num_samples=self._count)


def _with_flags(runner: SwitchableRunner, flags: np.ndarray) -> Infer:
    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return runner.run(feed, flags)

    return infer


def greedy_fallback(
    runner: SwitchableRunner,
    sensitivity: SensitivityResult,
    store: BatchStore,
    budget: Budget,
    *,
    verify: Callable[[tuple[str, ...]], Measurement] | None = None,
) -> FallbackResult:
    """Keep the most sensitive layers in float, one at a time in ranking order, until ``budget``
    holds (or no layer is left).

    FP32, all INT8 and each step are measured with the switchable model on every stored batch
    (``sensitivity`` gives the ranking; it may come from fewer samples). When a step meets the
    budget and ``verify`` is given, ``verify(exclude)`` measures the real Q/DQ model built with
    those exclusions; if that misses the budget (kernels differ slightly), the fallback goes on.
    """
    sw = runner.switchable
    cls_name = sensitivity.classifier_output
    start_time = time.perf_counter()
    # FP32 and all INT8 on every stored sample (the ranking may have used fewer).
    ref = measure_reference(store, outputs=runner.outputs, classifier_output=cls_name)
    cls_metric = budget.classification_metric(classifier_output=cls_name, has_labels=ref.top1 is not None)
    start = measure_stored(
        _with_flags(runner, sw.all_int8()), store, outputs=runner.outputs, classifier_output=cls_name
    )
    passes = store.num_samples
    floats: list[int] = []
    fell_back: list[str] = []
    steps: list[FallbackStep] = []
    verified: Measurement | None = None

    def excluded() -> tuple[str, ...]:
        return sw.exclude_for(~sw.flags(floats) if floats else sw.all_int8())

    def check(m: Measurement) -> tuple[bool, Measurement | None]:
        nonlocal passes
        if not budget.met(m, ref, cls_metric):
            return False, None
        if verify is None:
            return True, None
        v = verify(excluded())
        passes += store.num_samples
        ok = budget.met(v, ref, cls_metric)
        if not ok:
            log.warning(
                "fallback: the switchable model meets the budget but the built Q/DQ model does not (%s); "
                "going on",
                format_measurement(v),
            )
        return ok, v

    met, verified = check(start)
    log.info(
        "fallback on %d samples: FP32 %s; all INT8 %s",
        store.num_samples,
        format_measurement(ref),
        format_measurement(start),
    )
    for layer in sensitivity.layers:
        if met:
            break
        if layer.pattern is None:
            log.warning("fallback: layer '%s' cannot be excluded by name; skipped", layer.name)
            continue
        floats.append(layer.index)
        fell_back.append(layer.name)
        m = measure_stored(
            _with_flags(runner, ~sw.flags(floats)),
            store,
            outputs=runner.outputs,
            classifier_output=cls_name,
        )
        passes += store.num_samples
        met, verified = check(m)
        steps.append(
            FallbackStep(
                step=len(steps) + 1,
                layer=layer.name,
                op_type=layer.op_type,
                measurement=m,
                drop=budget.drop(m, ref, cls_metric),
                met=met,
            )
        )
        log.info(
            "fallback step %d: %s (%s) kept in float: %s%s",
            len(steps),
            layer.name,
            layer.op_type,
            format_measurement(m),
            " (budget met)" if met else "",
        )
    return FallbackResult(
        budget=budget,
        metric=cls_metric,
        reference=ref,
        start=start,
        steps=tuple(steps),
        fell_back=tuple(fell_back),
        exclude=excluded(),
        met=met,
        verified=verified,
        forward_passes=passes,
        seconds=time.perf_counter() - start_time,
    )
