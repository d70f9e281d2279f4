"""Pure ONNX post-processing of a QAT export so it follows quant's explicit-quantization rules.

PyTorch's exporter turns each fake-quantize op into a QuantizeLinear -> DequantizeLinear pair,
but leaves the graph in a shape TensorRT and ONNX Runtime handle poorly: weights are quantized
at run time by a QuantizeLinear on a float initializer, scales and zero points are Constant
nodes, deduplicated initializers are reached through Identity nodes, a Linear on a 3-D input
puts a Transpose between the weight's DequantizeLinear and its MatMul, and a BatchNormalization
follows each quantized convolution. :func:`finalize_qdq` rewrites that into what quant's
post-training Q/DQ builder emits (REFERENCE.md):

- weights stored as INT8 initializers followed by a per-channel DequantizeLinear (axis 0 for
  Conv/Gemm, 1 for ConvTranspose and for MatMul's [K, N] weights), zero point 0;
- activations keep their per-tensor QuantizeLinear -> DequantizeLinear pair, INT8 zero point 0;
- BatchNormalization folded into the quantized convolution before it: the INT8 weights stay the
  same (sign-flipped where the BatchNorm scale is negative) and the per-channel weight scale is
  multiplied by |gamma / sqrt(var + eps)|, which is exact for per-channel quantization;
- no Identity or Constant nodes, no unused initializers.

No file I/O, no torch: ModelProto in, new ModelProto out.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from quant.errors import ModelError

log = logging.getLogger(__name__)

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")


class _Graph:
    """A mutable view of a GraphProto: node list, initializers as arrays, consumer lookup."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = [self._copy(n) for n in graph.node]
        self.inits: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.graph_inputs = {i.name for i in graph.input}
        self.graph_outputs = {o.name for o in graph.output}
        self._counter = 0

    @staticmethod
    def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        return new

    def unique(self, base: str) -> str:
        names = set(self.inits) | {o for n in self.nodes for o in n.output} | self.graph_inputs
        if base not in names:
            return base
        while True:
            self._counter += 1
            cand = f"{base}_{self._counter}"
            if cand not in names:
                return cand

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.nodes:
            for i in n.input:
                if i:
                    out[i].append(n)
        return out

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.nodes for o in n.output if o}

    def replace_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def to_graph(self) -> onnx.GraphProto:
        g = onnx.GraphProto()
        g.CopyFrom(self.graph)
        del g.node[:]
        g.node.extend(self.nodes)
        del g.initializer[:]
        used = {i for n in self.nodes for i in n.input} | self.graph_outputs
        g.initializer.extend(numpy_helper.from_array(a, name) for name, a in self.inits.items() if name in used)
        # value_info of removed tensors would confuse shape inference; keep only live ones.
        live = {o for n in self.nodes for o in n.output}
        kept = [v for v in g.value_info if v.name in live]
        del g.value_info[:]
        g.value_info.extend(kept)
        return g


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    for k, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[k]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _constants_to_initializers(g: _Graph) -> None:
    kept = []
    for n in g.nodes:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name in (
            "value", "value_float", "value_floats", "value_int", "value_ints",
        ):
            a = n.attribute[0]
            if a.name == "value":
                arr = numpy_helper.to_array(a.t)
            elif a.name == "value_float":
                arr = np.array(a.f, dtype=np.float32)
            elif a.name == "value_floats":
                arr = np.array(list(a.floats), dtype=np.float32)
            elif a.name == "value_int":
                arr = np.array(a.i, dtype=np.int64)
            else:
                arr = np.array(list(a.ints), dtype=np.int64)
            g.inits[n.output[0]] = arr
            continue
        kept.append(n)
    g.nodes = kept


def _remove_identities(g: _Graph) -> None:
    changed = True
    while changed:
        changed = False
        producers = g.producers()
        for n in g.nodes:
            if n.op_type != "Identity":
                continue
            src, dst = n.input[0], n.output[0]
            if dst in g.graph_outputs:
                prod = producers.get(src)
                if prod is None or src in g.graph_outputs:
                    continue  # a graph input/initializer passed through to an output: keep it
                for k, o in enumerate(prod.output):
                    if o == src:
                        prod.output[k] = dst
                g.nodes.remove(n)
                g.replace_uses(src, dst)
            else:
                g.nodes.remove(n)
                g.replace_uses(dst, src)
            changed = True
            break


def _quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, axis: int) -> np.ndarray:
    """ONNX QuantizeLinear to INT8: saturate(round_half_even(x / scale) + zero_point)."""
    x = x.astype(np.float32)
    if scale.ndim == 1 and x.ndim > 0:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    q = np.rint(x / scale.astype(np.float32)) + zero_point.astype(np.float32)
    return np.clip(q, -128, 127).astype(np.int8)


def _fold_weight_quantize(g: _Graph) -> int:
    """QuantizeLinear(float initializer) -> DequantizeLinear  becomes  INT8 initializer -> DequantizeLinear."""
    consumers = g.consumers()
    folded = 0
    for n in list(g.nodes):
        if n.op_type != "QuantizeLinear" or n.input[0] not in g.inits:
            continue
        if len(n.input) < 3 or n.input[1] not in g.inits or n.input[2] not in g.inits:
            continue
        users = consumers.get(n.output[0], [])
        if not users or any(u.op_type != "DequantizeLinear" for u in users) or n.output[0] in g.graph_outputs:
            continue
        zp = g.inits[n.input[2]]
        if zp.dtype != np.int8:
            continue
        x = g.inits[n.input[0]]
        axis = int(_attr(n, "axis", 1))  # type: ignore[call-overload]
        if axis < 0:
            axis += x.ndim
        q = _quantize(x, g.inits[n.input[1]], zp, axis)
        name = g.unique(f"{n.input[0]}_quantized")
        g.inits[name] = q
        for u in users:
            u.input[0] = name
        g.nodes.remove(n)
        folded += 1
    return folded


def _weight_dq(g: _Graph, tensor: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The DequantizeLinear producing ``tensor`` from an INT8 initializer with 1-D scale, if any."""
    dq = producers.get(tensor)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits:
        return None
    if g.inits[dq.input[0]].dtype != np.int8 or dq.input[1] not in g.inits:
        return None
    return dq


def _fold_weight_transpose(g: _Graph) -> int:
    """INT8 weight -> DQ -> Transpose  becomes  transposed INT8 weight -> DQ (axis permuted)."""
    folded = 0
    producers = g.producers()
    for n in list(g.nodes):
        if n.op_type != "Transpose":
            continue
        dq = _weight_dq(g, n.input[0], producers)
        if dq is None:
            continue
        q = g.inits[dq.input[0]]
        perm = list(_attr(n, "perm", list(range(q.ndim))[::-1]))  # type: ignore[call-overload]
        scale = g.inits[dq.input[1]]
        axis = int(_attr(dq, "axis", 1))  # type: ignore[call-overload]
        if axis < 0:
            axis += q.ndim
        name = g.unique(f"{dq.input[0]}_transposed")
        g.inits[name] = np.ascontiguousarray(np.transpose(q, perm))
        inputs = [name, *dq.input[1:]]
        attrs: dict[str, Any] = {}
        if scale.ndim == 1 and scale.size > 1:
            attrs["axis"] = perm.index(axis)
        new_dq = helper.make_node("DequantizeLinear", inputs, [n.output[0]], name=g.unique(f"{n.name or name}_dq"), **attrs)
        g.nodes[g.nodes.index(n)] = new_dq
        folded += 1
    return folded


def _fold_batchnorm(g: _Graph) -> int:
    """Conv/ConvTranspose with an INT8 DQ weight followed by BatchNormalization: fold the BN."""
    folded = 0
    consumers = g.consumers()
    producers = g.producers()
    for conv in list(g.nodes):
        if conv.op_type not in ("Conv", "ConvTranspose") or len(conv.input) < 2:
            continue
        out = conv.output[0]
        users = consumers.get(out, [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization" or out in g.graph_outputs:
            continue
        bn = users[0]
        if bn.input[0] != out or len(bn.output) != 1 or int(_attr(bn, "training_mode", 0)) != 0:  # type: ignore[call-overload]
            continue
        if any(i not in g.inits for i in bn.input[1:5]):
            continue
        dq = _weight_dq(g, conv.input[1], producers)
        if dq is None:
            continue
        axis_expected = 1 if conv.op_type == "ConvTranspose" else 0
        q = g.inits[dq.input[0]]
        scale = g.inits[dq.input[1]].astype(np.float32)
        axis = int(_attr(dq, "axis", 1))  # type: ignore[call-overload]
        if axis < 0:
            axis += q.ndim
        if scale.ndim != 1 or axis != axis_expected:
            continue
        if conv.op_type == "ConvTranspose" and int(_attr(conv, "group", 1)) != 1:  # type: ignore[call-overload]
            continue
        gamma, beta, mean, var = (g.inits[i].astype(np.float64) for i in bn.input[1:5])
        eps = float(_attr(bn, "epsilon", 1e-5))  # type: ignore[arg-type]
        s = gamma / np.sqrt(var + eps)
        channels = q.shape[axis]
        if s.shape != (channels,) or np.any(s == 0) or (scale.size not in (1, channels)):
            continue
        sign = np.sign(s)
        bshape = [1] * q.ndim
        bshape[axis] = -1
        if np.any((q == -128) & (sign.reshape(bshape) < 0)):
            continue  # -(-128) does not fit INT8; keep the BatchNorm
        new_q = (q.astype(np.int16) * sign.reshape(bshape).astype(np.int16)).astype(np.int8)
        new_scale = (np.broadcast_to(scale, (channels,)).astype(np.float64) * np.abs(s)).astype(np.float32)
        bias = g.inits[conv.input[2]].astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros(channels)
        new_bias = (bias * s + beta - mean * s).astype(np.float32)
        q_name = g.unique(f"{dq.input[0]}_bnfolded")
        s_name = g.unique(f"{dq.input[1]}_bnfolded")
        b_name = g.unique(f"{conv.name or 'conv'}_bias_bnfolded")
        g.inits[q_name] = new_q
        g.inits[s_name] = new_scale
        g.inits[b_name] = new_bias
        zp_name = g.unique(f"{dq.input[0]}_zero_point")
        g.inits[zp_name] = np.zeros(channels, dtype=np.int8)
        w_name = g.unique(f"{dq.output[0]}_bnfolded")
        new_dq = helper.make_node(
            "DequantizeLinear", [q_name, s_name, zp_name], [w_name], name=g.unique(f"{dq.name or 'dq'}_bnfolded"), axis=axis
        )
        g.nodes.insert(g.nodes.index(conv), new_dq)
        conv.input[1] = w_name
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        g.nodes.remove(bn)
        folded += 1
    return folded


def _prune(g: _Graph) -> None:
    while True:
        used = {i for n in g.nodes for i in n.input} | g.graph_outputs
        dead = [n for n in g.nodes if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.nodes.remove(n)


def _normalize_zero_points(g: _Graph) -> None:
    """Per-tensor activation zero points as INT8 scalars 0; per-channel weights get 1-D INT8 zeros."""
    for n in g.nodes:
        if n.op_type not in QUANT_OPS or len(n.input) < 3 or n.input[2] not in g.inits:
            continue
        zp = g.inits[n.input[2]]
        if zp.dtype == np.uint8 and np.all(zp == 128):
            raise ModelError(
                f"node '{n.name}': unsigned zero point 128; quant's QAT exports symmetric signed INT8 only"
            )
        if zp.dtype != np.int8:
            g.inits[n.input[2]] = zp.astype(np.int8)


def finalize_qdq(model: ModelProto) -> ModelProto:
    """Rewrite a freshly exported QAT model into quant's Q/DQ form (see the module docstring)."""
    g = _Graph(model.graph)
    _constants_to_initializers(g)
    _remove_identities(g)
    _normalize_zero_points(g)
    n_w = _fold_weight_quantize(g)
    n_t = _fold_weight_transpose(g)
    n_bn = _fold_batchnorm(g)
    _prune(g)
    new = ModelProto()
    new.CopyFrom(model)
    new.graph.CopyFrom(g.to_graph())
    log.debug("finalize_qdq: %d weights folded to INT8, %d transposes, %d BatchNorms folded", n_w, n_t, n_bn)
    check_qdq(new)
    return new


def check_qdq(model: ModelProto) -> None:
    """Raise ModelError unless every Q/DQ follows the explicit-quantization rules quant emits.

    Every QuantizeLinear feeds only DequantizeLinear nodes with the same scale and zero point
    (no orphan Q); every DequantizeLinear reads a QuantizeLinear or an INT8 initializer (no
    orphan DQ); all zero points are INT8 zeros.
    """
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in model.graph.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in model.graph.output}
    for n in model.graph.node:
        if n.op_type not in QUANT_OPS:
            continue
        label = f"{n.op_type} '{n.name or n.output[0]}'"
        if len(n.input) < 3 or n.input[2] not in inits:
            raise ModelError(f"{label}: zero point missing or not an initializer; re-export the model")
        zp = inits[n.input[2]]
        if zp.data_type != TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
            raise ModelError(f"{label}: zero point must be INT8 0 (symmetric); re-export the model")
        if n.op_type == "QuantizeLinear":
            users = consumers.get(n.output[0], [])
            if not users or n.output[0] in outputs or any(u.op_type != "DequantizeLinear" for u in users):
                raise ModelError(f"{label} is orphaned: its output must feed only DequantizeLinear nodes")
            for u in users:
                if list(u.input[1:3]) != list(n.input[1:3]):
                    raise ModelError(f"{label} and DequantizeLinear '{u.name}' use different scales; re-export the model")
        else:
            src = n.input[0]
            prod = producers.get(src)
            if prod is not None and prod.op_type == "QuantizeLinear":
                continue
            if src in inits and inits[src].data_type == TensorProto.INT8:
                continue
            raise ModelError(f"{label} is orphaned: its input '{src}' is neither a QuantizeLinear output nor an INT8 weight")
