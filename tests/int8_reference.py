"""An independent reference for TensorRT's INT8 arithmetic: a small NumPy interpreter of Q/DQ models.

It shares no code with quant or ONNX Runtime. Conv, MatMul and Gemm whose inputs come from
DequantizeLinear nodes multiply the *integer* values and accumulate them exactly (int64, which
holds any int8 x int8 sum of these sizes), then scale by ``input scale x weight scale`` in float64,
as TensorRT does with its int32 accumulators. Everything else runs in float64. QuantizeLinear
rounds half to even and saturates to [-128, 127] (uint8: [0, 255]), as ONNX specifies.

:func:`saturating_u8s8_matmul` models the other arithmetic, that of ONNX Runtime's integer
kernels on x86 without VNNI (``vpmaddubsw``: u8 x s8 products summed in adjacent pairs and
saturated to int16), so a test can show that its model would visibly fail under it, whatever
CPU runs the test.

Supported ops (what the tests' models contain after quant's cleanup and Q/DQ placement):
QuantizeLinear, DequantizeLinear, Conv (2-D, groups, pads, strides, dilations), MatMul, Gemm,
Add, Mul, Relu, Flatten, Reshape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper


@dataclass
class _Int:
    """A dequantized tensor that remembers its integers: value = (q - zero) * scale."""

    q: np.ndarray  # int64, zero point already subtracted
    scale: np.ndarray  # broadcastable to q
    axis: int | None  # the per-channel axis of scale (None: per tensor)

    @property
    def value(self) -> np.ndarray:
        return self.q.astype(np.float64) * self.scale


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _channel_scale(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    if scale.ndim == 0 or axis is None:
        return scale.reshape(())
    axis %= ndim
    return scale.reshape([-1 if i == axis else 1 for i in range(ndim)])


def _quantize(x: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int | None) -> np.ndarray:
    """QuantizeLinear in float32, as TensorRT's and ONNX's definition compute it: x / scale in
    float32, rounded half to even, plus the zero point, saturated."""
    s = _channel_scale(scale.astype(np.float32), axis, x.ndim)
    z = _channel_scale(zero.astype(np.int64), axis, x.ndim)
    lo, hi = (0, 255) if zero.dtype == np.uint8 else (-128, 127)
    return np.clip(np.rint(np.asarray(x, np.float32) / s).astype(np.int64) + z, lo, hi).astype(np.int64)


def _int_conv(x: np.ndarray, w: np.ndarray, *, pads: list[int], strides: list[int], dilations: list[int],
              group: int) -> np.ndarray:
    """2-D convolution, NCHW / OIHW, in the inputs' type (int64: exact integer sums)."""
    n, c, _, _ = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    dh, dw = dilations
    eff_h, eff_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = sliding_window_view(xp, (eff_h, eff_w), axis=(2, 3))[:, :, :: strides[0], :: strides[1], ::dh, ::dw]
    out = np.empty((n, o, win.shape[2], win.shape[3]), dtype=np.result_type(x, w))
    og = o // group
    for g in range(group):
        xs = win[:, g * cg : (g + 1) * cg]  # (N, cg, OH, OW, kh, kw)
        ws = w[g * og : (g + 1) * og]  # (og, cg, kh, kw)
        out[:, g * og : (g + 1) * og] = np.einsum("ncyxhw,ochw->noyx", xs, ws, optimize=True)
    del c
    return out


def run_reference(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of Q/DQ ``model`` on ``feed`` with exact integer accumulation (float64 results)."""
    env: dict[str, np.ndarray | _Int] = {}
    for t in model.graph.initializer:
        env[t.name] = numpy_helper.to_array(t)
    for k, v in feed.items():
        env[k] = np.asarray(v, dtype=np.float64)

    def val(name: str) -> np.ndarray:
        v = env[name]
        return v.value if isinstance(v, _Int) else np.asarray(v)

    for node in model.graph.node:
        op, a = node.op_type, _attrs(node)
        ins = list(node.input)
        if op == "QuantizeLinear":
            axis = int(a.get("axis", 1))  # type: ignore[call-overload]
            zero = np.asarray(env[ins[2]]) if len(ins) > 2 else np.zeros((), np.uint8)
            scale = np.asarray(env[ins[1]])
            env[node.output[0]] = _quantize(val(ins[0]), scale, zero, axis if scale.ndim else None).astype(zero.dtype)
        elif op == "DequantizeLinear":
            q = np.asarray(env[ins[0]]).astype(np.int64)
            scale = np.asarray(env[ins[1]]).astype(np.float64)
            zero = np.asarray(env[ins[2]]).astype(np.int64) if len(ins) > 2 else np.zeros((), np.int64)
            axis = int(a.get("axis", 1)) if scale.ndim else None  # type: ignore[call-overload]
            s = _channel_scale(scale, axis, q.ndim)
            env[node.output[0]] = _Int(q - _channel_scale(zero, axis, q.ndim), s, axis)
        elif op == "Conv":
            x, w = env[ins[0]], env[ins[1]]
            kw_ = {
                "pads": list(a.get("pads", [0, 0, 0, 0])),  # type: ignore[call-overload]
                "strides": list(a.get("strides", [1, 1])),  # type: ignore[call-overload]
                "dilations": list(a.get("dilations", [1, 1])),  # type: ignore[call-overload]
                "group": int(a.get("group", 1)),  # type: ignore[call-overload]
            }
            if isinstance(x, _Int) and isinstance(w, _Int):
                acc = _int_conv(x.q, w.q, **kw_)  # type: ignore[arg-type]
                w_scale = w.scale.reshape(-1) if w.scale.ndim else w.scale.reshape(1)
                y = acc.astype(np.float64) * (float(x.scale) * w_scale).reshape(1, -1, 1, 1)
            else:  # float convolution in float64 (not quantized)
                y = _int_conv(val(ins[0]), val(ins[1]), **kw_)  # type: ignore[arg-type]
            if len(ins) > 2 and ins[2]:
                y = y + val(ins[2]).reshape(1, -1, 1, 1)
            env[node.output[0]] = y
        elif op in ("MatMul", "Gemm"):
            x, w = env[ins[0]], env[ins[1]]
            trans_a, trans_b = int(a.get("transA", 0)), int(a.get("transB", 0))  # type: ignore[call-overload]
            if isinstance(x, _Int) and isinstance(w, _Int):
                xq = x.q.T if trans_a else x.q
                wq = w.q.T if trans_b else w.q
                acc = np.matmul(xq, wq)  # int64: exact
                # the weight's per-channel axis is its output-column axis after the transpose
                w_scale = w.scale.reshape(-1) if w.scale.ndim and w.scale.size > 1 else w.scale.reshape(())
                y = acc.astype(np.float64) * (float(x.scale) * w_scale)
            else:
                xa, wa = val(ins[0]), val(ins[1])
                y = np.matmul(xa.T if trans_a else xa, wa.T if trans_b else wa)
            if op == "Gemm":
                y = y * float(a.get("alpha", 1.0))  # type: ignore[arg-type]
                if len(ins) > 2 and ins[2]:
                    y = y + float(a.get("beta", 1.0)) * val(ins[2])  # type: ignore[arg-type]
            env[node.output[0]] = y
        elif op == "Add":
            env[node.output[0]] = val(ins[0]) + val(ins[1])
        elif op == "Mul":
            env[node.output[0]] = val(ins[0]) * val(ins[1])
        elif op == "Relu":
            env[node.output[0]] = np.maximum(val(ins[0]), 0.0)
        elif op == "Flatten":
            x = val(ins[0])
            axis = int(a.get("axis", 1))  # type: ignore[call-overload]
            env[node.output[0]] = x.reshape(int(np.prod(x.shape[:axis])), -1)
        elif op == "Reshape":
            x, shape = val(ins[0]), [int(s) for s in np.asarray(env[ins[1]])]
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            env[node.output[0]] = x.reshape(shape)
        else:
            raise NotImplementedError(f"int8 reference: op {op} ({node.name}) is not supported")
    return {o.name: val(o.name) for o in model.graph.output}


def saturating_u8s8_matmul(x_q: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    """``x_q @ w_q`` (int8 values, K last / first) as an x86 CPU without VNNI computes it in ONNX
    Runtime's u8 x s8 kernels: activations shifted to uint8 (+128), adjacent pairs of u8 x s8
    products summed and saturated to int16 (``vpmaddubsw``), pair sums added in int32, and the
    zero-point correction ``128 * sum(w)`` subtracted exactly."""
    u = x_q.astype(np.int64) + 128
    w = w_q.astype(np.int64)
    k = u.shape[-1]
    if k % 2:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], 1), np.int64)], axis=-1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)], axis=0)
    prod = u[..., :, None] * w[None, :, :] if u.ndim == 2 else None
    if prod is None:
        raise ValueError("x_q must be 2-D (rows, K)")
    pairs = prod[:, 0::2, :] + prod[:, 1::2, :]
    pairs = np.clip(pairs, -32768, 32767)
    return pairs.sum(axis=1) - 128 * w.sum(axis=0)


# --- real models: onnx's own reference evaluator for every op, integer sums for the quantized ones ---

_REF_DOMAIN = "quant.int8_reference"


def _int_matmul_like(node: onnx.NodeProto, xq: np.ndarray, wq: np.ndarray) -> np.ndarray:
    a = {k: v for k, v in _attrs(node).items()}
    if node.op_type == "Gemm":
        xq = xq.T if a.get("transA", 0) else xq
        wq = wq.T if a.get("transB", 0) else wq
    return np.matmul(xq, wq)


def _make_ops() -> list[type]:
    from onnx.reference.op_run import OpRun

    class IntConv(OpRun):  # type: ignore[misc]
        """Conv of two dequantized inputs: integer sums (int64), then x scale * w scale, + bias."""

        op_domain = _REF_DOMAIN

        def _run(self, xq, xs, xz, wq, ws, wz, b=None, pads=None, strides=None, dilations=None,  # type: ignore[no-untyped-def]
                 group=None, w_axis=None, auto_pad=None, kernel_shape=None):
            if auto_pad not in (None, "NOTSET", b"NOTSET"):
                raise NotImplementedError("int8 reference: Conv auto_pad")
            nd = wq.ndim - 2
            if nd != 2:
                raise NotImplementedError("int8 reference: only 2-D Conv")
            x = xq.astype(np.int64) - np.asarray(xz, np.int64)
            w = wq.astype(np.int64) - _channel_scale(np.asarray(wz, np.int64), 0, wq.ndim)
            acc = _int_conv(x, w, pads=list(pads or [0] * 4), strides=list(strides or [1, 1]),
                            dilations=list(dilations or [1, 1]), group=int(group or 1))
            scale = float(xs) * np.asarray(ws, np.float64).reshape(-1)
            y = acc.astype(np.float64) * scale.reshape(1, -1, 1, 1)
            if b is not None:
                y = y + np.asarray(b, np.float64).reshape(1, -1, 1, 1)
            return (y.astype(np.float32),)

    class IntMatMul(OpRun):  # type: ignore[misc]
        """MatMul / Gemm of two dequantized inputs: integer sums, then the scales (and Gemm's bias)."""

        op_domain = _REF_DOMAIN

        def _run(self, xq, xs, xz, wq, ws, wz, c=None, transA=None, transB=None, alpha=None, beta=None,  # type: ignore[no-untyped-def]  # noqa: N803
                 w_axis=None, gemm=None):
            x = xq.astype(np.int64) - np.asarray(xz, np.int64)
            ws = np.asarray(ws, np.float64)
            wz = np.asarray(wz, np.int64)
            axis = int(w_axis) if w_axis is not None and ws.ndim else None
            w = wq.astype(np.int64) - _channel_scale(wz, axis, wq.ndim)
            if gemm:
                x = x.T if transA else x
                w = w.T if transB else w
                axis = None if axis is None else (1 - axis if transB else axis)
            acc = np.matmul(x, w)
            w_scale = ws.reshape(-1) if ws.ndim and ws.size > 1 else ws.reshape(())
            y = acc.astype(np.float64) * (float(xs) * w_scale)
            if gemm:
                y = y * (1.0 if alpha is None else float(alpha))
                if c is not None:
                    y = y + (1.0 if beta is None else float(beta)) * np.asarray(c, np.float64)
            return (y.astype(np.float32),)

    class RefQuantize(OpRun):  # type: ignore[misc]
        """QuantizeLinear (ONNX's definition: round half to even, saturate; any opset)."""

        op_domain = _REF_DOMAIN

        def _run(self, x, scale, zero=None, axis=None, saturate=None, block_size=None, output_dtype=None):  # type: ignore[no-untyped-def]
            zero = np.zeros((), np.uint8) if zero is None else np.asarray(zero)
            scale = np.asarray(scale)
            q = _quantize(np.asarray(x, np.float64), scale, zero, int(1 if axis is None else axis) if scale.ndim else None)
            return (q.astype(zero.dtype),)

    class RefDequantize(OpRun):  # type: ignore[misc]
        """DequantizeLinear (any opset)."""

        op_domain = _REF_DOMAIN

        def _run(self, q, scale, zero=None, axis=None, block_size=None, output_dtype=None):  # type: ignore[no-untyped-def]
            scale = np.asarray(scale, np.float64)
            ax = int(1 if axis is None else axis) if scale.ndim else None
            z = np.zeros((), np.int64) if zero is None else np.asarray(zero, np.int64)
            q64 = np.asarray(q).astype(np.int64) - _channel_scale(z, ax, np.asarray(q).ndim)
            return ((q64 * _channel_scale(scale, ax, q64.ndim)).astype(np.float32),)

    return [IntConv, IntMatMul, RefQuantize, RefDequantize]


def with_integer_ops(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of Q/DQ ``model`` where each Conv / MatMul / Gemm whose activation and weight both
    come from DequantizeLinear reads the integers and scales instead (reference ops above), and
    the number of ops replaced."""
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    dq = {n.output[0]: n for n in out.graph.node if n.op_type == "DequantizeLinear"}
    replaced = 0
    nodes = []
    for node in out.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and node.input[0] in dq and node.input[1] in dq:
            xd, wd = dq[node.input[0]], dq[node.input[1]]
            if len(xd.input) < 3 or len(wd.input) < 3:
                nodes.append(node)
                continue
            w_axis = next((a.i for a in wd.attribute if a.name == "axis"), 1)
            ins = [*xd.input, *wd.input] + ([node.input[2]] if len(node.input) > 2 and node.input[2] else [])
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Conv":
                new = helper.make_node("IntConv", ins, list(node.output), domain=_REF_DOMAIN, w_axis=w_axis, **attrs)
            else:
                new = helper.make_node("IntMatMul", ins, list(node.output), domain=_REF_DOMAIN, w_axis=w_axis,
                                       gemm=int(node.op_type == "Gemm"), **attrs)
            nodes.append(new)
            replaced += 1
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            op = "RefQuantize" if node.op_type == "QuantizeLinear" else "RefDequantize"
            nodes.append(helper.make_node(op, list(node.input), list(node.output), domain=_REF_DOMAIN, **attrs))
        else:
            nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.opset_import.append(helper.make_opsetid(_REF_DOMAIN, 1))
    return out, replaced


def run_reference_model(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of any Q/DQ ``model`` with onnx's reference evaluator, integer sums for the quantized
    Conv / MatMul / Gemm (slow: for verification scripts and small models)."""
    from onnx.reference import ReferenceEvaluator

    ref_model, _ = with_integer_ops(model)
    sess = ReferenceEvaluator(ref_model, new_ops=_make_ops())
    names = [o.name for o in model.graph.output]
    return dict(zip(names, sess.run(names, feed), strict=True))
