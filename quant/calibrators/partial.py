"""Re-run only the part of a Q/DQ model that a change of activation scales can affect.

``--method auto``'s per-tensor search (:func:`quant.calibrators.auto.search`) tries new ranges
for one run of consecutive tensors at a time, with every other tensor's range fixed. Every node
that does not depend, through the graph, on a scale that changes computes the same values for
every trial: only the nodes downstream of the changed scales need to run again. This module
plans that cut and runs it:

- a node's *dependence* is the set of scale inputs it reads directly or through its producers;
  nodes that read only initializers (the weights' DequantizeLinear, constant shape arithmetic)
  are *constant* and go into whichever part needs them, so a cut never carries weights;
- for a set of changing scales, the *clean* part (nodes that depend on none of them) is run
  once and the tensors the other part reads from it are kept (:class:`CutState`); each trial
  then runs the *dirty* part only, fed with those tensors and the scales;
- a cut state is computed from the nearest earlier state whose own scales still hold (the
  search moves down the graph, so that is the previous group's), by running just the nodes
  between the two cuts.

Correctness does not depend on the caller: a state is keyed by the value of every scale its
clean part reads, and is reused only when all of them are unchanged. The split models compute
what the whole model computes, node for node; ONNX Runtime may fuse differently across a cut,
so outputs agree with a whole-model run up to float rounding (tests/calibrators/test_partial.py).
Memory is bounded: at most :data:`MAX_STATES` states of at most :data:`MAX_STATE_BYTES` each;
a cut that would hold more runs the whole model instead.

Graph code is pure (ModelProto in, ModelProtos out); sessions are :class:`OrtRunner`s with
TensorRT's exact arithmetic, as every score of auto's is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.calibrators.streaming import Stage, _node_reads, _types, stage_model

if TYPE_CHECKING:
    import onnx

    from quant.backends.onnxruntime import OrtRunner

log = logging.getLogger(__name__)

#: Cut states kept at once (the search needs the current group's and the one it came from).
MAX_STATES = 2
#: A cut state that would hold more than this (all scoring batches together) is not kept: the
#: trial runs the whole model.
MAX_STATE_BYTES = 1 << 30
#: A cut is used only when the part that need not run again holds at least this share of the
#: model's non-constant nodes. A cut costs two ONNX Runtime sessions (the trial part and the segment
#: that brings the cut's tensors up to date), about 0.3 s each for ResNet-50 on 2 EPYC cores, as
#: much as a third of one evaluation there; the early groups of ResNet-50 (a sixth and a third of
#: the nodes clean) saved less than that and the later ones (a half and more) saved more
#: (docs/CALIBRATION.md, "Cost on ResNet-50"). A fixed share, not a timing, decides, so the same
#: run takes the same path on every machine.
MIN_CLEAN_SHARE = 0.4
#: At most this many scoring batches run at once (each on its own thread, with the CPUs shared
#: out as ORT intra-op threads); see :func:`scoring_layout`.
MAX_WORKERS = 4

Batches = Sequence[Mapping[str, np.ndarray]]


def scoring_layout(threads: int | None, batches: int) -> tuple[int, int]:
    """(workers, ORT intra-op threads per worker) for scoring ``batches`` batches on ``threads``
    CPUs (None: the CPUs this process may use).

    The Q/DQ model's QuantizeLinear, DequantizeLinear and layout reorders parallelise poorly inside
    one ORT run, so independent batches on single-threaded workers keep the cores busier: on 2 EPYC
    cores ResNet-50's Q/DQ model ran 4 batches of 8 in 1.60 s on two 1-thread workers against
    1.80-2.08 s on one 2-thread session, while the FP32 model ran as fast either way (1.34-1.41 s).
    Results do not depend on the layout: each batch is computed by the same kernels."""
    from quant.backends.onnxruntime import default_threads

    total = default_threads() if threads is None else max(1, int(threads))
    workers = max(1, min(total, batches, MAX_WORKERS))
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


@dataclass(frozen=True)
class Cut:
    """The split of the model for one set of changing scales (node indices in graph order)."""

    mask: int  # bit set of the changing scales (bit k: scale_names[k])
    clean: frozenset[int]  # non-constant nodes that none of the changing scales reach
    dirty: tuple[int, ...]  # the nodes a trial runs, constants they need included, graph order
    cut: tuple[str, ...]  # tensors the dirty part reads from the clean part or the feed
    carried: tuple[str, ...]  # graph outputs the clean part (or the feed) already holds
    key_scales: tuple[str, ...]  # scale inputs the clean part reads: the state's key


@dataclass
class CutState:
    """The tensors of ``cut.cut`` and ``cut.carried`` for every scoring batch, under ``key``."""

    cut: Cut
    key: tuple[tuple[float, ...], ...]
    values: list[dict[str, np.ndarray]]
    nbytes: int


class GraphCuts:
    """Dependence of every node of ``model`` on its scale inputs ``scale_names`` (pure graph code)."""

    def __init__(self, model: onnx.ModelProto, scale_names: Sequence[str]) -> None:
        g = model.graph
        self.model = model
        self.scale_names = tuple(scale_names)
        bit = {name: 1 << k for k, name in enumerate(self.scale_names)}
        constants = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
        self.graph_inputs = tuple(v.name for v in g.input if v.name not in bit and v.name not in constants)
        self.outputs = tuple(v.name for v in g.output)
        self.reads: list[list[str]] = [_node_reads(n) for n in g.node]
        self.producer: dict[str, int] = {}
        self.const: set[int] = set()
        self.dep: list[int] = []
        const_names = set(constants)
        dep_of: dict[str, int] = {}
        for i, node in enumerate(g.node):
            reads = self.reads[i]
            if all(r in const_names for r in reads):
                self.const.add(i)
                const_names.update(o for o in node.output if o)
                self.dep.append(0)
            else:
                d = 0
                for r in reads:
                    d |= bit.get(r, 0) | dep_of.get(r, 0)
                self.dep.append(d)
                for o in node.output:
                    if o:
                        dep_of[o] = d
            for o in node.output:
                if o:
                    self.producer[o] = i
        self.const_names = frozenset(const_names)
        self.bit = bit
        self.nonconst = len(g.node) - len(self.const)

    def mask(self, scales: Sequence[str]) -> int:
        m = 0
        for s in scales:
            m |= self.bit[s]
        return m

    def _with_constants(self, nodes: set[int]) -> tuple[int, ...]:
        """``nodes`` plus the constant nodes they need (transitively), in graph order."""
        out = set(nodes)
        stack = [r for i in nodes for r in self.reads[i]]
        while stack:
            name = stack.pop()
            p = self.producer.get(name)
            if p is not None and p in self.const and p not in out:
                out.add(p)
                stack.extend(self.reads[p])
        return tuple(sorted(out))

    def cut(self, mask: int) -> Cut:
        """The split for changing scales ``mask`` (see :class:`Cut`)."""
        clean = frozenset(i for i, d in enumerate(self.dep) if i not in self.const and not d & mask)
        dirty_core = {i for i, d in enumerate(self.dep) if i not in self.const and d & mask}
        dirty = self._with_constants(dirty_core)
        held = set(self.graph_inputs) | {o for i in clean for o in self.model.graph.node[i].output if o}
        cut = sorted({r for i in dirty_core for r in self.reads[i] if r in held})
        carried = [o for o in self.outputs if o in held]
        key = sorted({r for i in clean for r in self.reads[i] if r in self.bit})
        return Cut(mask, clean, dirty, tuple(cut), tuple(carried), tuple(key))

    def part_model(self, nodes: Sequence[int], inputs: Sequence[str], outputs: Sequence[str]) -> onnx.ModelProto:
        """A model of ``nodes`` (graph order) reading ``inputs`` and returning ``outputs``. Inputs
        keep their element type and rank, not their dimensions (a scoring batch may be smaller)."""
        model = stage_model(self.model, Stage(tuple(nodes), tuple(inputs), tuple(outputs), (), ()))
        for vi in model.graph.input:
            tt = vi.type.tensor_type
            if tt.HasField("shape"):
                for dim in tt.shape.dim:
                    dim.Clear()
        return model

    def has_types(self, names: Sequence[str]) -> bool:
        types = _types(self.model)
        return all(n in types for n in names)


def _key(names: Sequence[str], scales: Sequence[Mapping[str, np.ndarray]]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(s[n]) for s in scales) for n in names)


class PartialRunner:
    """Runs the scale-input Q/DQ model over fixed ``feeds`` (the scoring batches), re-running for
    each call only what the changing scales reach (see the module docstring).

    ``run(scales, vary=None)`` returns each batch's graph outputs; ``scales`` holds one dict of
    scale-input values per batch. With ``vary`` (scale-input names that may differ from the
    previous calls), unchanged parts are reused; without it, the whole model runs.
    ``node_runs`` accumulates the samples run, each weighted by the share of the model's
    non-constant nodes it ran (1 for a whole run), so the caller can state the work done as
    forward passes."""

    def __init__(
        self,
        model: onnx.ModelProto,
        scale_names: Sequence[str],
        feeds: Batches,
        full: OrtRunner,
        *,
        threads: int | None = None,
        mapper: BatchMap | None = None,
    ) -> None:
        from quant.graph._util import copy_model, infer_shapes

        self.feeds = feeds
        self.full = full
        self.threads = threads  # ORT intra-op threads of each part's session
        self.map = mapper or BatchMap(1)
        self.graph = GraphCuts(infer_shapes(copy_model(model)), scale_names)
        self.outputs = list(self.graph.outputs)
        self._cuts: dict[int, Cut | None] = {}
        self._sessions: dict[tuple[Any, ...], OrtRunner] = {}
        self._states: list[CutState] = []
        self._samples = sum(int(next(iter(f.values())).shape[0]) for f in feeds)
        self.node_runs = 0.0  # samples x share of the non-constant nodes run
        self.partial_runs = 0
        self.sessions_built = 0

    def close(self) -> None:
        for s in self._sessions.values():
            s.close()
        self._sessions.clear()
        self._states.clear()

    # -- planning --------------------------------------------------------------------------

    def _cut(self, mask: int) -> Cut | None:
        if mask not in self._cuts:
            c = self.graph.cut(mask)
            usable = (
                self.graph.nonconst > 0
                and len(c.clean) >= MIN_CLEAN_SHARE * self.graph.nonconst
                and self.graph.has_types([*c.cut, *c.carried])
            )
            self._cuts[mask] = c if usable else None
            if c is not None and not usable:
                log.debug("auto: no cut for %d changing scales (%d clean nodes)", bin(mask).count("1"), len(c.clean))
        return self._cuts[mask]

    def _session(self, key: tuple[Any, ...], nodes: Sequence[int], inputs: Sequence[str], outputs: Sequence[str]) -> OrtRunner:
        runner = self._sessions.get(key)
        if runner is None:
            from quant.backends.onnxruntime import OrtRunner

            model = self.graph.part_model(nodes, inputs, outputs)
            runner = OrtRunner(model, threads=self.threads, int8="exact", name="auto calibration scorer (part)")
            self._sessions[key] = runner
            self.sessions_built += 1
        return runner

    # -- running ---------------------------------------------------------------------------

    def run(self, scales: Sequence[Mapping[str, np.ndarray]], vary: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        cut = None if vary is None else self._cut(self.graph.mask(vary))
        state = None if cut is None else self._state(cut, scales)
        if cut is None or state is None:
            self.node_runs += self._samples
            return self.map(lambda fs: self.full.infer({**fs[0], **fs[1]}), zip(self.feeds, scales, strict=True))
        dirty_core = [i for i in cut.dirty if i not in self.graph.const]
        wanted = [o for o in self.outputs if o not in cut.carried]
        reads = {r for i in cut.dirty for r in self.graph.reads[i]}
        scale_in = [s for s in self.graph.scale_names if s in reads]
        runner = self._session(("trial", cut.mask), cut.dirty, [*cut.cut, *scale_in], wanted)
        def trial(vs: tuple[dict[str, np.ndarray], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
            values, sc = vs
            got = runner.infer({**{n: values[n] for n in cut.cut}, **{s: sc[s] for s in scale_in}})
            return {o: (values[o] if o in cut.carried else got[o]) for o in self.outputs}

        out = self.map(trial, zip(state.values, scales, strict=True))
        self.partial_runs += len(self.feeds)
        self.node_runs += self._samples * len(dirty_core) / self.graph.nonconst
        return out

    def _state(self, cut: Cut, scales: Sequence[Mapping[str, np.ndarray]]) -> CutState | None:
        key = _key(cut.key_scales, scales)
        for st in self._states:
            if st.cut.mask == cut.mask and st.key == key:
                return st
        # the nearest earlier state that still holds: its clean part inside this one's, its scales unchanged
        base: CutState | None = None
        for st in self._states:
            holds = st.cut.clean <= cut.clean and st.key == _key(st.cut.key_scales, scales)
            if holds and (base is None or len(st.cut.clean) > len(base.cut.clean)):
                base = st
        have = set(self.graph.graph_inputs) if base is None else set(base.cut.cut) | set(base.cut.carried)
        done: frozenset[int] = frozenset() if base is None else base.cut.clean
        todo = set(cut.clean - done)
        nodes = self.graph._with_constants(todo)
        need = [*cut.cut, *cut.carried]
        produced = {o for i in todo for o in self.graph.model.graph.node[i].output if o}
        outputs = [n for n in need if n in produced]
        reads = {r for i in nodes for r in self.graph.reads[i]}
        inputs = sorted(n for n in reads if n in have)
        scale_in = [s for s in self.graph.scale_names if s in reads]
        missing = [n for n in need if n not in produced and n not in have]
        if missing:  # cannot happen for a consistent graph; stay safe and run whole
            log.debug("auto: cut state lacks %s", missing[0])
            return None
        runner = self._session(("segment", None if base is None else base.cut.mask, cut.mask), nodes,
                               [*inputs, *scale_in], outputs) if outputs else None

        def segment(b: int) -> dict[str, np.ndarray]:
            src = self.feeds[b] if base is None else base.values[b]
            sc = scales[b]
            got = {} if runner is None else runner.infer({**{n: src[n] for n in inputs}, **{s: sc[s] for s in scale_in}})
            return {n: (got[n] if n in got else src[n]) for n in need}

        values: list[dict[str, np.ndarray]] = self.map(segment, range(len(self.feeds)))
        nbytes = sum(int(np.asarray(v).nbytes) for row in values for v in row.values())
        if nbytes > MAX_STATE_BYTES:
            log.debug("auto: cut state of %d bytes is over %d; running the whole model", nbytes, MAX_STATE_BYTES)
            self._cuts[cut.mask] = None
            return None
        self.node_runs += self._samples * len(todo) / max(1, self.graph.nonconst)
        state = CutState(cut, key, values, nbytes)
        self._states.append(state)
        if len(self._states) > MAX_STATES:
            self._states.pop(0)
        return state


__all__ = ["MAX_STATES", "MAX_STATE_BYTES", "BatchMap", "Cut", "CutState", "GraphCuts", "PartialRunner", "scoring_layout"]
