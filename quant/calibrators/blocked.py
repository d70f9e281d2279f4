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

__all__ = ["BlockedGraph", "blocked_graph"]

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


def blocked_graph(
    model: onnx.ModelProto, fetch: Sequence[str], *, batch_size: int, name: str
) -> BlockedGraph | None:
    """ORT's optimized graph of ``model`` with the calibrated tensors ``fetch`` taken from blocked
    tensors where ORT reorders them; None where that saves nothing or cannot be done (the caller
    then cuts ``model`` itself). ``fetch`` holds tensors made by nodes (not graph inputs)."""
    if not fetch or not _worth_trying(model):
        return None
    original = tensor_bytes(model, batch_size)
    data, weights = _optimization_input(model, fetch)
    with tempfile.TemporaryDirectory(prefix="quant-ort-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        try:
            from quant.backends.onnxruntime import save_optimized

            save_optimized(data, path, name=name, initializers=weights, external_weights=_WEIGHTS_FILE)
            del data, weights
            optimized = onnx.load(str(path), load_external_data=False)
            stored = _map_weights(optimized.graph, Path(tmp) / _WEIGHTS_FILE)
        except (ModelError, OSError, ValueError, DecodeError) as exc:
            logger.debug("calibration: no blocked graph for '%s' (%s)", name, exc)
            return None
    if not _topological(optimized.graph):
        logger.debug("calibration: ORT's optimized graph of '%s' is not in topological order", name)
        return None
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
