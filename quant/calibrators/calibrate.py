"""Calibration over ONNX Runtime: run the data through the model once, reducing as it goes.

The model runs in consecutive stages (:mod:`quant.calibrators.streaming`), each an ORT session
whose outputs are the calibrated tensors it makes (plus what later stages read); all stages draw
on one shared ORT arena. Each fetched tensor is reduced in place (a view of ORT's buffer) into its
accumulator on a worker thread while ORT computes the next stage, and dropped. Tensors that are a
ReLU or a reshaping of another calibrated tensor are not fetched: their statistics are derived
exactly. Memory therefore grows with tensors x bins plus one stage's activations, never with the
number of samples. One pass suffices: the power-of-two histograms grow exactly (see
:mod:`quant.calibrators.stats`), so no range pass is needed before the histogram pass.
docs/PERFORMANCE.md has the measurements behind each choice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.calibrators.methods import CalibConfig, compute_amax
from quant.calibrators.result import TENSOR_SCOPES, CalibrationResult
from quant.calibrators.stats import (
    DEFAULT_NUM_BINS,
    SignedStatsAccumulator,
    StatsAccumulator,
    StatsCollector,
    TensorStats,
    _Scratch,
    check_num_bins,
)
from quant.errors import CalibrationError, DataError, UsageError

if TYPE_CHECKING:
    import onnx

    from quant.datasets.base import Dataset

logger = logging.getLogger(__name__)


def _check_tensors(model: onnx.ModelProto, tensors: Sequence[str], model_name: str) -> list[str]:
    names = list(dict.fromkeys(tensors))
    if not names:
        raise CalibrationError(
            f"no tensors to calibrate in model '{model_name}'; pass at least one tensor name"
        )
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    activations = {i.name for i in graph.input if i.name not in weights}
    activations.update(o for node in graph.node for o in node.output if o)
    for name in names:
        if name in activations:
            continue
        if name in weights:
            raise CalibrationError(
                f"tensor '{name}' of model '{model_name}' is a weight (initializer), not an activation; "
                "calibrate activations only (weights get per-channel ranges from their values)"
            )
        missing = [n for n in names if n not in activations and n not in weights]
        more = f" ({len(missing) - 1} more tensors are missing too)" if len(missing) > 1 else ""
        raise CalibrationError(
            f"tensor '{name}' is not in model '{model_name}'{more}; check the tensor names "
            "(was the list made for another model, or before graph cleanup?)"
        )
    return names


# Ops whose output holds exactly the values of their data input (input 0), rearranged: the same
# statistics. ReLU's output statistics follow from its input's per-sign statistics.
_SAME_VALUES_OPS = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


@dataclass(frozen=True)
class _Plan:
    """Which calibration tensors are reduced from ORT's outputs, and which follow from them."""

    fetch: tuple[str, ...]  # reduced from the feed or from ORT outputs, in graph order
    derived: Mapping[str, tuple[str, bool]]  # tensor -> (fetched tensor, through a ReLU?)
    signed: frozenset[str]  # fetched tensors whose ReLU statistics are needed


def _plan(model: onnx.ModelProto, names: Sequence[str]) -> _Plan:
    """Derive what can be derived: a tensor made by a same-values op or a ReLU from another
    calibrated tensor is not fetched; its statistics come from that tensor's (exactly)."""
    g = model.graph
    position = {i.name: -1 for i in g.input}
    producer: dict[str, onnx.NodeProto] = {}
    for idx, node in enumerate(g.node):
        for o in node.output:
            if o:
                producer[o] = node
                position[o] = idx
    root: dict[str, tuple[str, bool]] = {}
    fetch: list[str] = []
    for name in sorted(names, key=lambda n: position.get(n, -1)):
        node = producer.get(name)
        src = node.input[0] if node is not None and node.input and node.domain in ("", "ai.onnx") else ""
        if node is not None and src in root and (node.op_type in _SAME_VALUES_OPS or node.op_type == "Relu"):
            base, relu = root[src]
            root[name] = (base, relu or node.op_type == "Relu")
        else:
            root[name] = (name, False)
            fetch.append(name)
    derived = {n: v for n, v in root.items() if v[0] != n}
    return _Plan(tuple(fetch), derived, frozenset(base for base, relu in derived.values() if relu))


def collect_statistics(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    *,
    batch_size: int = 8,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> tuple[StatsCollector, int]:
    """Run ``dataset`` through ``model`` and collect statistics of ``tensors``.

    Returns the collector and the number of samples seen. Errors: a tensor not in the model ->
    CalibrationError naming it; a batch whose feed does not fit the model's inputs -> DataError
    naming the input, its shape and the expected shape (checked before ORT runs); NaN / inf
    activations -> CalibrationError naming the tensor and the batch; no samples -> DataError.
    ``model_name`` names the model in messages (default: the graph name).

    How it stays cheap (docs/PERFORMANCE.md): the model runs in stages (see
    :mod:`quant.calibrators.streaming`) so only one stage's calibrated activations exist at a time;
    ORT's output buffers are reduced in place, never copied; the statistics of a tensor made from
    another calibrated tensor by a ReLU or a reshaping op are derived exactly instead of computed
    again (:class:`SignedStatsAccumulator`).
    """
    from tqdm import tqdm

    from quant.backends.onnxruntime import check_feed
    from quant.graph.load import input_specs

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer (got {batch_size!r})")
    display = model_name or model.graph.name or "<in-memory model>"
    names = _check_tensors(model, tensors, display)
    num_bins = check_num_bins(num_bins)
    plan = _plan(model, names)
    specs = input_specs(model)
    graph_inputs = {s.name for s in specs}
    accumulators: dict[str, StatsAccumulator | SignedStatsAccumulator] = {
        t: SignedStatsAccumulator(t, num_bins) if t in plan.signed else StatsAccumulator(t, num_bins)
        for t in plan.fetch
    }
    scratch = _Scratch()
    from_graph = [t for t in plan.fetch if t not in graph_inputs]
    from_feed = [t for t in plan.fetch if t in graph_inputs]
    seen = 0
    with (
        _StagedRunner(model, from_graph, batch_size=batch_size, threads=threads, name=display) as runner,
        tqdm(
            total=len(dataset),
            unit="sample",
            desc="calibrating",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        reducer = _Reducer(accumulators, scratch, overlap=_OVERLAP)
        try:
            for index, batch in enumerate(dataset.batches(batch_size)):
                check_feed(batch.feed, specs, model=display)
                if from_feed:
                    reducer.submit({t: batch.feed[t] for t in from_feed}, index)
                for outputs in runner.run(batch.feed):
                    reducer.submit(outputs, index)
                size = batch.size
                seen += size
                bar.update(size)
            reducer.wait()
        finally:
            reducer.close()
    if seen == 0:
        raise DataError(
            f"dataset '{dataset.summary().source}' gave no samples; calibration needs at least one "
            "(check the data path, its contents and --max-samples)"
        )
    stats: dict[str, TensorStats] = {}
    for t in names:
        base, relu = plan.derived.get(t, (t, False))
        acc = accumulators[base]
        stats[t] = acc.relu_snapshot() if relu and isinstance(acc, SignedStatsAccumulator) else acc.snapshot()
    logger.info(
        "collected statistics of %d tensors (%d reduced, %d derived) over %d samples",
        len(names),
        len(plan.fetch),
        len(plan.derived),
        seen,
    )
    return StatsCollector.from_stats(stats, num_bins), seen


# Run-time choices for the calibration sessions (module constants so the benchmark can compare).
_OVERLAP = True  # reduce on a worker thread while ORT computes the next stage
_ARENA: bool | str = "shared"  # "shared": one ORT arena for all stage sessions; True: one each
_SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}
_OPTIMIZATION = "extended"


class _Reducer:
    """Reduces fetched tensors into their accumulators, optionally on a worker thread.

    With ``overlap`` the reduction of one stage's outputs runs while ONNX Runtime computes the next
    stage (ORT releases the GIL; NumPy's ufuncs do too), at most one stage behind: ``submit``
    first waits for the previous stage. The caller keeps each stage's outputs alive until then
    (they are referenced by the pending job). Errors (NaN activations) surface at the next
    ``submit`` or ``wait``.
    """

    def __init__(
        self,
        accumulators: Mapping[str, StatsAccumulator | SignedStatsAccumulator],
        scratch: _Scratch,
        *,
        overlap: bool,
    ) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._acc = accumulators
        self._scratch = scratch
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quant-reduce") if overlap else None
        self._pending: Future[None] | None = None

    def _reduce(self, outputs: Mapping[str, Any], index: int) -> None:
        for t, value in outputs.items():
            array = value if isinstance(value, np.ndarray) else value.numpy()
            self._acc[t].update(array, batch_index=index, scratch=self._scratch)

    def submit(self, outputs: Mapping[str, Any], index: int) -> None:
        if self._pool is None:
            self._reduce(outputs, index)
            return
        self.wait()
        self._pending = self._pool.submit(self._reduce, outputs, index)

    def wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        if self._pool is not None:
            if self._pending is not None:
                self._pending.cancel()
                self._pending = None
            self._pool.shutdown(wait=True)


class _StagedRunner:
    """The model's stages as ORT sessions (see :mod:`quant.calibrators.streaming`)."""

    def __init__(
        self,
        model: onnx.ModelProto,
        fetch: Sequence[str],
        *,
        batch_size: int,
        threads: int | None,
        name: str,
        max_bytes: int | None = None,
    ) -> None:
        from quant.backends.onnxruntime import OrtRunner
        from quant.calibrators.streaming import DEFAULT_STAGE_BYTES, plan_stages, stage_model

        budget = DEFAULT_STAGE_BYTES if max_bytes is None else max_bytes
        self._stages = plan_stages(model, fetch, batch_size=batch_size, max_bytes=budget) if fetch else []
        self._runners: list[OrtRunner] = []
        try:
            for i, stage in enumerate(self._stages):
                label = name if len(self._stages) == 1 else f"{name} (stage {i + 1} of {len(self._stages)})"
                self._runners.append(
                    OrtRunner(
                        stage_model(model, stage),
                        threads=threads,
                        name=label,
                        memory_arena=_ARENA,
                        session_config=_SESSION_CONFIG,
                        optimization=_OPTIMIZATION,
                    )
                )
        except BaseException:
            self.close()
            raise

    def run(self, feed: Mapping[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        """Run every stage on one batch; yields each stage's fetched tensors (name -> OrtValue)."""
        values: dict[str, Any] = dict(feed)
        for stage, runner in zip(self._stages, self._runners, strict=True):
            out = runner.infer_values({t: values[t] for t in stage.inputs}, stage.outputs)
            yield {t: out[t] for t in stage.reduce}
            values.update(out)
            del out
            for t in stage.release:
                values.pop(t, None)

    def close(self) -> None:
        for r in self._runners:
            r.close()
        self._runners.clear()

    def __enter__(self) -> _StagedRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def calibrate(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    config: CalibConfig,
    *,
    model_fingerprint: Mapping[str, str] | str,
    data_fingerprint: str | None = None,
    scope: str = "all",
    batch_size: int = 8,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> tuple[CalibrationResult, StatsCollector]:
    """Collect statistics of ``tensors`` and compute their ranges with ``config``.

    Returns the result (ranges, "no range" tensors, provenance) and the collector, whose
    statistics can be merged with other shards or used with another method later.
    ``data_fingerprint`` defaults to ``dataset.fingerprint()``; ``scope`` ("all" | "qdq") records
    which tensors were calibrated.
    """
    if scope not in TENSOR_SCOPES:
        raise UsageError(f"--scope must be one of {', '.join(TENSOR_SCOPES)} (got {scope!r})")
    collector, num_samples = collect_statistics(
        model,
        dataset,
        tensors,
        batch_size=batch_size,
        num_bins=config.num_bins,
        progress=progress,
        threads=threads,
        model_name=model_name,
    )
    ranges = compute_amax(collector.stats(), config)
    result = CalibrationResult.from_ranges(
        ranges,
        method=config.method,
        params=config.params(),
        num_samples=num_samples,
        model_fingerprint=model_fingerprint,
        data_fingerprint=data_fingerprint if data_fingerprint is not None else dataset.fingerprint(),
        tensors_scope=scope,
    )
    logger.info(
        "calibrated %d tensors with %s (%d without a range)",
        len(result.amax),
        config.method,
        len(result.no_range),
    )
    return result, collector
