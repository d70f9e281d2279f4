"""Q/DQ placement in the form TensorRT explicit quantization expects.

Two steps, kept apart on purpose (as in ModelOpt): :func:`plan_qdq` decides *which* tensors and
weights are quantized (a :class:`QdqPlan`, pure data), and an inserter for a target writes the
QuantizeLinear / DequantizeLinear nodes. Only ``target="tensorrt"`` exists today; an ONNX Runtime
form (unsigned activations, fusable layout) can be added as another inserter over the same plan.

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
TARGETS = ("tensorrt",)

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
        w = numpy_helper.to_array(inits[wp.tensor])
        if not np.all(np.isfinite(w)):
            raise ModelError(
                f"weight '{wp.tensor}' has NaN or infinite values; fix the model before quantizing"
            )
        q, w_scale = quantize_weight(w, wp.axis)
        q_name = names(f"{wp.tensor}_quantized")
        s_name = names(f"{wp.tensor}_scale")
        z_name = names(f"{wp.tensor}_zero_point")
        dq_out = names(f"{wp.tensor}_DequantizeLinear_Output")
        new_inits.append(numpy_helper.from_array(q, q_name))
        new_inits.append(numpy_helper.from_array(w_scale, s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(w_scale.shape, dtype=np.int8), z_name))
        dq = helper.make_node(
            "DequantizeLinear",
            [q_name, s_name, z_name],
            [dq_out],
            name=names(f"{wp.tensor}_DequantizeLinear"),
        )
        if wp.axis is not None:
            dq.attribute.append(helper.make_attribute("axis", wp.axis))
        before.setdefault(np_.index, []).append(dq)
        weight_dq[wp] = dq_out

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

    # Float weights no longer read by anything go away.
    used: set[str] = {v.name for v in g.output}
    for graph in iter_graphs(g):
        for n in graph.node:
            used.update(n.input)
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
    return infer_shapes(out)


_INSERTERS = {"tensorrt": _insert_tensorrt}


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float | None],
    *,
    target: str = "tensorrt",
    exclude: Iterable[str] = (),
) -> QdqResult:
    """Return a Q/DQ copy of ``model`` for ``target`` using activation ranges ``amax`` (tensor -> amax).

    Run :func:`quant.graph.cleanup.cleanup` first: only initializer weights can be quantized.
    Tensors without a usable range (missing, None, 0, non-finite) stay float, and so do their
    consumers; :attr:`QdqResult.skipped` says why for each. Models below opset 13 are converted.
    """
    inserter = _INSERTERS.get(target)
    if inserter is None:
        raise UsageError(f"Q/DQ target '{target}' is unknown; choose one of: {', '.join(TARGETS)}")
    patterns = _check_exclude(exclude)
    converted = _ensure_opset(model)
    plan = plan_qdq(converted, amax, exclude=patterns)
    out = inserter(converted, plan)
    counts = f"{len(plan.activations)} activations, {len(plan.weights)} weights"
    log.info("insert_qdq(%s): %s quantized, %d tensors skipped", target, counts, len(plan.skipped))
    return QdqResult(
        model=out,
        quantized_tensors=tuple(plan.activations),
        quantized_weights=tuple(dict.fromkeys(w.tensor for w in plan.weights)),
        skipped=MappingProxyType(dict(plan.skipped)),
    )
