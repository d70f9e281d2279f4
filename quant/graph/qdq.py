"""Q/DQ placement in the form TensorRT explicit quantization expects.

Two steps, kept apart on purpose (as in ModelOpt): :func:`plan_qdq` decides *which* tensors and
weights are quantized (a :class:`QdqPlan`, pure data), and an inserter for a target writes the
QuantizeLinear / DequantizeLinear nodes: ``target="tensorrt"`` (below) and ``target="onnxruntime"``
(the CPU deployment form, see :func:`_insert_onnxruntime`), both over the same plan.

TensorRT form (see REFERENCE.md, "Explicit quantization rules"):

- Quantized ops: Conv, ConvTranspose, Gemm, MatMul, and residual adds: an ``Add`` (or a
  two-input ``Sum``, how old exporters wrote residual adds) whose two inputs are both activations.
- Activations: per-tensor symmetric INT8, ``QuantizeLinear(scale=amax/127, zero_point=int8 0) ->
  DequantizeLinear``, inserted once per tensor and shared by all its quantized consumers;
  consumers that stay float keep reading the float tensor (no reformat layers).
- Weights (the constant weight input of Conv / ConvTranspose / Gemm / MatMul): per-channel
  symmetric INT8 stored as an INT8 initializer followed by a DequantizeLinear; axis 0 for Conv and
  Gemm(transB=1), axis 1 for ConvTranspose and Gemm(transB=0), the last axis (the output column)
  for a constant MatMul B. Scale = max|w| per channel / 127, round half to even, clip to
  [-127, 127]. Biases stay float.
- A node is quantized as a whole or not at all: its weights are quantized only when all its
  activation inputs are quantized too. A DequantizeLinear on the weights of a node whose input stays
  float would make TensorRT run the layer in float anyway, after a useless dequantization.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ModelError, UsageError
from quant.graph._util import (
    NameAllocator,
    all_names,
    constant_names,
    copy_model,
    default_opset,
    get_attr,
    infer_shapes,
    iter_graphs,
    iter_subgraphs,
    node_label,
    tensor_elem_types,
)

log = logging.getLogger(__name__)

__all__ = [
    "INT8_CAPABLE_OPS",
    "QDQ_MIN_OPSET",
    "QUANTIZABLE_OPS",
    "RESIDUAL_OPS",
    "TARGETS",
    "NodePlan",
    "QdqPlan",
    "QdqResult",
    "WeightPlan",
    "calibration_tensors",
    "insert_qdq",
    "plan_qdq",
    "quantizable_inputs",
    "quantize_weight",
]

#: Ops with weights whose inputs get Q/DQ.
QUANTIZABLE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
#: Element-wise sums quantized when both inputs are activations (residual connections).
RESIDUAL_OPS = frozenset({"Add", "Sum"})
#: Ops that TensorRT runs in INT8 when their data inputs come from DequantizeLinear.
INT8_CAPABLE_OPS = QUANTIZABLE_OPS | RESIDUAL_OPS
#: Per-axis QuantizeLinear / DequantizeLinear appeared in opset 13.
QDQ_MIN_OPSET = 13
#: Known Q/DQ forms.
TARGETS = ("tensorrt", "onnxruntime")

_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE})

# Skip reasons (stable strings: reports and tests rely on them).
REASON_EXCLUDED = "excluded"
REASON_NO_RANGE = "no range in cache"
REASON_ZERO = "amax is 0"
REASON_BAD_AMAX = "amax is not a finite positive number"
REASON_TINY = "amax too small for a float32 scale"


@dataclass(frozen=True)
class WeightPlan:
    """A weight initializer to store as per-channel INT8 (``axis`` None: per-tensor)."""

    tensor: str
    axis: int | None


@dataclass(frozen=True)
class NodePlan:
    """A node to run in INT8: which of its input slots read a quantized activation / weight."""

    index: int  # position in graph.node of the model the plan was made for
    name: str
    op_type: str
    activation_slots: tuple[tuple[int, str], ...]
    weight_slot: tuple[int, WeightPlan] | None


@dataclass(frozen=True)
class QdqPlan:
    """Which tensors get Q/DQ, independent of the target form; made by :func:`plan_qdq`."""

    activations: Mapping[str, float]  # tensor -> amax, in graph order
    nodes: tuple[NodePlan, ...]
    skipped: Mapping[str, str]  # tensor -> why it stays float

    @property
    def weights(self) -> tuple[WeightPlan, ...]:
        seen: dict[WeightPlan, None] = {}
        for n in self.nodes:
            if n.weight_slot is not None:
                seen[n.weight_slot[1]] = None
        return tuple(seen)


@dataclass(frozen=True)
class QdqResult:
    """The Q/DQ model plus what was quantized and what was skipped (tensor -> reason)."""

    model: onnx.ModelProto = field(repr=False, compare=False)
    quantized_tensors: tuple[str, ...]
    quantized_weights: tuple[str, ...]
    skipped: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the model itself is not included: save it with save_model)."""
        return {
            "quantized_tensors": list(self.quantized_tensors),
            "quantized_weights": list(self.quantized_weights),
            "skipped": dict(self.skipped),
        }


# --- which nodes and tensors ---------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    index: int
    node: onnx.NodeProto
    activations: tuple[tuple[int, str], ...]  # (input slot, tensor)
    weight: tuple[int, str, int | None] | None  # (input slot, tensor, axis)


def _weight_axis(node: onnx.NodeProto, weight_rank: int | None) -> int | None:
    """Per-channel axis of a node's weight (output channels)."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        return 0 if get_attr(node, "transB", 0) else 1
    # MatMul: per output column, the last axis of B; a 1-D B has a single output: per-tensor.
    if weight_rank is None or weight_rank < 2:
        return None
    return weight_rank - 1


def _candidates(model: onnx.ModelProto) -> list[_Candidate]:
    """Nodes that the TensorRT rules quantize, with their activation inputs and weight."""
    g = model.graph
    consts = constant_names(g)
    init_rank = {t.name: len(t.dims) for t in g.initializer}
    out: list[_Candidate] = []
    for idx, node in enumerate(g.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in QUANTIZABLE_OPS:
            if len(node.input) < 2 or not node.input[0] or node.input[0] in consts:
                continue  # a constant data input: nothing to calibrate
            acts: list[tuple[int, str]] = [(0, node.input[0])]
            weight: tuple[int, str, int | None] | None = None
            w = node.input[1]
            if w in consts:
                weight = (1, w, _weight_axis(node, init_rank.get(w)))
            elif w:
                acts.append((1, w))  # activation x activation (attention MatMuls, dynamic weights)
            out.append(_Candidate(idx, node, tuple(acts), weight))
        elif node.op_type in RESIDUAL_OPS:
            ins = [i for i in node.input if i]
            if len(ins) == 2 and len(node.input) == 2 and not any(i in consts for i in ins):
                out.append(_Candidate(idx, node, ((0, ins[0]), (1, ins[1])), None))
    return out


def _matches(node: onnx.NodeProto, patterns: Sequence[str]) -> bool:
    """Exclusion: node name or op type equal to a pattern or matching it as an fnmatch wildcard."""
    return any(
        fnmatch.fnmatchcase(node.name, p) or fnmatch.fnmatchcase(node.op_type, p) for p in patterns if p
    )


def _check_exclude(exclude: Iterable[str]) -> tuple[str, ...]:
    if isinstance(exclude, str):
        return (exclude,)
    patterns = tuple(exclude)
    for p in patterns:
        if not isinstance(p, str):
            raise UsageError(f"exclude pattern {p!r} is not a string; give node names or op types")
    return patterns


def _warn_unmatched(model: onnx.ModelProto, patterns: Sequence[str]) -> None:
    for p in patterns:
        if not any(_matches(n, (p,)) for n in model.graph.node):
            log.warning("exclude pattern '%s' matches no node name or op type in the model", p)


def quantizable_inputs(model: onnx.ModelProto, *, exclude: Iterable[str] = ()) -> list[str]:
    """Activation tensors that get a per-tensor Q/DQ, in graph order (no duplicates).

    The non-constant inputs of Conv / ConvTranspose / Gemm / MatMul, and both inputs of residual
    adds, except for nodes matched by ``exclude`` (node names or op types, exact or fnmatch
    wildcards such as ``"/head/*"``).
    """
    patterns = _check_exclude(exclude)
    seen: dict[str, None] = {}
    for c in _candidates(model):
        if patterns and _matches(c.node, patterns):
            continue
        for _, t in c.activations:
            seen[t] = None
    return list(seen)


def calibration_tensors(model: onnx.ModelProto, scope: str = "all") -> list[str]:
    """Tensors whose ranges calibration must collect, in graph order.

    ``"all"``: every float32/float16 activation (graph inputs and node outputs, not constants),
    because TensorRT's implicit-quantization cache holds a range for every tensor. ``"qdq"``: only
    :func:`quantizable_inputs`. Tensors whose type cannot be inferred are left out (logged).
    """
    if scope == "qdq":
        return quantizable_inputs(model)
    if scope != "all":
        raise UsageError(f"calibration scope '{scope}' is unknown; choose 'all' or 'qdq'")
    g = model.graph
    consts = constant_names(g)
    types = tensor_elem_types(model)
    wanted = {TensorProto.FLOAT, TensorProto.FLOAT16}
    names: dict[str, None] = {}
    candidates = [v.name for v in g.input] + [o for n in g.node for o in n.output if o]
    unknown = 0
    for name in candidates:
        if name in consts or name in names:
            continue
        t = types.get(name)
        if t is None:
            unknown += 1
            continue
        if t in wanted:
            names[name] = None
    if unknown:
        log.info("calibration_tensors: %d tensors of unknown type left out", unknown)
    return list(names)


def _amax_problem(value: float | None) -> str | None:
    if value is None:
        return REASON_NO_RANGE
    try:
        v = float(value)
    except (TypeError, ValueError):
        return REASON_BAD_AMAX
    if v == 0.0:
        return REASON_ZERO
    if not math.isfinite(v) or v < 0:
        return REASON_BAD_AMAX
    if np.float32(v / 127.0) == 0.0:
        return REASON_TINY
    return None


def plan_qdq(
    model: onnx.ModelProto, amax: Mapping[str, float | None], *, exclude: Iterable[str] = ()
) -> QdqPlan:
    """Decide which nodes run in INT8 and which tensors get Q/DQ (see the module docstring)."""
    patterns = _check_exclude(exclude)
    if patterns:
        _warn_unmatched(model, patterns)
    g = model.graph
    types = tensor_elem_types(model)
    inits = {t.name: t for t in g.initializer}
    cands = _candidates(model)

    node_reason: dict[int, str] = {}
    for c in cands:
        label = node_label(c.node, c.index)
        reason: str | None = None
        if patterns and _matches(c.node, patterns):
            reason = REASON_EXCLUDED
        if reason is None and c.weight is not None:
            _, w, _ = c.weight
            if w not in inits:
                reason = f"weight '{w}' is computed by nodes, not an initializer; run cleanup first"
            elif inits[w].data_type != TensorProto.FLOAT:
                reason = (
                    f"weight '{w}' is {TensorProto.DataType.Name(inits[w].data_type).lower()}, "
                    "not float32; quantize the FP32 model"
                )
        if reason is None:
            for _, t in c.activations:
                ty = types.get(t)
                if ty is not None and ty != TensorProto.FLOAT:
                    reason = (
                        f"input '{t}' is {TensorProto.DataType.Name(ty).lower()}, not float32; "
                        "quantize the FP32 model"
                    )
                    break
                problem = _amax_problem(amax.get(t))
                if problem is not None:
                    reason = f"input '{t}': {problem}"
                    break
        if reason is not None:
            node_reason[c.index] = reason
            log.debug("node %s stays float: %s", label, reason)

    ok = [c for c in cands if c.index not in node_reason]
    quantized: dict[str, float] = {}
    for c in ok:
        for _, t in c.activations:
            quantized[t] = float(amax[t])  # type: ignore[arg-type]
    # Graph order of the quantized activations (inputs first, then by producer).
    order = [v.name for v in g.input] + [o for n in g.node for o in n.output]
    position = {name: i for i, name in enumerate(order)}
    activations = dict(sorted(quantized.items(), key=lambda kv: position.get(kv[0], -1)))

    nodes: list[NodePlan] = []
    weight_done: set[str] = set()
    for c in ok:
        wslot: tuple[int, WeightPlan] | None = None
        if c.weight is not None:
            slot, w, axis = c.weight
            wslot = (slot, WeightPlan(w, axis))
            weight_done.add(w)
        nodes.append(NodePlan(c.index, node_label(c.node, c.index), c.node.op_type, c.activations, wslot))

    skipped: dict[str, str] = {}
    by_tensor: dict[str, list[_Candidate]] = {}
    for c in cands:
        for _, t in c.activations:
            by_tensor.setdefault(t, []).append(c)
    for t, users in by_tensor.items():
        if t in activations:
            continue
        if all(node_reason.get(c.index) == REASON_EXCLUDED for c in users):
            skipped[t] = REASON_EXCLUDED
            continue
        own = _amax_problem(amax.get(t))
        if own is not None:
            skipped[t] = own
            continue
        c = next(c for c in users if node_reason.get(c.index) != REASON_EXCLUDED)
        skipped[t] = f"consumer '{node_label(c.node, c.index)}' stays float: {node_reason[c.index]}"
    for c in cands:
        if c.weight is None or c.weight[1] in weight_done or c.weight[1] in skipped:
            continue
        reason = node_reason[c.index]
        skipped[c.weight[1]] = (
            REASON_EXCLUDED
            if reason == REASON_EXCLUDED
            else f"node '{node_label(c.node, c.index)}' stays float: {reason}"
        )
    return QdqPlan(
        activations=MappingProxyType(activations),
        nodes=tuple(nodes),
        skipped=MappingProxyType(skipped),
    )


# --- the numbers -------------------------------------------------------------------------------


def quantize_weight(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 quantization of a weight; returns (int8 values, float32 scale).

    Per-channel along ``axis`` (scale shape ``(w.shape[axis],)``) or per-tensor when ``axis`` is
    None (scalar scale). scale = max|w| / 127 over the channel; an all-zero channel gets scale 1.0
    (any scale represents zeros exactly, and DequantizeLinear needs a positive scale). Values are
    w / scale rounded half to even and clipped to [-127, 127] (the symmetric range TensorRT uses;
    -128 is never produced).
    """
    w64 = np.asarray(w, dtype=np.float64)
    if axis is None:
        amax = np.asarray(np.max(np.abs(w64)) if w64.size else 0.0)
        bshape: list[int] = []
    else:
        axis = axis % w64.ndim
        reduce_axes = tuple(i for i in range(w64.ndim) if i != axis)
        amax = np.max(np.abs(w64), axis=reduce_axes) if reduce_axes else np.abs(w64)
        bshape = [-1 if i == axis else 1 for i in range(w64.ndim)]
    scale = np.asarray(amax / 127.0).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    divisor = scale.astype(np.float64).reshape(bshape) if bshape else scale.astype(np.float64)
    q = np.clip(np.rint(w64 / divisor), -127, 127).astype(np.int8)
    return q, scale


@dataclass(frozen=True)
class WeightDequant:
    """A weight as TensorRT wants it: INT8 per-channel initializers and the DequantizeLinear that
    turns them back into the float tensor its consumer reads (``output``)."""

    initializers: tuple[onnx.TensorProto, ...]
    node: onnx.NodeProto
    output: str
    scale: np.ndarray


WEIGHT_TYPES = ("int8", "uint8")


def weight_dequant(
    tensor: str, w: np.ndarray, axis: int | None, names: NameAllocator, *, weight_type: str = "int8"
) -> WeightDequant:
    """Quantize weight ``tensor`` (values ``w``) per channel along ``axis`` and build its DQ node.

    Shared by every form that quantizes weights (both Q/DQ targets, the switchable sensitivity
    model), so the INT8 weights are the same grid everywhere. ``weight_type="uint8"`` stores the
    same values shifted by 128 with zero point 128 (the ONNX Runtime form for x86 CPUs without
    VNNI, whose u8 x u8 kernels do not saturate; see quant/backends/cpu.py): identical
    dequantized weights."""
    if weight_type not in WEIGHT_TYPES:
        raise UsageError(f"weight type must be one of {', '.join(WEIGHT_TYPES)} (got {weight_type!r})")
    if not np.all(np.isfinite(w)):
        raise ModelError(f"weight '{tensor}' has NaN or infinite values; fix the model before quantizing")
    q, w_scale = quantize_weight(w, axis)
    if weight_type == "uint8":
        stored: np.ndarray = (q.astype(np.int16) + 128).astype(np.uint8)
        zero: np.ndarray = np.full(w_scale.shape, 128, dtype=np.uint8)
    else:
        stored, zero = q, np.zeros(w_scale.shape, dtype=np.int8)
    q_name = names(f"{tensor}_quantized")
    s_name = names(f"{tensor}_scale")
    z_name = names(f"{tensor}_zero_point")
    dq_out = names(f"{tensor}_DequantizeLinear_Output")
    dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=names(f"{tensor}_DequantizeLinear"))
    if axis is not None:
        dq.attribute.append(helper.make_attribute("axis", axis))
    inits = (
        numpy_helper.from_array(stored, q_name),
        numpy_helper.from_array(w_scale, s_name),
        numpy_helper.from_array(zero, z_name),
    )
    return WeightDequant(inits, dq, dq_out, w_scale)


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    """Remove initializers nothing reads any more (the float weights replaced by INT8 ones)."""
    used: set[str] = {v.name for v in g.output}
    for graph in iter_graphs(g):
        for n in graph.node:
            used.update(n.input)
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def _activation_scale(amax: float) -> np.ndarray:
    return np.array(np.float32(amax / 127.0), dtype=np.float32)


# --- insertion ---------------------------------------------------------------------------------


def _ensure_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model at opset >= 13 (per-axis Q/DQ), converted with onnx.version_converter if needed."""
    version = default_opset(model)
    label = model.graph.name or "<unnamed>"
    if version is None:
        raise ModelError(
            f"model '{label}': no opset import for the default ONNX domain; re-export with opset 13 or newer"
        )
    if version >= QDQ_MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, QDQ_MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError/ValidationError/IndexError...
        raise ModelError(
            f"model '{label}': opset {version} cannot be converted to opset {QDQ_MIN_OPSET} "
            f"(needed for per-channel Q/DQ): {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}; "
            f"re-export the model with opset {QDQ_MIN_OPSET} or newer"
        ) from exc
    converted.ir_version = max(converted.ir_version, 7)  # opset 13 needs IR version 7
    log.info("model converted from opset %d to %d for Q/DQ", version, QDQ_MIN_OPSET)
    return converted


def _insert_tensorrt(model: onnx.ModelProto, plan: QdqPlan) -> onnx.ModelProto:
    """Write the plan as TensorRT-style Q/DQ (signed symmetric INT8, per-channel weight DQ)."""
    out = copy_model(model)
    g = out.graph
    names = NameAllocator(all_names(out))
    inits = {t.name: t for t in g.initializer}
    new_inits: list[TensorProto] = []

    # Activations: Q -> DQ once per tensor, right after its producer.
    act_dq: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    for t, amax in plan.activations.items():
        scale = names(f"{t}_scale")
        zero = names(f"{t}_zero_point")
        q_out = names(f"{t}_QuantizeLinear_Output")
        dq_out = names(f"{t}_DequantizeLinear_Output")
        new_inits.append(numpy_helper.from_array(_activation_scale(amax), scale))
        new_inits.append(numpy_helper.from_array(np.array(0, dtype=np.int8), zero))
        after[t] = [
            helper.make_node("QuantizeLinear", [t, scale, zero], [q_out], name=names(f"{t}_QuantizeLinear")),
            helper.make_node(
                "DequantizeLinear", [q_out, scale, zero], [dq_out], name=names(f"{t}_DequantizeLinear")
            ),
        ]
        act_dq[t] = dq_out

    # Weights: INT8 initializer -> DQ, once per (weight, axis), placed before its first consumer.
    weight_dq: dict[WeightPlan, str] = {}
    before: dict[int, list[onnx.NodeProto]] = {}
    for np_ in plan.nodes:
        if np_.weight_slot is None:
            continue
        wp = np_.weight_slot[1]
        if wp in weight_dq:
            continue
        wd = weight_dequant(wp.tensor, numpy_helper.to_array(inits[wp.tensor]), wp.axis, names)
        new_inits.extend(wd.initializers)
        before.setdefault(np_.index, []).append(wd.node)
        weight_dq[wp] = wd.output

    # Rewire the quantized nodes.
    for np_ in plan.nodes:
        node = g.node[np_.index]
        for slot, t in np_.activation_slots:
            node.input[slot] = act_dq[t]
        if np_.weight_slot is not None:
            slot, wp = np_.weight_slot
            node.input[slot] = weight_dq[wp]

    # Rebuild the node list in topological order.
    nodes: list[onnx.NodeProto] = []
    for v in g.input:
        nodes.extend(after.pop(v.name, []))
    for idx, node in enumerate(g.node):
        nodes.extend(before.get(idx, []))
        nodes.append(node)
        for o in node.output:
            nodes.extend(after.pop(o, []))
    if after:  # pragma: no cover - the plan only lists graph inputs and node outputs
        raise ModelError(f"Q/DQ placement: tensors without producer: {sorted(after)}")
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)

    _drop_unused_initializers(g)
    return infer_shapes(out)


# --- the ONNX Runtime (CPU) form --------------------------------------------------------------

#: Ops whose QDQ group ONNX Runtime's CPU provider fuses into an integer kernel only when the
#: output is quantized too (DQ -> Conv -> Q becomes QLinearConv). Gemm and MatMul fuse without an
#: output Q (QGemm / MatMulIntegerToFloat give float outputs), so their outputs get no extra Q.
_ORT_NEEDS_OUTPUT_Q = frozenset({"Conv", "ConvTranspose"})
_ORT_BIAS_SLOT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}
_INT32_MAX = 2**31 - 1


def _insert_onnxruntime(
    model: onnx.ModelProto, plan: QdqPlan, amax: Mapping[str, float | None], weight_type: str = "int8"
) -> onnx.ModelProto:
    """Write the plan in the form ONNX Runtime's CPU provider fuses into integer kernels.

    The same nodes, activations and weights as the TensorRT form (the plan), laid out for ORT's
    QDQ fusions (QLinearConv, QGemm, QLinearMatMul / MatMulIntegerToFloat, QLinearAdd):

    - Activations are uint8 (the x86 fast path is u8 activations x s8 weights) with
      scale ``amax / 127``: zero point 128 has exactly TensorRT's symmetric grid (plus one code,
      -128, below it). A tensor made by a ReLU gets zero point 0 instead (its values are >= 0):
      the same grid over [0, amax], extended to 2 * amax instead of clipping at amax.
    - Q/DQ on outputs: ORT fuses ``DQ -> Conv -> Q`` only when the Conv's output is quantized and
      goes to that Q alone, so the output of every quantized Conv / ConvTranspose gets a Q (the
      range from the cache: calibrate with scope "all", the default) and *all* its consumers read
      the dequantized tensor, under the tensor's own name. A ReLU right after a quantized node is
      folded into that Q (zero point 0 clamps at 0 exactly as the ReLU does); so is a Clip(0, hi)
      (ReLU6), with scale ``hi / 255`` when TensorRT's grid would saturate beyond ``hi``. The outputs of
      quantized Gemm / MatMul / Add get a Q only when they (or their folded ReLU) are quantized
      activations of the plan anyway.
    - Weights: int8 per channel, zero point 0, exactly as in the TensorRT form; or, with
      ``weight_type="uint8"`` (x86 without VNNI), the same grid as uint8 with zero point 128. Biases of
      quantized Conv / ConvTranspose / Gemm become int32 with scale ``input scale x weight scale``
      (ORT's fusions require a dequantized int32 bias; the rounding error is below one part in
      ``2**31`` of the accumulator range).
    - Graph inputs and graph outputs keep float consumers float (a Q/DQ branch, as in the
      TensorRT form): a graph output is never replaced by its dequantized value.

    Numerically this differs from the TensorRT form only where a float consumer now reads a
    dequantized tensor, in ReLU outputs above amax (kept up to 2 * amax instead of clipped), in
    folded Clips that needed the ``hi / 255`` grid, and in the code -128; ``quant eval --precisions
    fp32,int8,int8-ort`` shows both side by side.
    """
    out = copy_model(model)
    g = out.graph
    names = NameAllocator(all_names(out))
    inits = {t.name: t for t in g.initializer}
    graph_outputs = {o.name for o in g.output}
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    for idx, node in enumerate(g.node):
        for o in node.output:
            if o:
                producer[o] = idx
        for i in dict.fromkeys(node.input):
            if i:
                consumers.setdefault(i, []).append(idx)
    for sub_ref in _subgraph_reads(g):
        consumers.setdefault(sub_ref, []).append(-1)  # read inside a subgraph: never fold past it
    planned = {np_.index: np_ for np_ in plan.nodes}
    new_inits: list[TensorProto] = []

    # -- which tensors get a Q/DQ, with which parameters, and how ------------------------------
    # "replace": the producer's output is renamed, Q -> DQ writes the tensor under its own name,
    # so every consumer reads the dequantized value (what ORT's fusion of the producer needs).
    # "branch": Q -> DQ next to the float tensor, read only by the planned consumers (TensorRT's
    # way; for graph inputs and outputs and for producers that are not fused anyway).
    q_amax: dict[str, float] = dict(plan.activations)
    replace: set[str] = set()
    fold_act: dict[str, int] = {}  # tensor (ReLU output) -> index of the folded ReLU node
    q_source: dict[str, str] = {}  # tensor -> the tensor that feeds its Q (the ReLU's input when folded)
    q_scale: dict[str, np.ndarray] = {}  # scales other than amax / 127 (folded Clips)

    def usable(t: str) -> float | None:
        """The range for a Q on ``t``: the plan's; else that of the quantized activation that ``t``
        flows into unchanged (e.g. a ReLU output through a MaxPool into the next Conv's input:
        quantizing before the pool with the pool output's range is what quantizing after it does,
        so no error is added that the TensorRT form does not have); else ``t``'s own range."""
        seen: set[str] = set()
        cur = t
        while cur not in plan.activations and cur not in seen:
            seen.add(cur)
            users = consumers.get(cur, [])
            if len(users) != 1 or users[0] < 0 or cur in graph_outputs:
                break
            nxt = g.node[users[0]]
            if (
                nxt.op_type not in _RANGE_KEEPING_OPS
                or nxt.domain not in ("", "ai.onnx")
                or nxt.input[0] != cur
            ):
                break
            cur = nxt.output[0]
        if cur in plan.activations:
            return plan.activations[cur]
        own = amax.get(t)
        return float(own) if own is not None and _amax_problem(own) is None else None

    nonneg = _non_negative_tensors(out)

    for idx, np_ in planned.items():
        node = g.node[idx]
        o = node.output[0]
        if not o or o in graph_outputs:
            continue
        users = consumers.get(o, [])
        act = g.node[users[0]] if len(users) == 1 and users[0] >= 0 else None
        if act is not None and act.domain in ("", "ai.onnx") and act.output[0] not in graph_outputs:
            t = act.output[0]
            act_amax = usable(t)
            fold_scale = None if act_amax is None else _folded_scale(act, act_amax, out)
            if act_amax is not None and fold_scale is not None:
                q_amax[t] = act_amax
                q_scale[t] = fold_scale
                fold_act[t] = users[0]
                q_source[t] = o
                continue
        if o in plan.activations or node.op_type in _ORT_NEEDS_OUTPUT_Q:
            out_amax = usable(o)
            if out_amax is not None:
                q_amax[o] = out_amax
                replace.add(o)
            else:
                log.debug(
                    "onnxruntime form: no range for output '%s' of node '%s'; ORT will not fuse it",
                    o,
                    np_.name,
                )

    params: dict[str, tuple[str, str]] = {}  # tensor -> (scale, zero point) initializer names
    x_scales = {t: q_scale.get(t, _activation_scale(a)) for t, a in q_amax.items()}
    for t in q_amax:
        scale = names(f"{t}_scale")
        zero = names(f"{t}_zero_point")
        new_inits.append(numpy_helper.from_array(x_scales[t], scale))
        new_inits.append(numpy_helper.from_array(np.array(0 if t in nonneg else 128, dtype=np.uint8), zero))
        params[t] = (scale, zero)

    # -- Q -> DQ nodes, placed right after what feeds them --------------------------------------
    after: dict[str, list[onnx.NodeProto]] = {}
    act_dq: dict[str, str] = {}  # branch tensors: tensor -> DQ output read by planned consumers
    removed: set[int] = set(fold_act.values())
    for t in q_amax:
        scale, zero = params[t]
        q_out = names(f"{t}_QuantizeLinear_Output")
        if t in fold_act:
            src = q_source[t]
            dq_out = t
        elif t in replace:
            src = names(f"{t}_float")
            node = g.node[producer[t]]
            node.output[list(node.output).index(t)] = src
            dq_out = t
        else:
            src = t
            dq_out = names(f"{t}_DequantizeLinear_Output")
            act_dq[t] = dq_out
        after.setdefault(src, []).extend(
            [
                helper.make_node(
                    "QuantizeLinear", [src, scale, zero], [q_out], name=names(f"{t}_QuantizeLinear")
                ),
                helper.make_node(
                    "DequantizeLinear", [q_out, scale, zero], [dq_out], name=names(f"{t}_DequantizeLinear")
                ),
            ]
        )

    # -- weights and biases -------------------------------------------------------------------
    weight_dq: dict[WeightPlan, tuple[str, np.ndarray]] = {}
    before: dict[int, list[onnx.NodeProto]] = {}
    for idx, np_ in planned.items():
        node = g.node[idx]
        if np_.weight_slot is None:
            continue
        slot, wp = np_.weight_slot
        if wp not in weight_dq:
            wd = weight_dequant(
                wp.tensor, numpy_helper.to_array(inits[wp.tensor]), wp.axis, names, weight_type=weight_type
            )
            new_inits.extend(wd.initializers)
            before.setdefault(idx, []).append(wd.node)
            weight_dq[wp] = (wd.output, wd.scale)
        dq_out, w_scale = weight_dq[wp]
        node.input[slot] = dq_out
        bias = _quantized_bias(
            node, np_, inits, w_scale, x_scales, names, new_inits, before.setdefault(idx, [])
        )
        if bias is not None:
            node.input[_ORT_BIAS_SLOT[node.op_type]] = bias

    # -- rewire the planned consumers of branch tensors, drop folded ReLUs, order the nodes ----
    for idx, np_ in planned.items():
        node = g.node[idx]
        for slot, t in np_.activation_slots:
            if t in act_dq:
                node.input[slot] = act_dq[t]
    nodes: list[onnx.NodeProto] = []
    for v in g.input:
        nodes.extend(after.pop(v.name, []))
    for idx, node in enumerate(g.node):
        if idx in removed:
            continue
        nodes.extend(before.get(idx, []))
        nodes.append(node)
        for o in node.output:
            nodes.extend(after.pop(o, []))
    if after:  # pragma: no cover - every Q source is a graph input or a node output
        raise ModelError(f"Q/DQ placement: tensors without producer: {sorted(after)}")
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    _drop_unused_initializers(g)
    del g.value_info[:]  # renamed producers: let shape inference describe the new tensors
    return infer_shapes(out)


def _clip_bounds(node: onnx.NodeProto, model: onnx.ModelProto) -> tuple[float, float] | None:
    """(min, max) of a Clip whose bounds are constants (attributes before opset 11, inputs after)."""
    lo: float = -math.inf
    hi: float = math.inf
    attrs = {a.name: a for a in node.attribute}
    if "min" in attrs or "max" in attrs:
        lo = float(get_attr(node, "min", -math.inf))  # type: ignore[arg-type]
        hi = float(get_attr(node, "max", math.inf))  # type: ignore[arg-type]
        return lo, hi
    inits = {t.name: t for t in model.graph.initializer}
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot]:
            t = inits.get(node.input[slot])
            if t is None:
                return None
            value = numpy_helper.to_array(t)
            if value.size != 1:
                return None
            if slot == 1:
                lo = float(value.reshape(-1)[0])
            else:
                hi = float(value.reshape(-1)[0])
    return lo, hi


#: Ops whose output holds values of their data input only (a subset or a rearrangement): a range
#: that fits the output fits the input, and a non-negative input gives a non-negative output.
_RANGE_KEEPING_OPS = frozenset(
    {"MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
)
#: Ops whose output is >= 0 when their inputs are (averages, concatenations).
_SIGN_KEEPING_OPS = _RANGE_KEEPING_OPS | {"AveragePool", "GlobalAveragePool", "Concat", "Relu"}


def _non_negative_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors >= 0 by construction: ReLU and Clip(0, ...) outputs, and what pools, reshapes and
    concatenations make of them only. They get zero point 0 (uint8 [0, 255])."""
    g = model.graph
    nonneg: set[str] = set()
    for node in g.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        if node.op_type == "Relu":
            nonneg.add(node.output[0])
        elif node.op_type == "Clip":
            bounds = _clip_bounds(node, model)
            if bounds is not None and bounds[0] >= 0.0:
                nonneg.add(node.output[0])
        elif node.op_type in _SIGN_KEEPING_OPS:
            data = [i for i in node.input if i] if node.op_type == "Concat" else node.input[:1]
            if data and all(i in nonneg for i in data):
                nonneg.add(node.output[0])
    return nonneg


def _folded_scale(node: onnx.NodeProto, amax: float, model: onnx.ModelProto) -> np.ndarray | None:
    """The scale of a uint8 Q (zero point 0) that does what activation ``node`` does, or None.

    ReLU: TensorRT's scale ``amax / 127`` (the Q clamps at 0 and has no upper clamp of its own).
    Clip(0, hi): TensorRT's scale when the Q's own saturation, ``255 * scale``, stays within ``hi``;
    otherwise ``hi / 255``, the grid over exactly [0, hi] (finer than TensorRT's, and clamping
    where the Clip does), so that the Clip can go and the Conv before it fuse. Other bounds: None.
    """
    if node.op_type == "Relu":
        return _activation_scale(amax)
    if node.op_type == "Clip":
        bounds = _clip_bounds(node, model)
        if bounds is None or bounds[0] != 0.0 or not 0.0 < bounds[1] < math.inf:
            return None
        scale = _activation_scale(amax)
        if 255.0 * float(scale) <= bounds[1]:
            return scale
        fitted = np.array(np.float32(bounds[1] / 255.0), dtype=np.float32)
        return fitted if 255.0 * float(fitted) <= bounds[1] * (1 + 1e-6) and fitted > 0 else None
    return None


def _subgraph_reads(g: onnx.GraphProto) -> set[str]:
    """Names read inside the subgraphs of ``g``'s nodes."""
    names: set[str] = set()
    for node in g.node:
        for sub in iter_subgraphs(node):
            for graph in iter_graphs(sub):
                for n in graph.node:
                    names.update(i for i in n.input if i)
    return names


def _quantized_bias(
    node: onnx.NodeProto,
    np_: NodePlan,
    inits: Mapping[str, TensorProto],
    w_scale: np.ndarray,
    x_scales: Mapping[str, np.ndarray],
    names: NameAllocator,
    new_inits: list[TensorProto],
    before: list[onnx.NodeProto],
) -> str | None:
    """An int32 bias (scale = input scale x weight scale, per output channel) behind a DQ, or None
    to leave the bias float (no bias, not an initializer, not 1-D, or beyond the int32 range)."""
    slot = _ORT_BIAS_SLOT.get(node.op_type)
    if slot is None or len(node.input) <= slot or not node.input[slot]:
        return None
    b_name = node.input[slot]
    if b_name not in inits or not np_.activation_slots:
        return None
    b = numpy_helper.to_array(inits[b_name]).astype(np.float64)
    x_t = np_.activation_slots[0][1]
    if x_t not in x_scales or b.ndim != 1:
        return None
    x_scale = float(x_scales[x_t])
    scale = (x_scale * w_scale.astype(np.float64)).reshape(-1)
    if scale.size not in (1, b.shape[0]):
        return None
    scale = np.broadcast_to(scale, b.shape).astype(np.float32)
    q = np.rint(b / scale.astype(np.float64))
    if not np.all(np.abs(q) <= _INT32_MAX):
        return None
    q_name = names(f"{b_name}_quantized")
    s_name = names(f"{b_name}_scale")
    z_name = names(f"{b_name}_zero_point")
    dq_out = names(f"{b_name}_DequantizeLinear_Output")
    new_inits.append(numpy_helper.from_array(q.astype(np.int32), q_name))
    new_inits.append(numpy_helper.from_array(scale, s_name))
    new_inits.append(numpy_helper.from_array(np.zeros(scale.shape, dtype=np.int32), z_name))
    before.append(
        helper.make_node(
            "DequantizeLinear",
            [q_name, s_name, z_name],
            [dq_out],
            name=names(f"{b_name}_DequantizeLinear"),
            axis=0,
        )
    )
    return dq_out


_INSERTERS = {
    "tensorrt": lambda model, plan, amax, weight_type: _insert_tensorrt(model, plan),
    "onnxruntime": _insert_onnxruntime,
}


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float | None],
    *,
    target: str = "tensorrt",
    exclude: Iterable[str] = (),
    weight_type: str = "int8",
) -> QdqResult:
    """Return a Q/DQ copy of ``model`` for ``target`` using activation ranges ``amax`` (tensor -> amax).

    Run :func:`quant.graph.cleanup.cleanup` first: only initializer weights can be quantized.
    Tensors without a usable range (missing, None, 0, non-finite) stay float, and so do their
    consumers; :attr:`QdqResult.skipped` says why for each. Models below opset 13 are converted.
    ``weight_type`` ("int8" or "uint8", the onnxruntime target only: see
    :func:`quant.backends.cpu.weight_type_for`) is how the INT8 weights are stored.
    """
    inserter = _INSERTERS.get(target)
    if inserter is None:
        raise UsageError(f"Q/DQ target '{target}' is unknown; choose one of: {', '.join(TARGETS)}")
    if weight_type not in WEIGHT_TYPES or (target == "tensorrt" and weight_type != "int8"):
        raise UsageError(
            f"weight type {weight_type!r} is not valid for target '{target}' (TensorRT takes int8 weights only)"
        )
    patterns = _check_exclude(exclude)
    converted = _ensure_opset(model)
    plan = plan_qdq(converted, amax, exclude=patterns)
    out = inserter(converted, plan, amax, weight_type)
    counts = f"{len(plan.activations)} activations, {len(plan.weights)} weights"
    log.info("insert_qdq(%s): %s quantized, %d tensors skipped", target, counts, len(plan.skipped))
    return QdqResult(
        model=out,
        quantized_tensors=tuple(plan.activations),
        quantized_weights=tuple(dict.fromkeys(w.tensor for w in plan.weights)),
        skipped=MappingProxyType(dict(plan.skipped)),
    )
