"""Calibrate from ONNX Runtime's blocked (NCHWc) activations instead of NCHW copies of them.

On x86 CPUs ONNX Runtime runs convolutions in a blocked layout, NCHWc: the channels in blocks of
8 (AVX2) or 16 (AVX-512) as the innermost dimension. A tensor that is a graph output must leave in
the model's NCHW layout, so ORT adds a ``ReorderOutput`` node for each one: a full copy of the
activation. With every activation of ResNet-50 calibrated that is about a tenth of the staged
run's time (docs/PERFORMANCE.md). A histogram, a minimum and a maximum do not depend on the order
of the values, so calibration can reduce the blocked tensor itself: the same values in another
order, provided the channel count is a multiple of the block (no padding channels; checked again
on every fetched value at run time).

How: ORT optimizes the whole model once, with the calibrated tensors as graph outputs, and writes
its optimized graph (:func:`quant.backends.onnxruntime.save_optimized`). In that graph each
calibrated tensor made by a ``ReorderOutput`` is taken from the reorder's input instead; the
stages are cut from this graph (:mod:`quant.calibrators.streaming`) and run with ORT's optimizations
off, since they are done. Stage boundaries then pass blocked tensors too, with no reorder at all.

The optimized graph lacks the types of the blocked tensors (ORT writes value_info only where it
knows shapes); they are filled in for ops that keep their input's element type. Whenever this
does not work out (no Conv, not x86, ORT refusing the model, a needed type unknown, a model too
big to serialise), :func:`blocked_graph` returns None and calibration cuts the original graph as
before.

The statistics are those of the same computation either way, not always bit for bit: ORT
optimizes the whole graph here but each stage on its own in the plain path, and where that makes
it pick another kernel for an op, the values differ in float rounding. In ResNet-50 that is the
GlobalAveragePool, which runs on blocked input here (its output's amax differs in the 7th digit,
2 of 12,000 logits land in a neighbouring bin; every other tensor is identical bit for bit). No
path is the reference: the deployed model runs other kernels again (TensorRT's, or ORT's on the
whole INT8 graph).
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from quant.calibrators.streaming import _elem_size, tensor_bytes
from quant.errors import ModelError

logger = logging.getLogger(__name__)

__all__ = ["BlockedGraph", "BlockedQDQ", "blocked_graph", "blocked_qdq_model"]

NCHWC_DOMAIN = "com.microsoft.nchwc"

#: The largest NCHWc block of ORT's CPU kernels (MLAS: 8 floats with AVX2, 16 with AVX-512). A
#: channel count that is a multiple of it has no padding channels with either.
_BLOCK = 16

_X86 = frozenset({"x86_64", "amd64", "x86", "i386", "i686"})

# ONNX ops whose output has the element type of their first typed input (they appear between
# blocked convolutions in ORT's optimized graph, without value_info).
_SAME_TYPE_OPS = frozenset(
    {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "Add", "Sub", "Mul", "Div", "Sum", "Max", "Min"}
)


@dataclass(frozen=True)
class BlockedGraph:
    """ORT's optimized graph of a model, and where each calibrated tensor's values are in it.

    ``model`` holds the large weights as stubs with external data; ``weights`` has their values
    (read-only arrays over the file ORT wrote, mapped into memory): hand them to each stage's
    session as external initializers (ORT copies them in), which is 5x faster than serialising
    the weights into every stage model for ORT to parse again.
    ``fetch``: calibrated tensor -> tensor of ``model`` holding its values (itself, or the blocked
    input of the ``ReorderOutput`` that made it). ``channels``: each blocked tensor fetched ->
    its channel count (its dimension 1 must equal it: no padding). ``sizes``: bytes per batch of
    each fetched tensor (the stage budget; the blocked tensors have no shape in the graph).
    """

    model: onnx.ModelProto
    weights: Mapping[str, np.ndarray]
    fetch: Mapping[str, str]
    channels: Mapping[str, int]
    sizes: Mapping[str, int]

    @property
    def bypassed(self) -> int:
        """How many calibrated tensors come from a blocked tensor (reorders saved)."""
        return sum(1 for t, src in self.fetch.items() if src != t)


def _worth_trying(model: onnx.ModelProto) -> bool:
    """ORT uses NCHWc only on x86 and only for convolutions (and pooling next to them)."""
    if platform.machine().lower() not in _X86:
        return False
    return any(n.op_type == "Conv" and n.domain in ("", "ai.onnx") for n in model.graph.node)


# Weights handed to ORT's optimization pass as arrays rather than inside the serialised model: float
# and 8-bit tensors of at least this many bytes (small and integer tensors, e.g. Reshape's shape,
# stay in the graph, where ORT's shape inference can read them).
_EXTERNAL_MIN_BYTES = 1024
_EXTERNAL_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
)


def _optimization_input(model: onnx.ModelProto, names: Sequence[str]) -> tuple[bytes, dict[str, np.ndarray]]:
    """What ORT's optimization pass reads: ``model`` with ``names`` added as graph outputs,
    serialised without its large weights, and those weights as arrays (ORT's external
    initializers). Serialising a 100 MB model and ORT parsing it again cost 0.2-0.25 s for
    ResNet-50; this shell takes 0.02 s, and ORT copies the arrays straight into its graph."""
    from quant.graph._util import without_initializers

    src = model.graph
    shell = without_initializers(model)
    g = shell.graph
    present = {o.name for o in src.output}
    types = {vi.name: vi.type for vi in (*src.input, *src.value_info, *src.output)}
    for name in dict.fromkeys(names):
        if name in present:
            continue
        vi = g.output.add()
        vi.name = name
        if name in types:
            vi.type.CopyFrom(types[name])
    weights: dict[str, np.ndarray] = {}
    for t in src.initializer:
        size = int(np.prod(t.dims, dtype=np.int64)) * _elem_size(t.data_type) if t.dims else 0
        if t.data_type in _EXTERNAL_TYPES and t.HasField("raw_data") and size >= _EXTERNAL_MIN_BYTES:
            stub = g.initializer.add()  # name, type and shape; ORT replaces it with the array
            stub.name = t.name
            stub.data_type = t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            location = stub.external_data.add()
            location.key = "location"
            location.value = "quant-external-initializers"  # never read: ORT gets the arrays
            weights[t.name] = numpy_helper.to_array(t)
        else:
            g.initializer.append(t)
    return shell.SerializeToString(), weights


def _topological(graph: onnx.GraphProto) -> bool:
    """Whether every node reads only graph inputs, initializers and earlier nodes' outputs (names
    from outer scopes aside: ORT's optimized graph is checked before it is cut into stages)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if any(i not in known for i in node.input):
            return False
        known.update(node.output)
    return True


def _fill_types(model: onnx.ModelProto) -> None:
    """Add value_info (element type only) for the outputs of blocked ops and of type-keeping ops
    that have none, from their first typed input, in graph order."""
    g = model.graph
    elem: dict[str, int] = {t.name: t.data_type for t in g.initializer}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            elem[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        keeps = node.domain == NCHWC_DOMAIN or (node.domain in ("", "ai.onnx") and node.op_type in _SAME_TYPE_OPS)
        if not keeps:
            continue
        source = next((elem[i] for i in node.input if i in elem), None)
        if source is None:
            continue
        for o in node.output:
            if o and o not in elem:
                elem[o] = source
                g.value_info.append(helper.make_tensor_value_info(o, source, None))


_WEIGHTS_FILE = "weights.bin"


def _map_weights(graph: onnx.GraphProto, path: Path) -> dict[str, np.ndarray]:
    """The values of the graph's initializers that ORT wrote to ``path`` (external data), as
    read-only arrays over the file mapped into memory (read into memory where files cannot be
    deleted while mapped). ValueError if an entry does not fit the file."""
    import os

    if not path.exists():
        return {}
    data = np.memmap(path, dtype=np.uint8, mode="r") if os.name == "posix" else np.fromfile(path, dtype=np.uint8)
    arrays: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        count = int(np.prod(t.dims, dtype=np.int64))
        if info.get("location") != path.name or length != count * dtype.itemsize or offset + length > data.size:
            raise ValueError(f"initializer '{t.name}' does not fit ORT's weights file")
        arrays[t.name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(tuple(t.dims))
    return arrays


def _channels(node: onnx.NodeProto) -> int:
    for a in node.attribute:
        if a.name == "channels":
            return int(a.i)
    return 0


def _optimized(
    model: onnx.ModelProto,
    outputs: Sequence[str],
    *,
    name: str,
    purpose: str,
    session_config: Mapping[str, str] | None = None,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """ORT's optimized graph of ``model`` with ``outputs`` added as graph outputs (its large
    weights as stubs) and the weights' values over ORT's file; None (logged for ``purpose``)
    where ORT refuses, the file does not read back, or the graph is not in topological order."""
    from quant.backends.onnxruntime import save_optimized

    data, weights = _optimization_input(model, outputs)
    with tempfile.TemporaryDirectory(prefix="quant-ort-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        try:
            save_optimized(data, path, name=name, initializers=weights, external_weights=_WEIGHTS_FILE,
                           session_config=session_config)
            del data, weights
            optimized = onnx.load(str(path), load_external_data=False)
            stored = _map_weights(optimized.graph, Path(tmp) / _WEIGHTS_FILE)
        except (ModelError, OSError, ValueError, DecodeError) as exc:
            logger.debug("%s: no blocked graph for '%s' (%s)", purpose, name, exc)
            return None
    if not _topological(optimized.graph):
        logger.debug("%s: ORT's optimized graph of '%s' is not in topological order", purpose, name)
        return None
    return optimized, stored


def blocked_graph(
    model: onnx.ModelProto, fetch: Sequence[str], *, batch_size: int, name: str
) -> BlockedGraph | None:
    """ORT's optimized graph of ``model`` with the calibrated tensors ``fetch`` taken from blocked
    tensors where ORT reorders them; None where that saves nothing or cannot be done (the caller
    then cuts ``model`` itself). ``fetch`` holds tensors made by nodes (not graph inputs)."""
    if not fetch or not _worth_trying(model):
        return None
    original = tensor_bytes(model, batch_size)
    got = _optimized(model, fetch, name=name, purpose="calibration")
    if got is None:
        return None
    optimized, stored = got
    wanted = set(fetch)
    source = {t: t for t in fetch}
    channels: dict[str, int] = {}
    for node in optimized.graph.node:
        if node.domain != NCHWC_DOMAIN or node.op_type != "ReorderOutput" or not node.input:
            continue
        out = node.output[0] if node.output else ""
        ch = _channels(node)
        if out in wanted and ch > 0 and ch % _BLOCK == 0 and node.input[0]:
            source[out] = node.input[0]
            channels[node.input[0]] = ch
    if not channels:
        return None
    _fill_types(optimized)
    sizes = {source[t]: original[t] for t in fetch if t in original}
    return BlockedGraph(optimized, stored, source, channels, sizes)


# --------------------------------------------------------------------------------------------
# Q/DQ models (auto calibration's scorer): the reorders around elementwise Q/DQ removed
# --------------------------------------------------------------------------------------------
#
# A Q/DQ model run with exact arithmetic (QuantizeLinear and DequantizeLinear kept as nodes) has a
# QuantizeLinear -> DequantizeLinear pair on nearly every convolution's input. ORT's NCHWc layout
# transformation does not know these ops, so it wraps each pair in a ReorderOutput (blocked ->
# NCHW) and a ReorderInput (NCHW -> blocked), and leaves the residual Add and the Relu after it in
# NCHW too: on ResNet-50, 49 reorders out and 48 in, about a tenth of a scoring run.
#
# With a per-tensor scale (a scalar, as for every activation) QuantizeLinear and
# DequantizeLinear are elementwise, and so are the activations (Relu, Clip, HardSigmoid...) and an
# Add, Sub, Mul or Div of two tensors of one shape or of a tensor and a single value: they compute
# the same values in any order of the elements, so they can run on the blocked tensors.
# ``_bypass_reorders`` replaces each such node whose data inputs all have a blocked twin (the
# input of the ReorderOutput that made them, or a twin node's output) by its twin on the blocked
# tensors and a ReorderOutput of the twin's result, lets every ReorderInput of a tensor with a
# twin read the twin, and drops what is no longer read (most of those ReorderOutputs: what reads
# NCHW is mostly the head of the network and the graph outputs). Nothing else changes: the
# convolutions, their weights and every other node are ORT's own optimized graph, so the outputs
# are the same bits (tested, and on the five real models of docs/CALIBRATION.md). Only tensors
# of a channel count that is a multiple of the largest block are taken (no padding channels,
# whose values an activation fused into a convolution would make non-zero). On ResNet-50 100 of
# ORT's 101 reorders go; a scoring run of a batch of 8 took 0.73 -> 0.67 s of CPU on the EPYC.

#: Elementwise ops of one data input (the first) whose other inputs, where given, must be single
#: values (a per-tensor scale and zero point, Clip's bounds).
_UNARY = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf"}
)
#: Elementwise ops of two inputs: two tensors of one shape, or a tensor and a single value.
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


@dataclass(frozen=True)
class BlockedQDQ:
    """ORT's optimized graph of a Q/DQ model with the reorders around its elementwise nodes
    removed (see above). ``model`` holds the large weights as stubs with external data and
    ``weights`` their values, as :class:`BlockedGraph`; run it with ORT's optimizations off.
    ``removed``: reorder nodes removed; ``reorders``: reorder nodes ORT's graph had."""

    model: onnx.ModelProto
    weights: Mapping[str, np.ndarray]
    removed: int
    reorders: int


def _attr_int(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _static_shapes(graph: onnx.GraphProto) -> dict[str, tuple[object, ...]]:
    """Tensor -> its shape (dim values, or the dim_param of a symbolic first dimension), for the
    tensors whose every other dimension is known."""
    shapes: dict[str, tuple[object, ...]] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = list(vi.type.tensor_type.shape.dim)
        if not dims or not all(d.HasField("dim_value") for d in dims[1:]):
            continue
        first = dims[0].dim_value if dims[0].HasField("dim_value") else (dims[0].dim_param or None)
        if first is None:
            continue
        shapes[vi.name] = (first, *(d.dim_value for d in dims[1:]))
    return shapes


def _count_reorders(nodes: Sequence[onnx.NodeProto]) -> int:
    return sum(1 for n in nodes if n.domain == NCHWC_DOMAIN and n.op_type in ("ReorderInput", "ReorderOutput"))


def _bypass_reorders(graph: onnx.GraphProto, shapes: Mapping[str, tuple[object, ...]]) -> int:
    """Rewrite ``graph`` (ORT's optimized graph) in place as described above; return how many
    reorder nodes it no longer has."""
    scalars = {i.name for i in graph.input if i.type.tensor_type.HasField("shape") and not i.type.tensor_type.shape.dim}
    # single values (of rank <= 4: broadcast against the 4-D blocked tensors, they keep the shape)
    scalars |= {t.name for t in graph.initializer if int(np.prod(t.dims, dtype=np.int64)) == 1 and len(t.dims) <= 4}
    twin: dict[str, tuple[str, int]] = {}  # NCHW tensor -> (blocked tensor of the same values, channels)
    # tensor with a twin -> the reordered tensor it has the shape of (elementwise ops keep the shape
    # of their tensor input: what the static shapes of a model with dynamic sizes cannot say)
    root: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    for node in graph.node:
        nodes.append(node)
        if node.domain == NCHWC_DOMAIN and node.op_type == "ReorderOutput":
            ch = _attr_int(node, "channels")
            if node.input and node.input[0] and _attr_int(node, "channels_last") == 0 and ch > 0 and ch % _BLOCK == 0:
                twin[node.output[0]] = (node.input[0], ch)
                root[node.output[0]] = node.output[0]
            continue
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or not node.input:
            continue
        inputs = list(node.input)
        data = [i for i in inputs if i in twin]  # the inputs with a blocked twin
        if node.op_type in _UNARY:  # the data, then scale / zero point / bounds: one value each
            if inputs[0] not in twin or any(i and i not in scalars for i in inputs[1:]):
                continue
        elif node.op_type in _BINARY:
            if len(inputs) != 2 or not data or any(i not in twin and i not in scalars for i in inputs):
                continue
            if len(data) == 2 and not (
                root[data[0]] == root[data[1]] or (data[0] in shapes and shapes[data[0]] == shapes.get(data[1]))
            ):
                continue  # broadcasting would pair other elements in the blocked order
        else:
            continue
        if len({twin[i][1] for i in data}) != 1:
            continue
        name = f"{node.output[0]}__nchwc"
        while name in taken:
            name += "_"
        taken.add(name)
        channels = twin[data[0]][1]
        copy = helper.make_node(node.op_type, [twin[i][0] if i in twin else i for i in inputs], [name],
                                name=f"{node.name or node.output[0]}__nchwc", domain=node.domain)
        copy.attribute.extend(node.attribute)
        # the NCHW tensor, where something still reads it, is one reorder of the twin (the same
        # values), not a second chain of the same elementwise ops on NCHW copies
        plain = helper.make_node("ReorderOutput", [name], [node.output[0]], name=f"{name}__reorder",
                                 domain=NCHWC_DOMAIN, channels=channels)
        nodes[-1:] = [copy, plain]
        twin[node.output[0]] = (name, channels)
        roots = {root[i] for i in data}
        root[node.output[0]] = roots.pop() if len(roots) == 1 else node.output[0]
    renamed: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in nodes:
        if (node.domain == NCHWC_DOMAIN and node.op_type == "ReorderInput" and node.input
                and node.input[0] in twin and _attr_int(node, "channels_last") == 0):
            renamed[node.output[0]] = twin[node.input[0]][0]
            continue
        kept.append(node)
    for node in kept:
        for k, i in enumerate(node.input):
            if i in renamed:
                node.input[k] = renamed[i]
    needed = {o.name for o in graph.output}
    live: list[onnx.NodeProto] = []
    for node in reversed(kept):  # drop what nothing reads any more (the plain twins, the reorders)
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    removed = _count_reorders(graph.node) - _count_reorders(live)
    del graph.node[:]
    graph.node.extend(live)
    return removed


def blocked_qdq_model(model: onnx.ModelProto, *, name: str) -> BlockedQDQ | None:
    """``model`` (a Q/DQ model, exact arithmetic) as ORT optimizes it, with the reorders around its
    elementwise nodes removed; None where ORT does not reorder (no Conv, not x86), nothing could be
    removed, or the optimization fails (the caller then runs ``model`` as it is)."""
    from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

    if not _worth_trying(model):
        return None
    shapes = _static_shapes(model.graph)
    got = _optimized(model, [], name=name, purpose="auto calibration", session_config=EXACT_INT8_SESSION_CONFIG)
    if got is None:
        return None
    optimized, stored = got
    total = _count_reorders(optimized.graph.node)
    removed = _bypass_reorders(optimized.graph, shapes)
    if removed <= 0:
        return None
    return BlockedQDQ(optimized, stored, removed, total)
