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
before: the statistics are the same either way, bit for bit.
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import helper

from quant.calibrators.streaming import tensor_bytes
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

    ``fetch``: calibrated tensor -> tensor of ``model`` holding its values (itself, or the blocked
    input of the ``ReorderOutput`` that made it). ``channels``: each blocked tensor fetched ->
    its channel count (its dimension 1 must equal it: no padding). ``sizes``: bytes per batch of
    each fetched tensor (the stage budget; the blocked tensors have no shape in the graph).
    """

    model: onnx.ModelProto
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


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """``model`` serialised with ``names`` added as graph outputs, without copying the proto:
    protobuf merges a message that is concatenated to another (repeated fields append), so the
    serialised model followed by a model holding just the extra outputs parses as one model
    with both. Raises ValueError for a model of 2 GiB or more."""
    g = model.graph
    present = {o.name for o in g.output}
    types = {vi.name: vi.type for vi in (*g.input, *g.value_info, *g.output)}
    extra = onnx.ModelProto()
    for name in names:
        if name in present:
            continue
        vi = extra.graph.output.add()
        vi.name = name
        if name in types:
            vi.type.CopyFrom(types[name])
    return model.SerializeToString() + extra.SerializeToString()


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
    try:
        data = _with_outputs(model, fetch)
    except ValueError:  # 2 GiB or more: protobuf cannot serialise it, nor can ORT save its graph
        return None
    with tempfile.TemporaryDirectory(prefix="quant-ort-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        try:
            from quant.backends.onnxruntime import save_optimized

            save_optimized(data, path, name=name)
            del data
            optimized = onnx.load(str(path))
        except (ModelError, OSError, ValueError, DecodeError) as exc:
            logger.debug("calibration: no blocked graph for '%s' (%s)", name, exc)
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
    original = tensor_bytes(model, batch_size)
    sizes = {source[t]: original[t] for t in fetch if t in original}
    return BlockedGraph(optimized, source, channels, sizes)
