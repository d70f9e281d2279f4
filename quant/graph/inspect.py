"""The per-layer precision view of a Q/DQ model: what TensorRT will run in INT8 and what not.

A compute node (anything but QuantizeLinear / DequantizeLinear / Constant) is ``"int8"`` when it
is an INT8-capable op (Conv, ConvTranspose, Gemm, MatMul, Add, Sum) and every one of its float data
inputs (Conv/ConvTranspose/Gemm/MatMul: input and weight, bias excluded; Add/Sum: all inputs)
comes from a DequantizeLinear; ``"float"`` otherwise.

Orphans are Q/DQ nodes that do not pair with an INT8 layer; TensorRT turns them into reformat
layers (extra memory traffic) or falls back to a higher precision:

- a DequantizeLinear with a consumer that does not run in INT8 (a non-INT8-capable op, a float
  INT8-capable op, or a graph output);
- a QuantizeLinear whose output does not go (only) to DequantizeLinear nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import onnx

from quant.errors import ReportError
from quant.graph._util import constant_names, consumers, node_label, producers
from quant.graph.qdq import INT8_CAPABLE_OPS, QUANTIZABLE_OPS

__all__ = ["LayerPrecision", "OrphanQdq", "PrecisionView", "precision_view", "render_precision_view"]

PRECISIONS = ("int8", "float")
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_NOT_COMPUTE = _QDQ_OPS | {"Constant"}


@dataclass(frozen=True)
class LayerPrecision:
    """One compute node and the precision it will run in."""

    name: str
    op_type: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "precision": self.precision}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerPrecision:
        try:
            precision = str(d["precision"])
            if precision not in PRECISIONS:
                raise ValueError(precision)
            return cls(name=str(d["name"]), op_type=str(d["op_type"]), precision=precision)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(
                f"precision view layer {dict(d)!r}: needs name, op_type and precision "
                f"({' or '.join(PRECISIONS)})"
            ) from exc


@dataclass(frozen=True)
class OrphanQdq:
    """A Q or DQ node that will not pair with an INT8 layer, and why."""

    name: str
    op_type: str
    tensor: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "tensor": self.tensor, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OrphanQdq:
        try:
            return cls(
                name=str(d["name"]),
                op_type=str(d["op_type"]),
                tensor=str(d["tensor"]),
                reason=str(d["reason"]),
            )
        except (KeyError, TypeError) as exc:
            raise ReportError(
                f"precision view orphan {dict(d)!r}: needs name, op_type, tensor and reason"
            ) from exc


@dataclass(frozen=True)
class PrecisionView:
    """Per-layer precisions of a model, counts per precision, and orphan Q/DQ nodes."""

    layers: tuple[LayerPrecision, ...]
    orphans: tuple[OrphanQdq, ...] = ()
    counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        counted = Counter(layer.precision for layer in self.layers)
        object.__setattr__(self, "counts", MappingProxyType({p: counted.get(p, 0) for p in PRECISIONS}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "counts": dict(self.counts),
            "orphans": [o.to_dict() for o in self.orphans],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrecisionView:
        """Rebuild from :meth:`to_dict` output (counts are recomputed from the layers)."""
        if not isinstance(d, Mapping) or not isinstance(d.get("layers"), list):
            raise ReportError("precision view: expected an object with a 'layers' list")
        orphans = d.get("orphans", [])
        if not isinstance(orphans, list):
            raise ReportError("precision view: 'orphans' must be a list")
        return cls(
            layers=tuple(LayerPrecision.from_dict(x) for x in d["layers"]),
            orphans=tuple(OrphanQdq.from_dict(x) for x in orphans),
        )


def _data_slots(node: onnx.NodeProto) -> list[int]:
    """Input positions holding float data that must be INT8 for the node to run in INT8."""
    if node.op_type in QUANTIZABLE_OPS:
        return [0, 1]  # input and weight (bias stays float in TensorRT's INT8 kernels)
    return [i for i, name in enumerate(node.input) if name]


def precision_view(model: onnx.ModelProto) -> PrecisionView:
    """The precision each compute node of ``model`` will run in, and the orphan Q/DQ nodes."""
    g = model.graph
    prod = producers(g)
    cons = consumers(g)
    consts = constant_names(g)
    graph_outputs = {v.name for v in g.output}

    def from_dq(name: str) -> bool:
        p = prod.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    layers: list[LayerPrecision] = []
    precision_of: dict[int, str] = {}
    for idx, node in enumerate(g.node):
        if node.op_type in _NOT_COMPUTE:
            continue
        precision = "float"
        if node.op_type in INT8_CAPABLE_OPS:
            slots = [i for i in _data_slots(node) if i < len(node.input) and node.input[i]]
            # A bias Add (one constant input) is fused into its producer by TensorRT: not INT8 on its own.
            if node.op_type in ("Add", "Sum") and any(node.input[i] in consts for i in slots):
                slots = []
            if slots and all(from_dq(node.input[i]) for i in slots):
                precision = "int8"
        precision_of[id(node)] = precision
        layers.append(LayerPrecision(node_label(node, idx), node.op_type, precision))

    index_of = {id(n): i for i, n in enumerate(g.node)}
    orphans: list[OrphanQdq] = []
    for idx, node in enumerate(g.node):
        if node.op_type not in _QDQ_OPS or not node.output:
            continue
        out = node.output[0]
        users = cons.get(out, [])
        label = node_label(node, idx)
        if node.op_type == "DequantizeLinear":
            float_users = [u for u in users if precision_of.get(id(u)) != "int8"]
            if out in graph_outputs:
                orphans.append(OrphanQdq(label, node.op_type, out, "feeds a graph output"))
            elif not users:
                orphans.append(OrphanQdq(label, node.op_type, out, "has no consumer"))
            elif float_users:
                who = ", ".join(f"'{node_label(u, index_of[id(u)])}' ({u.op_type})" for u in float_users[:3])
                orphans.append(OrphanQdq(label, node.op_type, out, f"consumers not running in INT8: {who}"))
        else:
            non_dq = [u for u in users if u.op_type != "DequantizeLinear"]
            if not users or out in graph_outputs:
                orphans.append(OrphanQdq(label, node.op_type, out, "not followed by a DequantizeLinear"))
            elif non_dq:
                who = ", ".join(f"'{node_label(u, index_of[id(u)])}' ({u.op_type})" for u in non_dq[:3])
                orphans.append(
                    OrphanQdq(label, node.op_type, out, f"not followed by a DequantizeLinear: feeds {who}")
                )
    return PrecisionView(layers=tuple(layers), orphans=tuple(orphans))


def render_precision_view(view: PrecisionView) -> str:
    """A plain-text table: one row per layer, then counts and the orphan Q/DQ nodes."""
    rows = [(layer.name, layer.op_type, layer.precision) for layer in view.layers]
    headers = ("layer", "op", "precision")
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def fmt(cells: tuple[str, str, str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [fmt(headers), fmt(tuple("-" * w for w in widths))]  # type: ignore[arg-type]
    lines.extend(fmt(r) for r in rows)
    total = len(view.layers)
    summary = ", ".join(f"{p} {view.counts.get(p, 0)}" for p in PRECISIONS)
    lines.append("")
    lines.append(f"{total} layers: {summary}")
    if view.orphans:
        lines.append(f"{len(view.orphans)} orphan Q/DQ nodes (TensorRT inserts reformat layers):")
        lines.extend(f"  {o.name} ({o.op_type}) on '{o.tensor}': {o.reason}" for o in view.orphans)
    else:
        lines.append("no orphan Q/DQ nodes")
    return "\n".join(lines)
