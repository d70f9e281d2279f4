"""One "switchable" Q/DQ model in which every layer can be INT8 or float at run time.

Measuring per-layer sensitivity means running many precision configurations (each layer alone in
INT8, each layer alone in float, all, none). One Q/DQ model and one ONNX Runtime session per
configuration would spend minutes creating sessions on a ResNet-50-sized model, so this module
writes a single model that holds every configuration. Its one extra input, ``flags`` (boolean,
shape ``[num_layers]``, :attr:`SwitchableModel.flags_input`), says which layers run in INT8; each
quantized node ``n`` of layer ``k`` is replaced by ``If(flags[k])`` whose branches are

- *then*: ``QuantizeLinear -> DequantizeLinear`` on each of ``n``'s planned activations (the scale
  and zero point of :func:`quant.graph.qdq.insert_qdq`), ``DequantizeLinear`` of its INT8 weight
  (:func:`quant.graph.qdq.quantize_weight`), then ``n``;
- *else*: ``n`` unchanged (float inputs, float weight).

For any ``flags`` the model computes what ``insert_qdq(model, amax, exclude=<layers whose flag is
False>)`` computes: the same operations on the same values (a tensor shared by an INT8 and a float
consumer is read quantized by one and float by the other, as there). ONNX Runtime with graph
optimizations off gives bit-identical outputs (tested); with optimizations on, either model may
pick other kernels, so results agree to float rounding.

Why ``If`` and not ``Where(flag, dequantized, float)``: ``If`` runs one branch only, so float
layers cost no Q/DQ work; and ONNX Runtime 1.31's ``Where`` with a scalar condition took 816 of
1172 ms per ResNet-50 image (profiled), making every configuration 6x slower than FP32, while the
``If`` form runs at about the speed of the Q/DQ model.

A *layer* is one quantized node, identified by its node name, which is also what ``--exclude``
matches. Unnamed nodes cannot be excluded by name: :func:`name_unnamed_nodes` names them
``<op_type>_<index>`` (the label :mod:`quant.graph.inspect` shows) first.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ModelError, UsageError
from quant.graph._util import NameAllocator, all_names, copy_model, iter_graphs, node_label, tensor_elem_types
from quant.graph.qdq import NodePlan, QdqPlan, _ensure_opset, plan_qdq, weight_dequant

log = logging.getLogger(__name__)

__all__ = [
    "FLAGS_INPUT",
    "Layer",
    "Segment",
    "SwitchableModel",
    "build_switchable_model",
    "exclude_pattern",
    "name_unnamed_nodes",
    "plan_segments",
    "suffix_model",
]

#: Base name of the boolean flags input (made unique against the model's names).
FLAGS_INPUT = "quant_layer_flags"

_WILDCARDS = "*?["


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose unnamed main-graph nodes are named ``<op_type>_<index>``.

    The model itself is returned unchanged (no copy) when every node already has a name. Names
    that already exist are not reused (a ``_1`` suffix is added).
    """
    if all(n.name for n in model.graph.node):
        return model
    out = copy_model(model)
    names = NameAllocator(n.name for n in out.graph.node if n.name)
    for idx, node in enumerate(out.graph.node):
        if not node.name:
            node.name = names(node_label(node, idx))
    return out


def exclude_pattern(name: str) -> str:
    """The ``--exclude`` pattern that matches the node name ``name`` literally.

    Exclusions are fnmatch wildcards, so ``*``, ``?`` and ``[`` in a name are escaped as ``[*]``,
    ``[?]`` and ``[[]``; other names are returned as they are.
    """
    if not any(c in name for c in _WILDCARDS):
        return name
    return "".join(f"[{c}]" if c in _WILDCARDS else c for c in name)


@dataclass(frozen=True)
class Layer:
    """One quantized layer of a switchable model.

    ``index`` is the layer's position in ``flags`` (graph order); ``pattern`` is the ``--exclude``
    pattern that keeps exactly this layer in float, or None when no pattern can (an unnamed node,
    or a name that also matches other quantized nodes, e.g. a node named like an op type).
    """

    index: int
    name: str
    op_type: str
    pattern: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "op_type": self.op_type, "pattern": self.pattern}


@dataclass(frozen=True)
class SwitchableModel:
    """The switchable model, its layers (in flag order) and the name of its flags input."""

    model: onnx.ModelProto = field(repr=False, compare=False)
    layers: tuple[Layer, ...]
    flags_input: str
    base_exclude: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()  # per layer: the boolean scalar its If nodes read

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def flags(self, quantized: Iterable[int] = ()) -> np.ndarray:
        """The flags array with the layers at indices ``quantized`` in INT8 and all others float."""
        flags = np.zeros(len(self.layers), dtype=np.bool_)
        for i in quantized:
            if not 0 <= i < len(self.layers):
                raise UsageError(f"layer index {i} is out of range (the model has {len(self.layers)} layers)")
            flags[i] = True
        return flags

    def all_int8(self) -> np.ndarray:
        return np.ones(len(self.layers), dtype=np.bool_)

    def all_float(self) -> np.ndarray:
        return np.zeros(len(self.layers), dtype=np.bool_)

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise UsageError(f"no quantized layer named '{name}' (layers: {', '.join(self.names[:5])}, ...)")

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def exclude_for(self, flags: np.ndarray) -> tuple[str, ...]:
        """The ``exclude`` argument of ``insert_qdq`` that builds the configuration ``flags``.

        Raises UsageError when a float layer has no pattern (see :class:`Layer`).
        """
        patterns = list(self.base_exclude)
        for layer in self.layers:
            if flags[layer.index]:
                continue
            if layer.pattern is None:
                raise UsageError(
                    f"layer '{layer.name}' ({layer.op_type}) cannot be excluded by name (unnamed or ambiguous "
                    "node name); name the nodes uniquely in the model"
                )
            patterns.append(layer.pattern)
        return tuple(patterns)


def _layer_pattern(name: str, own: Sequence[NodePlan], all_nodes: Sequence[tuple[str, str]]) -> str | None:
    """Escaped name, if it selects exactly the nodes ``own`` among the quantized nodes."""
    if not name:
        return None
    pattern = exclude_pattern(name)
    hits = sum(
        1
        for node_name, op in all_nodes
        if fnmatch.fnmatchcase(node_name, pattern) or fnmatch.fnmatchcase(op, pattern)
    )
    return pattern if hits == len(own) else None


@dataclass(frozen=True)
class LayerPlan:
    """The layers of ``insert_qdq(model, amax, exclude=exclude)``: the model at a Q/DQ opset
    (``converted``, whose node indices the plan uses), the Q/DQ plan, the layers (plan nodes
    grouped by node name, in graph order) and each plan node's layer index."""

    converted: onnx.ModelProto = field(repr=False, compare=False)
    plan: QdqPlan = field(repr=False, compare=False)
    layers: tuple[Layer, ...]
    layer_of: Mapping[int, int]  # plan node's graph index -> layer index
    base_exclude: tuple[str, ...] = ()


def plan_layers(
    model: onnx.ModelProto, amax: Mapping[str, float | None], *, exclude: Iterable[str] = ()
) -> LayerPlan:
    """The layers the switchable model (and the first-order estimate) switch; see
    :func:`build_switchable_model`. ModelError when no layer can be quantized."""
    base_exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    converted = _ensure_opset(model)
    plan = plan_qdq(converted, amax, exclude=base_exclude)
    label = model.graph.name or "<unnamed>"
    if not plan.nodes:
        raise ModelError(
            f"model '{label}': no layer would be quantized with this cache and these exclusions "
            f"({len(plan.skipped)} tensors skipped); check that the cache belongs to the model"
        )
    g = converted.graph
    groups: dict[str, list[NodePlan]] = {}
    for np_ in plan.nodes:
        groups.setdefault(g.node[np_.index].name or np_.name, []).append(np_)
    planned = [(g.node[np_.index].name, np_.op_type) for np_ in plan.nodes]
    layers: list[Layer] = []
    layer_of: dict[int, int] = {}
    for k, (name, members) in enumerate(groups.items()):
        real_name = g.node[members[0].index].name
        layers.append(Layer(k, name, members[0].op_type, _layer_pattern(real_name, members, planned)))
        for np_ in members:
            layer_of[np_.index] = k
    ambiguous = [layer.name for layer in layers if layer.pattern is None]
    if ambiguous:
        log.warning(
            "%d quantized layers cannot be excluded by name (unnamed or ambiguous names; first: '%s')",
            len(ambiguous),
            ambiguous[0],
        )
    return LayerPlan(converted, plan, tuple(layers), layer_of, base_exclude)


def build_switchable_model(
    model: onnx.ModelProto, amax: Mapping[str, float | None], *, exclude: Iterable[str] = ()
) -> SwitchableModel:
    """The switchable form of ``insert_qdq(model, amax, target="tensorrt", exclude=exclude)``.

    ``model`` should be cleaned (:func:`quant.graph.cleanup.cleanup`) and its nodes named
    (:func:`name_unnamed_nodes`); ``exclude`` layers stay float in every configuration. Layers
    with the same node name share one flag. ModelError when no layer can be quantized.
    """
    lp = plan_layers(model, amax, exclude=exclude)
    plan, layers, layer_of, base_exclude = lp.plan, list(lp.layers), lp.layer_of, lp.base_exclude
    out = copy_model(lp.converted)
    g = out.graph
    names = NameAllocator(all_names(out))
    inits = {t.name: t for t in g.initializer}

    flags_input = names(FLAGS_INPUT)
    g.input.append(helper.make_tensor_value_info(flags_input, TensorProto.BOOL, [len(layers)]))
    types = tensor_elem_types(out)
    new_inits: list[TensorProto] = []
    prologue: list[onnx.NodeProto] = []

    # One boolean scalar per layer: Gather(flags, k).
    cond: list[str] = []
    for layer in layers:
        idx = names(f"{flags_input}_index_{layer.index}")
        new_inits.append(numpy_helper.from_array(np.array(layer.index, dtype=np.int64), idx))
        c = names(f"{flags_input}_{layer.index}")
        prologue.append(
            helper.make_node("Gather", [flags_input, idx], [c], name=names(f"{c}_Gather"), axis=0)
        )
        cond.append(c)

    # Each quantized node becomes If(flag): then = its Q/DQ form, else = the float node.
    for np_ in plan.nodes:
        node = g.node[np_.index]
        label = node.name or np_.name
        then_graph = _int8_branch(node, label, np_, plan, inits, names, types)
        else_graph = _float_branch(node, label, names, types)
        switch = helper.make_node(
            "If",
            [cond[layer_of[np_.index]]],
            list(node.output),
            name=names(f"{label}_switch"),
            then_branch=then_graph,
            else_branch=else_graph,
        )
        node.CopyFrom(switch)

    nodes = list(prologue) + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    log.info("switchable model: %d layers, %d quantized nodes", len(layers), len(plan.nodes))
    return SwitchableModel(
        model=out,
        layers=tuple(layers),
        flags_input=flags_input,
        base_exclude=base_exclude,
        conditions=tuple(cond),
    )


def _branch_output_info(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, None)


def _float_branch(
    node: onnx.NodeProto, label: str, names: NameAllocator, types: Mapping[str, int]
) -> onnx.GraphProto:
    """The node as it is, its outputs renamed (subgraph names must not shadow the outer graph's)."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = names(f"{label}_float")
    outs = []
    for i, o in enumerate(node.output):
        new = names(f"{o}_float")
        copy.output[i] = new
        outs.append(_branch_output_info(new, types.get(o, TensorProto.FLOAT)))
    return helper.make_graph([copy], names(f"{label}_float_branch"), [], outs)


def _int8_branch(
    node: onnx.NodeProto,
    label: str,
    np_: NodePlan,
    plan: QdqPlan,
    inits: Mapping[str, TensorProto],
    names: NameAllocator,
    types: Mapping[str, int],
) -> onnx.GraphProto:
    """Q -> DQ on the node's planned activations, DQ of its INT8 weight, then the node."""
    body: list[onnx.NodeProto] = []
    consts: list[TensorProto] = []
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = names(f"{label}_int8")
    done: dict[str, str] = {}
    for slot, t in np_.activation_slots:
        if t not in done:
            a = plan.activations[t]
            scale, zero = names(f"{t}_scale"), names(f"{t}_zero_point")
            q_out, dq_out = names(f"{t}_QuantizeLinear_Output"), names(f"{t}_DequantizeLinear_Output")
            consts.append(numpy_helper.from_array(np.array(np.float32(a / 127.0), dtype=np.float32), scale))
            consts.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zero))
            body.append(
                helper.make_node(
                    "QuantizeLinear", [t, scale, zero], [q_out], name=names(f"{t}_QuantizeLinear")
                )
            )
            body.append(
                helper.make_node(
                    "DequantizeLinear", [q_out, scale, zero], [dq_out], name=names(f"{t}_DequantizeLinear")
                )
            )
            done[t] = dq_out
        copy.input[slot] = done[t]
    if np_.weight_slot is not None:
        slot, wp = np_.weight_slot
        wd = weight_dequant(wp.tensor, numpy_helper.to_array(inits[wp.tensor]), wp.axis, names)
        consts.extend(wd.initializers)
        body.append(wd.node)
        copy.input[slot] = wd.output
    outs = []
    for i, o in enumerate(node.output):
        new = names(f"{o}_int8")
        copy.output[i] = new
        outs.append(_branch_output_info(new, types.get(o, TensorProto.FLOAT)))
    body.append(copy)
    return helper.make_graph(body, names(f"{label}_int8_branch"), [], outs, initializer=consts)


# --- segments: run a configuration from the last tensor before its first changed layer ---------


@dataclass(frozen=True)
class Segment:
    """A suffix of the switchable model that starts at a *cut* tensor.

    A cut is a tensor that is the only value flowing from the nodes before it to the nodes after
    it (a block output of a ResNet, say). A configuration that differs from FP32 (or from all
    INT8) only in layers after the cut computes, before the cut, exactly what FP32 (or all INT8)
    computes: the suffix model ``model`` (inputs: ``cut`` and the flags) fed with FP32's (or all
    INT8's) value of ``cut`` gives the configuration's outputs without running the prefix again.
    ``layers`` are the layers whose single-layer configurations start here.
    """

    cut: str
    start: int  # index in the switchable graph of the first node the suffix runs
    layers: tuple[int, ...]
    fraction: float = 1.0  # share of the (non-constant) nodes the suffix runs
    constant_nodes: tuple[int, ...] = ()  # nodes every suffix repeats (flag Gathers, Constants)
    rank: int = 0  # the cut's rank (0: unknown; suffix_model then infers it)


def _outer_reads(node: onnx.NodeProto, outer: set[str]) -> set[str]:
    """Outer-graph tensors a node reads, its subgraphs' references included."""
    reads = {i for i in node.input if i}
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for g in iter_graphs(sub):
                for n in g.node:
                    reads.update(i for i in n.input if i in outer)
                reads.update(o.name for o in g.output if o.name in outer)
    return reads


def _cut_candidates(sw: SwitchableModel) -> tuple[list[tuple[int, str]], set[int], int]:
    """(start index, tensor) of every cut, the indices of constant nodes, the number of other nodes.

    Constant nodes (all inputs initializers, the flags, or outputs of constant nodes: the flag
    Gathers, Constant nodes) are not positions: every suffix repeats them.
    """
    g = sw.model.graph
    free = {t.name for t in g.initializer} | {sw.flags_input}
    produced = {v.name for v in g.input} | {o for n in g.node for o in n.output if o}
    const_nodes: set[int] = set()
    reads: list[set[str]] = []
    for i, node in enumerate(g.node):
        r = _outer_reads(node, produced | free)
        reads.append(r)
        if r <= free:
            const_nodes.add(i)
            free.update(o for o in node.output if o)
    order = [i for i in range(len(g.node)) if i not in const_nodes]
    pos = {i: p for p, i in enumerate(order)}
    first: dict[str, int] = {v.name: -1 for v in g.input if v.name not in free}
    last: dict[str, int] = {}
    for i in order:
        for t in reads[i]:
            if t not in free:
                last[t] = pos[i]
        for o in g.node[i].output:
            if o:
                first[o] = pos[i]
    for v in g.output:
        last[v.name] = len(order)  # graph outputs stay live to the end
    # Sweep the gaps between positions p and p + 1, tracking the live tensors.
    starts: dict[int, list[str]] = {}
    ends: dict[int, list[str]] = {}
    for t, p in first.items():
        if t in last and last[t] > p:
            starts.setdefault(p, []).append(t)
            ends.setdefault(last[t], []).append(t)
    live: set[str] = set(starts.get(-1, []))
    cuts: list[tuple[int, str]] = []
    for p in range(len(order) - 1):
        live.difference_update(ends.get(p, []))
        live.update(starts.get(p, []))
        if len(live) == 1:
            (t,) = live
            cuts.append((order[p + 1], t))
    return cuts, const_nodes, len(order)


def _cut_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> rank: the exporter's value_info where it gives a rank above 0, else what ONNX
    shape inference (with that value_info dropped) gives, else absent."""
    declared: dict[str, int] = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        tt = v.type.tensor_type
        if v.type.HasField("tensor_type") and tt.HasField("shape") and len(tt.shape.dim) > 0:
            declared[v.name] = len(tt.shape.dim)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(probe).graph.value_info
    except Exception:  # noqa: BLE001 - inference is best effort here
        inferred = []
    for v in inferred:
        tt = v.type.tensor_type
        if v.name not in declared and tt.HasField("shape") and len(tt.shape.dim) > 0:
            declared[v.name] = len(tt.shape.dim)
    return declared


def suffix_model(sw: SwitchableModel, segment: Segment) -> onnx.ModelProto:
    """The segment's nodes from its start on (plus the constant ones), reading its cut as an input."""
    src = sw.model
    g = src.graph
    cut, start, const_nodes = segment.cut, segment.start, set(segment.constant_nodes)
    nodes = [n for i, n in enumerate(g.node) if i >= start or i in const_nodes]
    info = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    # The cut's element type, shape left open: exporters' value_info may carry a wrong shape (a
    # PaddleOCR export declares its recognizer's Concat output a scalar), and ONNX Runtime checks
    # feeds against declared shapes. No inferred type: float (cuts are float activations).
    elem = TensorProto.FLOAT
    if cut in info and info[cut].type.HasField("tensor_type"):
        elem = info[cut].type.tensor_type.elem_type or TensorProto.FLOAT
    rank = segment.rank or _cut_ranks(src).get(cut, 0)
    cut_info = helper.make_tensor_value_info(cut, elem, [f"{cut}_dim{i}" for i in range(rank)])
    flags = next(v for v in g.input if v.name == sw.flags_input)
    outer = (
        {o for n in nodes for o in n.output if o} | {cut, sw.flags_input} | {t.name for t in g.initializer}
    )
    used: set[str] = {v.name for v in g.output}
    for n in nodes:
        used |= _outer_reads(n, outer)
    graph = helper.make_graph(
        nodes,
        f"{g.name}_from_{cut}",
        [cut_info, flags],
        list(g.output),
        initializer=[t for t in g.initializer if t.name in used],
        value_info=[v for v in g.value_info if v.name != cut and v.name in outer],
    )
    model = helper.make_model(graph, opset_imports=list(src.opset_import))
    model.ir_version = src.ir_version
    return model


def plan_segments(sw: SwitchableModel, *, max_segments: int = 4) -> tuple[Segment, ...]:
    """Up to ``max_segments`` suffix models chosen to save the most work on single-layer configurations.

    Each layer's configurations start at the latest chosen cut before its first node (or at the
    graph inputs: layers not listed in any segment). Work is counted in nodes. No cut, or
    ``max_segments`` 0: no segment (every configuration runs the whole model).
    """
    if max_segments <= 0:
        return ()
    cuts, const_nodes, total = _cut_candidates(sw)
    # A cut becomes a suffix model's input, which needs its rank: drop the cuts whose rank neither
    # the model's value_info nor shape inference gives (some exports declare activations scalar).
    ranks = _cut_ranks(sw.model)
    cuts = [(i, t) for i, t in cuts if ranks.get(t, 0) > 0]
    if not cuts:
        return ()
    g = sw.model.graph
    cond_layer = {c: k for k, c in enumerate(sw.conditions)}
    layer_pos: dict[int, int] = {}
    for i, node in enumerate(g.node):
        k = cond_layer.get(node.input[0]) if node.op_type == "If" and node.input else None
        if k is not None and k not in layer_pos:
            layer_pos[k] = i
    index_of = {i: p for p, i in enumerate(i for i in range(len(g.node)) if i not in const_nodes)}

    def gain(chosen: list[int]) -> int:
        """Nodes saved over all layers when configurations start at the ``chosen`` cut indices."""
        saved = 0
        for pos in layer_pos.values():
            best = max((c for c in chosen if cuts[c][0] <= pos), key=lambda c: cuts[c][0], default=None)
            if best is not None:
                saved += index_of[cuts[best][0]]
        return saved

    chosen: list[int] = []
    for _ in range(max_segments):
        base = gain(chosen)
        best_c, best_gain = None, 0
        for c in range(len(cuts)):
            if c in chosen:
                continue
            extra = gain([*chosen, c]) - base
            if extra > best_gain:
                best_c, best_gain = c, extra
        if best_c is None:
            break
        chosen.append(best_c)
    chosen.sort(key=lambda c: cuts[c][0])
    segments: list[Segment] = []
    for c in chosen:
        start, cut = cuts[c]
        nxt = [cuts[d][0] for d in chosen if cuts[d][0] > start]
        end = min(nxt) if nxt else len(g.node)
        members = tuple(sorted(k for k, pos in layer_pos.items() if start <= pos < end))
        if not members:
            continue
        segments.append(
            Segment(
                cut=cut,
                start=start,
                layers=members,
                fraction=(total - index_of[start]) / total,
                constant_nodes=tuple(sorted(const_nodes)),
                rank=ranks[cut],
            )
        )
    log.info(
        "switchable model: %d segments (cuts: %s)",
        len(segments),
        ", ".join(s.cut for s in segments) or "none",
    )
    return tuple(segments)
