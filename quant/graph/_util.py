"""Small graph helpers shared by the quant.graph modules (no file access, no runtimes)."""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator

import onnx
from onnx import shape_inference

log = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("", "ai.onnx")

#: Ops whose result differs from run to run; never constant-folded.
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A deep copy, so that rewrites never touch the caller's model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def iter_subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs held in a node's attributes (If/Loop/Scan bodies), not recursive."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph nested in it, depth first."""
    yield graph
    for node in graph.node:
        for sub in iter_subgraphs(node):
            yield from iter_graphs(sub)


def all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto that holds data: initializers and tensor attributes, subgraphs included."""
    for graph in iter_graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def subgraph_references(graph: onnx.GraphProto) -> set[str]:
    """Names read inside the subgraphs of ``graph``'s nodes (outer-scope references included)."""
    names: set[str] = set()
    for node in graph.node:
        for sub in iter_subgraphs(node):
            for g in iter_graphs(sub):
                for n in g.node:
                    names.update(i for i in n.input if i)
                names.update(o.name for o in g.output)
    return names


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes of ``graph`` (top level) that read it, in node order, once per node."""
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in dict.fromkeys(i for i in node.input if i):
            out[name].append(node)
    return out


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the top-level node that writes it."""
    return {o: node for node in graph.node for o in node.output if o}


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor, node and value name used anywhere in the model (for collision-free naming)."""
    return graph_names(model.graph)


def graph_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor, node and value name used in ``graph`` and its subgraphs."""
    names: set[str] = set()
    for g in iter_graphs(graph):
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in g.input)
        names.update(v.name for v in g.output)
        names.update(v.name for v in g.value_info)
        for node in g.node:
            names.update(node.input)
            names.update(node.output)
            if node.name:
                names.add(node.name)
    names.discard("")
    return names


class NameAllocator:
    """Hands out names that collide with nothing in the model nor with each other."""

    def __init__(self, taken: Iterable[str]) -> None:
        self._taken = set(taken)

    def __call__(self, base: str) -> str:
        name = base
        i = 1
        while name in self._taken:
            name = f"{base}_{i}"
            i += 1
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> None:
        self._taken.add(name)


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose value does not depend on the graph inputs.

    Initializers, outputs of Constant nodes, and (transitively) outputs of deterministic nodes
    whose inputs are all constant. Initializers also listed as graph inputs (old exporters) count
    as constants too: ONNX lets a caller override them, but for quantization they are weights, and
    quant never feeds them (see load.input_specs).
    """
    consts = {t.name for t in graph.initializer}
    for node in graph.node:
        if node.op_type in NONDETERMINISTIC_OPS or any(True for _ in iter_subgraphs(node)):
            continue
        ins = [i for i in node.input if i]
        if node.op_type == "Constant" or (ins and all(i in consts for i in ins)):
            consts.update(o for o in node.output if o)
    return consts


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its (dense) initializers, for the caller to add them back in
    another form: everything else of the main graph, opsets and local functions. Copying the
    graph without the weights costs milliseconds where copying a model of hundreds of MB does not."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, lg = model.graph, light.graph
    lg.name = g.name
    lg.node.extend(g.node)
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    lg.sparse_initializer.extend(g.sparse_initializer)
    return light


def inferred_value_info(model: onnx.ModelProto) -> onnx.GraphProto | None:
    """A graph holding the inferred value_info and outputs of ``model``, or None if inference fails.

    Inference runs on a light copy in which large floating-point initializers (weights, whose
    values never matter for shapes) are replaced by typed graph inputs, so it costs little even on
    models of hundreds of MB and works above protobuf's 2 GB limit. ``model`` is not modified.
    """
    light = without_initializers(model)
    g, lg = model.graph, light.graph
    input_names = {v.name for v in g.input}
    for t in g.initializer:
        big_float = t.data_type in _FLOAT_TYPES and _num_elements(t) > _LIGHT_MAX_ELEMENTS
        if big_float and t.name not in input_names:
            lg.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            lg.initializer.append(t)
    try:
        inferred = shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except (shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        log.warning("onnx shape inference failed (%s); value_info not refreshed", exc)
        return None
    return inferred.graph


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Refresh ``model``'s value_info with onnx shape inference (non-strict), in place; return it.

    If inference fails the model is returned as it was (a warning is logged).
    """
    inferred = inferred_value_info(model)
    if inferred is None:
        return model
    g = model.graph
    del g.value_info[:]
    g.value_info.extend(inferred.value_info)
    by_name = {v.name: v for v in inferred.output}
    for vi in g.output:  # fill in graph output types that the model left out
        if not vi.type.HasField("tensor_type") and vi.name in by_name:
            vi.CopyFrom(by_name[vi.name])
    return model


_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
)
_LIGHT_MAX_ELEMENTS = 1024


def _num_elements(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def tensor_elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type for every top-level tensor whose type is known or inferable.

    Runs shape inference on a light copy (the model is not modified).
    """
    g = model.graph
    inferred = inferred_value_info(model)
    infos = [*g.input, *g.output, *g.value_info]
    if inferred is not None:
        infos.extend(inferred.value_info)
        infos.extend(inferred.output)
    types: dict[str, int] = {}
    for vi in infos:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    for t in g.initializer:
        types[t.name] = t.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attr.t.data_type
    return types


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            return int(imp.version)
    return None


def get_attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of a node attribute, or ``default`` when absent."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    """Set (replace) a node attribute."""
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            break
    node.attribute.append(onnx.helper.make_attribute(name, value))


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``<op_type>_<index>`` for unnamed nodes."""
    return node.name or f"{node.op_type}_{index}"


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph``'s nodes topologically, in place, keeping the existing order where valid.

    Some rewriters (ONNX Runtime's float16 converter) append nodes at the end; onnx.checker and
    TensorRT's parser need producers before consumers. Outer-scope names read by subgraphs count as
    inputs of the node that holds the subgraph.
    """
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    available |= {t.name for t in graph.sparse_initializer}
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    needs: list[set[str]] = []
    for node in graph.node:
        req = {i for i in node.input if i}
        for sub in iter_subgraphs(node):
            for g in iter_graphs(sub):
                for n in g.node:
                    req.update(i for i in n.input if i in produced_by)
        needs.append({r for r in req if r in produced_by and r not in available})
    waiting: dict[str, list[int]] = defaultdict(list)
    missing = [len(req) for req in needs]
    for i, req in enumerate(needs):
        for r in req:
            waiting[r].append(i)
    ready = [i for i, m in enumerate(missing) if m == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for o in graph.node[i].output:
            for j in waiting.pop(o, []):
                missing[j] -= 1
                if missing[j] == 0:
                    heapq.heappush(ready, j)
    if len(order) != len(graph.node):
        log.warning("graph has a cycle or dangling inputs; node order left as it was")
        return
    nodes = [graph.node[i] for i in order]
    sorted_nodes = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(sorted_nodes, nodes, strict=True):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(sorted_nodes)
