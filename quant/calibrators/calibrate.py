"""Calibration over ONNX Runtime: run the data through the model once, reducing as it goes.

The model runs in consecutive stages (:mod:`quant.calibrators.streaming`), each an ORT session
whose outputs are the calibrated tensors it makes (plus what later stages read); all stages draw
on one shared ORT arena. Workers (one per CPU, at most ``_MAX_WORKERS``) each run whole batches
through every stage; each fetched tensor is reduced in place (a view of ORT's buffer) into the
worker's accumulator, and dropped; the workers' accumulators merge exactly at the end. Tensors that are a
ReLU or a reshaping of another calibrated tensor are not fetched: their statistics are derived
exactly. Memory therefore grows with tensors x bins plus one stage's activations, never with the
number of samples. One pass suffices: the power-of-two histograms grow exactly (see
:mod:`quant.calibrators.stats`), so no range pass is needed before the histogram pass.
docs/PERFORMANCE.md has the measurements behind each choice.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
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
    histogram_kernel,
)
from quant.errors import CalibrationError, DataError, ModelError, UsageError

if TYPE_CHECKING:
    import onnx

    from quant.backends.onnxruntime import OrtRunner
    from quant.calibrators.streaming import Stage
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
    got = collect_partitioned_statistics(
        model, dataset, tensors, None, batch_size=batch_size, num_bins=num_bins, progress=progress,
        threads=threads, model_name=model_name,
    )
    collector = got.collectors[0]
    assert collector is not None  # seen > 0, or the call raised
    return collector, got.seen


@dataclass(frozen=True)
class PartitionedStats:
    """What :func:`collect_partitioned_statistics` returns: per part, the statistics of its samples
    (None for a part without samples), the samples seen in all, and the batches of the parts
    asked to be kept (part -> batches, in data order)."""

    collectors: list[StatsCollector | None]
    seen: int
    kept: dict[int, list[Any]]
    #: with ``keep_outputs``: part -> per kept batch (as in ``kept``), the model's FP32 outputs
    outputs: dict[int, list[dict[str, np.ndarray]]] = field(default_factory=dict)


@dataclass(frozen=True)
class _PartBatch:
    part: int
    batch: Any

    @property
    def size(self) -> int:
        return int(self.batch.size)


def collect_partitioned_statistics(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    parts: Sequence[Sequence[int] | np.ndarray] | None,
    *,
    keep: Sequence[int] = (),
    keep_outputs: bool = False,
    batch_size: int = 8,
    num_bins: int = DEFAULT_NUM_BINS,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> PartitionedStats:
    """:func:`collect_statistics` for disjoint parts of ``dataset`` at once: ``parts`` holds each
    part's sample positions (in the dataset's iteration order; None: one part, every sample).
    The data is read and the model's sessions built once; each part's statistics are its own
    samples' exactly (batches are regrouped by part, so no batch mixes two parts). The batches of
    the parts in ``keep`` are returned too (``--method auto`` scores on them), and with
    ``keep_outputs`` the model's outputs on those batches, computed by the same pass (auto's FP32
    reference). Errors as :func:`collect_statistics`; "no samples" means none in any part."""
    from tqdm import tqdm

    from quant.backends.onnxruntime import check_feed
    from quant.datasets.base import partition_batches
    from quant.graph.load import input_specs

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer (got {batch_size!r})")
    display = model_name or model.graph.name or "<in-memory model>"
    names = _check_tensors(model, tensors, display)
    num_bins = check_num_bins(num_bins)
    plan = _plan(model, names)
    specs = input_specs(model)
    graph_inputs = {s.name for s in specs}
    workers, intra = _worker_layout(threads)
    nparts = 1 if parts is None else len(parts)
    part_of: np.ndarray | None = None
    if parts is not None:
        size = max((int(np.max(p)) + 1 for p in parts if len(p)), default=0)
        part_of = np.full(size, -1, dtype=np.int64)
        for k, positions in enumerate(parts):
            pos = np.asarray(positions, dtype=np.int64)
            if pos.size and (pos.min() < 0 or np.any(part_of[pos] != -1)):
                raise UsageError("calibration parts must hold distinct, non-negative sample positions")
            part_of[pos] = k

    def accumulators() -> dict[str, StatsAccumulator | SignedStatsAccumulator]:
        return {
            t: SignedStatsAccumulator(t, num_bins) if t in plan.signed else StatsAccumulator(t, num_bins)
            for t in plan.fetch
        }

    shares = [[accumulators() for _ in range(nparts)] for _ in range(workers)]
    keep_set = frozenset(keep)
    touched: set[int] = set()
    kept: dict[int, list[Any]] = {}
    from_graph = [t for t in plan.fetch if t not in graph_inputs]
    from_feed = [t for t in plan.fetch if t in graph_inputs]
    model_outputs = [o.name for o in model.graph.output] if keep_outputs and keep else []
    outputs: dict[int, dict[str, np.ndarray]] = {}  # id(kept batch) -> its outputs
    total = len(dataset) if part_of is None else int(np.count_nonzero(part_of >= 0))
    with (
        _StagedRunner(model, from_graph, batch_size=batch_size, threads=intra, name=display,
                      outputs=model_outputs) as runner,
        tqdm(
            total=total,
            unit="sample",
            desc="calibrating",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar,
    ):

        def reduce(share: Sequence[Mapping[str, Any]], item: _PartBatch, index: int, scratch: _Scratch) -> None:
            batch = item.batch
            acc = share[item.part]
            touched.add(item.part)
            check_feed(batch.feed, specs, model=display)
            for t in from_feed:
                acc[t].update(batch.feed[t], batch_index=index, scratch=scratch)
            got: dict[str, np.ndarray] | None = {} if model_outputs and item.part in keep_set else None
            for fetched in runner.run(batch.feed, outputs=got):
                for t, value in fetched.items():
                    acc[t].update(value.numpy(), batch_index=index, scratch=scratch)
            if got is not None:
                outputs[id(batch)] = got

        source = iter(dataset.batches(batch_size))

        def routed(keep: frozenset[int]) -> Iterator[_PartBatch]:
            assert part_of is not None
            for k, b in partition_batches(source, part_of, nparts, batch_size):
                if k in keep:  # in data order: the workers take batches under a lock
                    kept.setdefault(k, []).append(b)
                yield _PartBatch(k, b)

        items: Iterator[_PartBatch] = (
            (_PartBatch(0, b) for b in source) if part_of is None else routed(keep_set))
        try:
            seen = _run_workers(items, shares, reduce, bar)  # type: ignore[arg-type]
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # let the loader stop its decoding threads now
                close()
        layout = runner.layout
    if seen == 0:
        raise DataError(
            f"dataset '{dataset.summary().source}' gave no samples; calibration needs at least one "
            "(check the data path, its contents and --max-samples)"
        )
    collectors: list[StatsCollector | None] = []
    for k in range(nparts):
        if k not in touched:
            collectors.append(None)
            continue
        accumulated = shares[0][k]
        for share in shares[1:]:  # exact: histograms over power-of-two ranges merge bit for bit
            for t, acc in share[k].items():
                accumulated[t].absorb(acc)  # type: ignore[arg-type]
        stats: dict[str, TensorStats] = {}
        for t in names:
            base, relu = plan.derived.get(t, (t, False))
            acc = accumulated[base]
            stats[t] = acc.relu_snapshot() if relu and isinstance(acc, SignedStatsAccumulator) else acc.snapshot()
        collectors.append(StatsCollector.from_stats(stats, num_bins))
    logger.info(
        "collected statistics of %d tensors (%d reduced, %d derived) over %d samples%s "
        "(%d workers x %d ORT threads, %s histogram kernel, layout %s)",
        len(names),
        len(plan.fetch),
        len(plan.derived),
        seen,
        "" if nparts == 1 else f" in {nparts} parts",
        workers,
        intra,
        histogram_kernel(),
        layout,
    )
    references: dict[int, list[dict[str, np.ndarray]]] = {}
    if model_outputs:
        for k, batches in kept.items():
            refs = [outputs.get(id(b)) for b in batches]
            if all(r is not None and all(o in r for o in model_outputs) for r in refs):
                references[k] = [r for r in refs if r is not None]
    return PartitionedStats(collectors, seen, kept, references)


# Run-time choices for the calibration sessions (module constants so the benchmark can compare).
_ARENA: bool | str = "shared"  # "shared": one ORT arena for all stage sessions; True: one each
_SESSION_CONFIG: dict[str, str] = {"session.intra_op.allow_spinning": "0"}
_OPTIMIZATION = "all"
#: Fetch ORT's blocked (NCHWc) tensors where it makes them (see quant/calibrators/blocked.py).
_BLOCKED = True
#: At most this many calibration workers; more CPUs go to ORT's intra-op threads of each.
_MAX_WORKERS = 4


def _worker_layout(threads: int | None) -> tuple[int, int]:
    """(workers, ORT intra-op threads per worker) for ``threads`` CPUs in all (None: the CPUs this
    process may use).

    Calibration runs whole batches on separate workers, each through every stage with its own
    ORT threads, and reduces on the same worker. On 2 CPUs, two single-threaded workers beat one
    worker with 2 ORT threads plus a reducer thread: each of ORT's parallel loops waits for its
    slowest thread, so a reducer that takes a core from ORT stalls the whole loop, while
    independent workers never wait for each other (ResNet-50 on 2 EPYC cores: 55 vs 67 ms per
    sample; docs/PERFORMANCE.md). Each worker holds one stage's activations, so memory grows with
    the worker count; hence the cap.
    """
    from quant.backends.onnxruntime import default_threads

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be a positive integer (got {threads!r})")
    total = default_threads() if threads is None else threads
    workers = max(1, min(total, _MAX_WORKERS))
    return workers, max(1, total // workers)


def _run_workers(
    batches: Iterator[Any],
    shares: Sequence[Mapping[str, Any]],
    reduce: Callable[[Mapping[str, Any], Any, int, _Scratch], None],
    bar: Any,
) -> int:
    """Run ``reduce(share, batch, index, scratch)`` over ``batches``, one worker per share; returns
    the number of samples.

    Workers take the next batch under a lock (the dataset's iterator is not thread-safe), so batch
    indices are the data order. The calling thread is worker 0 (one worker: no thread at all). On
    an error a worker stops taking batches, the others finish the batch they have, and the error of
    the lowest batch index is raised: the same one a single worker would have raised, whatever the
    timing. Ctrl-C reaches the calling thread and stops the others the same way.
    """
    import threading

    lock = threading.Lock()
    stop = threading.Event()
    errors: list[tuple[int, int, BaseException]] = []
    state = {"next": 0, "seen": 0}

    def take() -> tuple[int, Any] | None:
        with lock:
            if stop.is_set():
                return None
            index = state["next"]
            state["next"] = index + 1
            try:
                return index, next(batches)
            except StopIteration:
                return None
            except BaseException as exc:
                errors.append((index, 0, exc))
                stop.set()
                return None

    def work(k: int) -> None:
        scratch = _Scratch()
        index = -1
        try:
            while (item := take()) is not None:
                index, batch = item
                reduce(shares[k], batch, index, scratch)
                with lock:
                    state["seen"] += batch.size
                    bar.update(batch.size)
        except BaseException as exc:
            with lock:
                errors.append((index, k, exc))
                stop.set()

    threads = [
        threading.Thread(target=work, args=(k,), name=f"quant-calibrate-{k}", daemon=True)
        for k in range(1, len(shares))
    ]
    for t in threads:
        t.start()
    interrupted: BaseException | None = None
    work(0)  # records its own errors, Ctrl-C included
    stop.set()  # worker 0 is done: no batches left, or it failed; the others finish theirs
    for t in threads:
        while t.is_alive():  # never leave a worker inside a session that is about to close
            try:
                t.join()
            except KeyboardInterrupt as exc:
                interrupted = exc
    close = getattr(batches, "close", None)
    if close is not None:  # a generator stopped early: let the loader stop its decoding threads now
        close()
    if interrupted is not None:
        raise interrupted
    if errors:
        raise min(errors, key=lambda e: (e[0], e[1]))[2]
    return state["seen"]


class _StagedRunner:
    """The model's stages as ORT sessions (see :mod:`quant.calibrators.streaming`).

    Where ORT runs convolutions in its blocked layout, the stages are cut from ORT's optimized
    graph and the calibrated tensors are fetched in that layout (see
    :mod:`quant.calibrators.blocked`): the same values without a reorder copy each. ``layout``
    says which ("blocked (N of M tensors)" or "plain"); the statistics agree up to float rounding
    where ORT picks another kernel for an op (see :mod:`quant.calibrators.blocked`).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        fetch: Sequence[str],
        *,
        batch_size: int,
        threads: int | None,
        name: str,
        max_bytes: int | None = None,
        outputs: Sequence[str] = (),
    ) -> None:
        from quant.calibrators.blocked import blocked_graph
        from quant.calibrators.streaming import DEFAULT_STAGE_BYTES, plan_stages

        budget = DEFAULT_STAGE_BYTES if max_bytes is None else max_bytes
        self._stages: list[Stage] = []
        self._runners: list[OrtRunner] = []
        self._names: dict[str, tuple[str, ...]] = {}  # fetched tensor -> calibrated tensors it holds
        self._channels: Mapping[str, int] = {}
        # model outputs computed too (NCHW, as the model returns them), handed out on request only
        self._outputs = frozenset(outputs)
        calibrated = set(fetch)
        extra = [o for o in dict.fromkeys(outputs) if o not in calibrated]
        self.layout = "plain"
        blocked = blocked_graph(model, fetch, batch_size=batch_size, name=name) if _BLOCKED and fetch else None
        if blocked is not None:
            sources = list(dict.fromkeys(blocked.fetch.values()))
            # an output calibrated from its blocked twin is computed as itself too (NCHW)
            sources += [o for o in dict.fromkeys(outputs) if o not in sources]
            stages = plan_stages(
                blocked.model, sources, batch_size=batch_size, max_bytes=budget, sizes=blocked.sizes
            )
            # One stage where the original graph needs several: a type the cut needs is unknown.
            plain_stages = plan_stages(model, [*fetch, *extra], batch_size=batch_size, max_bytes=budget)
            if len(stages) > 1 or len(plain_stages) == 1:
                try:
                    # ORT optimized the graph already; the weights go to the sessions as arrays
                    self._open(blocked.model, stages, threads, name, "none", blocked.weights)
                except ModelError as exc:
                    logger.debug("calibration: ORT refused the blocked stages of '%s' (%s)", name, exc)
                    self.close()
                else:
                    for t, src in blocked.fetch.items():
                        self._names[src] = (*self._names.get(src, ()), t)
                    self._channels = blocked.channels
                    self.layout = f"blocked ({blocked.bypassed} of {len(fetch)} tensors)"
            del blocked
        if not self._runners and (fetch or extra):
            stages = plan_stages(model, [*fetch, *extra], batch_size=batch_size, max_bytes=budget)
            self._open(model, stages, threads, name, _OPTIMIZATION)
            self._names = {t: (t,) for t in fetch}
        from quant._memory import release_free_memory

        release_free_memory()  # what ORT freed after parsing the stage models (see quant/_memory.py)

    def _open(
        self,
        model: onnx.ModelProto,
        stages: list[Stage],
        threads: int | None,
        name: str,
        optimization: str,
        weights: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        from quant.backends.onnxruntime import OrtRunner
        from quant.calibrators.streaming import stage_model

        self._stages = stages
        try:
            for i, stage in enumerate(stages):
                label = name if len(stages) == 1 else f"{name} (stage {i + 1} of {len(stages)})"
                proto = stage_model(model, stage)
                used = {t.name: weights[t.name] for t in proto.graph.initializer if t.name in weights} if weights else None
                self._runners.append(
                    OrtRunner(
                        proto,
                        threads=threads,
                        name=label,
                        memory_arena=_ARENA,
                        session_config=_SESSION_CONFIG,
                        optimization=optimization,
                        initializers=used,
                    )
                )
        except BaseException:
            self.close()
            raise

    def run(self, feed: Mapping[str, np.ndarray], *, outputs: dict[str, np.ndarray] | None = None) -> Iterator[dict[str, Any]]:
        """Run every stage on one batch; yields each stage's fetched tensors (calibrated tensor
        name -> OrtValue). ``outputs``, where given, receives copies of the model outputs asked
        for at construction."""
        values: dict[str, Any] = dict(feed)
        for stage, runner in zip(self._stages, self._runners, strict=True):
            out = runner.infer_values({t: values[t] for t in stage.inputs}, stage.outputs)
            fetched: dict[str, Any] = {}
            for t in stage.reduce:
                if outputs is not None and t in self._outputs:
                    outputs[t] = np.array(out[t].numpy())  # a copy: ORT reuses its buffer
                if t not in self._names:  # an output that is not itself reduced
                    continue
                channels = self._channels.get(t)
                if channels is not None:
                    shape = out[t].shape()
                    if len(shape) < 2 or shape[1] != channels:  # padding channels would skew the statistics
                        raise CalibrationError(
                            f"ONNX Runtime's blocked tensor '{t}' has shape {shape}, not {channels} "
                            "channels; this is a bug in quant, please report it"
                        )
                for name in self._names[t]:
                    fetched[name] = out[t]
            yield fetched
            values.update(out)
            del out, fetched
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


def _resolve_fingerprint(fingerprint: str | Callable[[], str] | None, dataset: Dataset) -> str:
    if fingerprint is None:
        return dataset.fingerprint()
    return fingerprint if isinstance(fingerprint, str) else fingerprint()


def calibrate(
    model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str],
    config: CalibConfig,
    *,
    model_fingerprint: Mapping[str, str] | str,
    data_fingerprint: str | Callable[[], str] | None = None,
    scope: str = "all",
    batch_size: int = 8,
    progress: bool = False,
    threads: int | None = None,
    model_name: str | None = None,
) -> tuple[CalibrationResult, StatsCollector]:
    """Collect statistics of ``tensors`` and compute their ranges with ``config``.

    Returns the result (ranges, "no range" tensors, provenance) and the collector, whose
    statistics can be merged with other shards or used with another method later.
    ``data_fingerprint`` defaults to ``dataset.fingerprint()``; a callable is called once the
    statistics are collected (the caller may hash the data meanwhile); ``scope`` ("all" | "qdq") records
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
        data_fingerprint=_resolve_fingerprint(data_fingerprint, dataset),
        tensors_scope=scope,
    )
    logger.info(
        "calibrated %d tensors with %s (%d without a range)",
        len(result.amax),
        config.method,
        len(result.no_range),
    )
    return result, collector
