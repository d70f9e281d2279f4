"""Run an ONNX graph with PyTorch tensors, op by op, so that autograd can differentiate it.

The first-order sensitivity estimate (:mod:`quant.sensitivity.estimate`) needs the gradient of the
model's outputs with respect to every quantized layer's output, which ONNX Runtime cannot give.
This is a small eager interpreter: nodes run in graph order on concrete tensors, so shape
arithmetic (Shape, Gather, Concat of int64 tensors, Reshape by a computed shape) just runs, and
every float op is a differentiable torch call. It covers the CNN op set of common exports
(classifiers, ResNets, MobileNets, YOLO, PaddleOCR); any other op raises :class:`UnsupportedOp`
naming the node, and the caller falls back to the ONNX Runtime measurement.

It is checked against ONNX Runtime output for output on the test models and on real pretrained
models (tests/test_sensitivity_estimate.py). ``override`` lets the caller compute chosen nodes
itself (the estimate runs quantized layers through their Q/DQ form there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from quant.errors import ModelError

__all__ = ["TorchGraph", "UnsupportedOp"]

Tensor = torch.Tensor
Override = Callable[[onnx.NodeProto, list[Tensor | None]], list[Tensor]]


class UnsupportedOp(ModelError):
    """A node the interpreter cannot run; the message names it."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


_DTYPES: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def _ints(t: Tensor | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _pads(a: Mapping[str, Any], rank: int, node: onnx.NodeProto, spatial: Sequence[int] | None = None,
          kernel: Sequence[int] | None = None, strides: Sequence[int] | None = None,
          dilations: Sequence[int] | None = None) -> list[int]:
    """ONNX pads as [b1, ..., bn, e1, ..., en], resolving auto_pad SAME_* from the input size."""
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = list(a.get("pads", [0] * (2 * rank)))
        return [0] * (2 * rank) if auto == "VALID" else pads
    if auto in ("SAME_UPPER", "SAME_LOWER") and spatial is not None and kernel is not None:
        s = list(strides or [1] * rank)
        d = list(dilations or [1] * rank)
        begin, end = [], []
        for i in range(rank):
            out = math.ceil(spatial[i] / s[i])
            total = max(0, (out - 1) * s[i] + (kernel[i] - 1) * d[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): auto_pad={auto} is not supported")


def _pad_input(x: Tensor, pads: Sequence[int], rank: int, value: float = 0.0) -> tuple[Tensor, list[int]]:
    """Symmetric pads go to the op; asymmetric ones are applied here (F.pad order: last dim first)."""
    begin, end = list(pads[:rank]), list(pads[rank:])
    if begin == end:
        return x, begin
    spec: list[int] = []
    for i in reversed(range(rank)):
        spec += [begin[i], end[i]]
    return F.pad(x, spec, value=value), [0] * rank


def _conv(node: onnx.NodeProto, a: Mapping[str, Any], x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    rank = x.dim() - 2
    kernel = list(w.shape[2:])
    strides = list(a.get("strides", [1] * rank))
    dil = list(a.get("dilations", [1] * rank))
    pads = _pads(a, rank, node, list(x.shape[2:]), kernel, strides, dil)
    x, sym = _pad_input(x, pads, rank)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if fn is None:
        raise UnsupportedOp(f"node '{node.name}' (Conv): {rank}-D convolution is not supported")
    return fn(x, w, b, stride=strides, padding=sym, dilation=dil, groups=int(a.get("group", 1)))


def _conv_transpose(node: onnx.NodeProto, a: Mapping[str, Any], x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    rank = x.dim() - 2
    if "output_shape" in a:
        raise UnsupportedOp(f"node '{node.name}' (ConvTranspose): output_shape is not supported")
    pads = list(a.get("pads", [0] * (2 * rank)))
    if a.get("auto_pad", "NOTSET") not in ("NOTSET",) or pads[:rank] != pads[rank:]:
        raise UnsupportedOp(f"node '{node.name}' (ConvTranspose): asymmetric or automatic pads are not supported")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(rank)
    if fn is None:
        raise UnsupportedOp(f"node '{node.name}' (ConvTranspose): {rank}-D is not supported")
    return fn(x, w, b, stride=list(a.get("strides", [1] * rank)), padding=pads[:rank],
              output_padding=list(a.get("output_padding", [0] * rank)), groups=int(a.get("group", 1)),
              dilation=list(a.get("dilations", [1] * rank)))


def _pool(node: onnx.NodeProto, a: Mapping[str, Any], x: Tensor, kind: str) -> Tensor:
    rank = x.dim() - 2
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * rank))
    dil = list(a.get("dilations", [1] * rank))
    pads = _pads(a, rank, node, list(x.shape[2:]), kernel, strides, dil)
    ceil = bool(a.get("ceil_mode", 0))
    if kind == "max":
        x, sym = _pad_input(x, pads, rank, value=-math.inf)
        pool: Any = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
        return pool(x, kernel, strides, sym, dil, ceil_mode=ceil)
    if any(d != 1 for d in dil):
        raise UnsupportedOp(f"node '{node.name}' (AveragePool): dilations are not supported")
    include = bool(a.get("count_include_pad", 0))
    begin, end = pads[:rank], pads[rank:]
    if begin != end:
        if not include:
            raise UnsupportedOp(f"node '{node.name}' (AveragePool): asymmetric pads without count_include_pad")
        x, sym = _pad_input(x, pads, rank)
    else:
        sym = begin
    avg: Any = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
    return avg(x, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)


def _axes(a: Mapping[str, Any], inputs: Sequence[Tensor | None], slot: int) -> list[int] | None:
    if "axes" in a:
        return list(a["axes"])
    if len(inputs) > slot and inputs[slot] is not None:
        return _ints(inputs[slot])
    return None


def _reduce(fn: str, a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    axes = _axes(a, inputs, 1)
    keep = bool(a.get("keepdims", 1))
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    if fn == "mean":
        return x.mean(dim=axes, keepdim=keep)
    if fn == "sum":
        return x.sum(dim=axes, keepdim=keep)
    if fn == "max":
        return x.amax(dim=axes, keepdim=keep)
    return x.amin(dim=axes, keepdim=keep)


def _resize(node: onnx.NodeProto, a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    if node.op_type == "Upsample":
        scales = inputs[1]
    if sizes is not None and sizes.numel():
        out = _ints(sizes)
    elif scales is not None and scales.numel():
        sc = [float(v) for v in scales.reshape(-1).tolist()]
        out = [int(math.floor(d * s)) for d, s in zip(x.shape, sc, strict=True)]
    else:
        raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): neither scales nor sizes")
    if out[:2] != list(x.shape[:2]):
        raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): resizing the batch or channel axis")
    mode = a.get("mode", "nearest")
    coord = a.get("coordinate_transformation_mode", "half_pixel")
    spatial = out[2:]
    if mode == "nearest":
        ratios = [o / i for o, i in zip(spatial, x.shape[2:], strict=True)]
        if all(r >= 1 and float(r).is_integer() for r in ratios) and coord in (
            "half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn"
        ) and a.get("nearest_mode", "round_prefer_floor") in ("round_prefer_floor", "floor"):
            # Integer upscaling: every one of these rules picks source pixel floor(i / r).
            return F.interpolate(x, size=spatial, mode="nearest")
        raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): nearest resize by {ratios} with {coord}")
    if mode == "linear" and x.dim() in (3, 4, 5):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if coord in ("half_pixel", "pytorch_half_pixel"):
            return F.interpolate(x, size=spatial, mode=torch_mode, align_corners=False)
        if coord == "align_corners":
            return F.interpolate(x, size=spatial, mode=torch_mode, align_corners=True)
    raise UnsupportedOp(f"node '{node.name}' ({node.op_type}): mode {mode} with {coord} is not supported")


def _slice(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    if "starts" in a:  # opset < 10
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    flips: list[int] = []
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            index[ax] = slice(s, max(s, e), st)
        else:
            # Negative step: take the forward range, then flip.
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            if e >= s:
                index[ax] = slice(0, 0)
                continue
            lo = e + 1
            picked = list(range(s, lo - 1, st))
            index[ax] = slice(picked[-1], s + 1, -st)
            flips.append(ax)
    out = x[tuple(index)]
    return torch.flip(out, flips) if flips else out


def _reshape(x: Tensor, shape: list[int], allowzero: bool) -> Tensor:
    if not allowzero:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _softmax(x: Tensor, axis: int, opset: int, log: bool = False) -> Tensor:
    fn = torch.log_softmax if log else torch.softmax
    if opset >= 13:
        return fn(x, dim=axis)
    axis %= x.dim()
    shape = x.shape
    flat = x.reshape(int(np.prod(shape[:axis])), -1)
    return fn(flat, dim=1).reshape(shape)


def _clip(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    lo = inputs[1] if len(inputs) > 1 and inputs[1] is not None else a.get("min")
    hi = inputs[2] if len(inputs) > 2 and inputs[2] is not None else a.get("max")
    lo_v = float(lo) if lo is not None else None
    hi_v = float(hi) if hi is not None else None
    return torch.clamp(x, lo_v, hi_v)


def _gemm(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x, w = inputs[0], inputs[1]
    assert x is not None and w is not None
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = float(a.get("alpha", 1.0)) * (x @ w)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + float(a.get("beta", 1.0)) * inputs[2]
    return y


def _div(x: Tensor, y: Tensor) -> Tensor:
    if not x.is_floating_point() and not y.is_floating_point():
        return torch.div(x, y, rounding_mode="trunc")
    return x / y


def _split(node: onnx.NodeProto, a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> list[Tensor]:
    x = inputs[0]
    assert x is not None
    axis = int(a.get("axis", 0)) % x.dim()
    if "split" in a:
        sizes = list(a["split"])
    elif len(inputs) > 1 and inputs[1] is not None:
        sizes = _ints(inputs[1])
    else:
        n = int(a.get("num_outputs", len(node.output)))
        size = math.ceil(x.shape[axis] / n)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def _pad(node: onnx.NodeProto, a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    pads = list(a["pads"]) if "pads" in a else _ints(inputs[1])
    value = float(a.get("value", 0.0))
    if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel():
        value = float(inputs[2].reshape(-1)[0])
    if len(inputs) > 3 and inputs[3] is not None:
        raise UnsupportedOp(f"node '{node.name}' (Pad): the axes input is not supported")
    rank = x.dim()
    spec: list[int] = []
    for i in reversed(range(rank)):
        spec += [pads[i], pads[i + rank]]
    mode = a.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, spec, value=value)
    # torch's reflect/replicate pad the trailing spatial dims only: drop the leading zeros.
    while len(spec) > 2 and spec[-2:] == [0, 0]:
        spec = spec[:-2]
    return F.pad(x, spec, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[[onnx.NodeProto, Mapping[str, Any], list[Tensor | None], int], Tensor]:
    return lambda n, a, i, o: fn(i[0])  # type: ignore[arg-type]


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[[onnx.NodeProto, Mapping[str, Any], list[Tensor | None], int], Tensor]:
    return lambda n, a, i, o: fn(i[0], i[1])  # type: ignore[arg-type]


def _cast(a: Mapping[str, Any], x: Tensor, node: onnx.NodeProto) -> Tensor:
    dtype = _DTYPES.get(int(a["to"]))
    if dtype is None:
        raise UnsupportedOp(f"node '{node.name}' (Cast): to={a['to']} is not supported")
    return x.to(dtype)


def _constant(node: onnx.NodeProto, a: Mapping[str, Any]) -> Tensor:
    for attr in node.attribute:
        if attr.name == "value":
            return torch.from_numpy(numpy_helper.to_array(attr.t).copy())
    if "value_float" in a:
        return torch.tensor(float(a["value_float"]), dtype=torch.float32)
    if "value_floats" in a:
        return torch.tensor(list(a["value_floats"]), dtype=torch.float32)
    if "value_int" in a:
        return torch.tensor(int(a["value_int"]), dtype=torch.int64)
    if "value_ints" in a:
        return torch.tensor(list(a["value_ints"]), dtype=torch.int64)
    raise UnsupportedOp(f"node '{node.name}' (Constant): this value attribute is not supported")


def _constant_of_shape(node: onnx.NodeProto, x: Tensor) -> Tensor:
    fill = torch.tensor(0.0, dtype=torch.float32)
    for attr in node.attribute:
        if attr.name == "value":
            fill = torch.from_numpy(numpy_helper.to_array(attr.t).copy()).reshape(())
    return torch.full(_ints(x), fill.item(), dtype=fill.dtype)


def _squeeze(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    axes = _axes(a, inputs, 1)
    if axes is None:
        return x.squeeze()
    out = x
    for ax in sorted((ax % x.dim() for ax in axes), reverse=True):
        out = out.squeeze(ax)
    return out


def _unsqueeze(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x = inputs[0]
    assert x is not None
    axes = _axes(a, inputs, 1) or []
    rank = x.dim() + len(axes)
    out = x
    for ax in sorted(ax % rank for ax in axes):
        out = out.unsqueeze(ax)
    return out


def _batchnorm(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x, scale, bias, mean, var = inputs[:5]
    assert x is not None and scale is not None and bias is not None and mean is not None and var is not None
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=float(a.get("epsilon", 1e-5)))


def _layer_norm(a: Mapping[str, Any], inputs: Sequence[Tensor | None]) -> Tensor:
    x, scale = inputs[0], inputs[1]
    assert x is not None and scale is not None
    bias = inputs[2] if len(inputs) > 2 else None
    axis = int(a.get("axis", -1)) % x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, eps=float(a.get("epsilon", 1e-5)))


def _gather(a: Mapping[str, Any], x: Tensor, idx: Tensor) -> Tensor:
    axis = int(a.get("axis", 0)) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = torch.index_select(x, axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def _shape(a: Mapping[str, Any], x: Tensor) -> Tensor:
    dims = list(x.shape)
    start = int(a.get("start", 0))
    end = a.get("end")
    return torch.tensor(dims[start:None if end is None else int(end)], dtype=torch.int64)


def _hard_sigmoid(a: Mapping[str, Any], x: Tensor) -> Tensor:
    return torch.clamp(float(a.get("alpha", 0.2)) * x + float(a.get("beta", 0.5)), 0.0, 1.0)


def _expand(x: Tensor, shape: Tensor) -> Tensor:
    """ONNX Expand: broadcast ``x`` and ``shape`` together (either may have the larger dims)."""
    return x * torch.ones(_ints(shape), dtype=x.dtype)


def _where(c: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(c.bool(), x, y)


OpFn = Callable[[onnx.NodeProto, Mapping[str, Any], list[Tensor | None], int], Any]

_OPS: dict[str, OpFn] = {
    "Conv": lambda n, a, i, o: _conv(n, a, i[0], i[1], i[2] if len(i) > 2 else None),  # type: ignore[arg-type]
    "ConvTranspose": lambda n, a, i, o: _conv_transpose(n, a, i[0], i[1], i[2] if len(i) > 2 else None),  # type: ignore[arg-type]
    "Gemm": lambda n, a, i, o: _gemm(a, i),
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(_div),
    "Pow": _binary(torch.pow),
    "Max": lambda n, a, i, o: _fold(torch.maximum, i),
    "Min": lambda n, a, i, o: _fold(torch.minimum, i),
    "Sum": lambda n, a, i, o: _fold(torch.add, i),
    "Mean": lambda n, a, i, o: _fold(torch.add, i) / len(i),
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "Greater": _binary(torch.gt),
    "Not": _unary(torch.logical_not),
    "Where": lambda n, a, i, o: _where(i[0], i[1], i[2]),  # type: ignore[arg-type]
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Erf": _unary(torch.erf),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Reciprocal": _unary(torch.reciprocal),
    "Softplus": _unary(F.softplus),
    "Identity": _unary(lambda x: x),
    "Dropout": _unary(lambda x: x),
    "LeakyRelu": lambda n, a, i, o: F.leaky_relu(i[0], float(a.get("alpha", 0.01))),  # type: ignore[arg-type]
    "Elu": lambda n, a, i, o: F.elu(i[0], float(a.get("alpha", 1.0))),  # type: ignore[arg-type]
    "HardSigmoid": lambda n, a, i, o: _hard_sigmoid(a, i[0]),  # type: ignore[arg-type]
    "HardSwish": _unary(F.hardswish),
    "Clip": lambda n, a, i, o: _clip(a, i),
    "Softmax": lambda n, a, i, o: _softmax(i[0], int(a.get("axis", -1 if o >= 13 else 1)), o),  # type: ignore[arg-type]
    "LogSoftmax": lambda n, a, i, o: _softmax(i[0], int(a.get("axis", -1 if o >= 13 else 1)), o, log=True),  # type: ignore[arg-type]
    "MaxPool": lambda n, a, i, o: _pool(n, a, i[0], "max"),  # type: ignore[arg-type]
    "AveragePool": lambda n, a, i, o: _pool(n, a, i[0], "avg"),  # type: ignore[arg-type]
    "GlobalAveragePool": lambda n, a, i, o: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),  # type: ignore[union-attr]
    "GlobalMaxPool": lambda n, a, i, o: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),  # type: ignore[union-attr]
    "BatchNormalization": lambda n, a, i, o: _batchnorm(a, i),
    "LayerNormalization": lambda n, a, i, o: _layer_norm(a, i),
    "Flatten": lambda n, a, i, o: i[0].reshape(  # type: ignore[union-attr]
        int(np.prod(i[0].shape[: int(a.get("axis", 1)) % max(1, i[0].dim())])) if int(a.get("axis", 1)) else 1, -1  # type: ignore[union-attr]
    ),
    "Reshape": lambda n, a, i, o: _reshape(i[0], _ints(i[1]), bool(a.get("allowzero", 0))),  # type: ignore[arg-type]
    "Transpose": lambda n, a, i, o: i[0].permute(  # type: ignore[union-attr]
        *(a["perm"] if "perm" in a else reversed(range(i[0].dim())))  # type: ignore[union-attr]
    ),
    "Squeeze": lambda n, a, i, o: _squeeze(a, i),
    "Unsqueeze": lambda n, a, i, o: _unsqueeze(a, i),
    "Concat": lambda n, a, i, o: torch.cat([t for t in i if t is not None], dim=int(a["axis"])),
    "Split": lambda n, a, i, o: _split(n, a, i),
    "Slice": lambda n, a, i, o: _slice(a, i),
    "Gather": lambda n, a, i, o: _gather(a, i[0], i[1]),  # type: ignore[arg-type]
    "Shape": lambda n, a, i, o: _shape(a, i[0]),  # type: ignore[arg-type]
    "Size": lambda n, a, i, o: torch.tensor(i[0].numel(), dtype=torch.int64),  # type: ignore[union-attr]
    "Cast": lambda n, a, i, o: _cast(a, i[0], n),  # type: ignore[arg-type]
    "Constant": lambda n, a, i, o: _constant(n, a),
    "ConstantOfShape": lambda n, a, i, o: _constant_of_shape(n, i[0]),  # type: ignore[arg-type]
    "Expand": lambda n, a, i, o: _expand(i[0], i[1]),  # type: ignore[arg-type]
    "Tile": lambda n, a, i, o: i[0].repeat(*_ints(i[1])),  # type: ignore[union-attr]
    "Range": lambda n, a, i, o: torch.arange(i[0].item(), i[1].item(), i[2].item(), dtype=i[0].dtype),  # type: ignore[union-attr]
    "Resize": lambda n, a, i, o: _resize(n, a, i),
    "Upsample": lambda n, a, i, o: _resize(n, a, i),
    "Pad": lambda n, a, i, o: _pad(n, a, i),
    "ReduceMean": lambda n, a, i, o: _reduce("mean", a, i),
    "ReduceSum": lambda n, a, i, o: _reduce("sum", a, i),
    "ReduceMax": lambda n, a, i, o: _reduce("max", a, i),
    "ReduceMin": lambda n, a, i, o: _reduce("min", a, i),
}



def _fold(fn: Callable[[Tensor, Tensor], Tensor], inputs: Sequence[Tensor | None]) -> Tensor:
    out = inputs[0]
    assert out is not None
    for t in inputs[1:]:
        assert t is not None
        out = fn(out, t)
    return out


class TorchGraph:
    """An ONNX model (default domain only, no subgraphs) as an eager PyTorch computation."""

    def __init__(self, model: onnx.ModelProto, *, channels_last: bool = True) -> None:
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        bad = sorted({n.op_type for n in g.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS})
        if bad:
            first = next(n for n in g.node if n.op_type in bad)
            raise UnsupportedOp(
                f"the PyTorch evaluator does not support op {', '.join(bad)} (first: node '{first.name}')"
            )
        self.nodes = list(g.node)
        self.attrs = [_attrs(n) for n in self.nodes]
        self.constants: dict[str, Tensor] = {
            t.name: torch.from_numpy(np.array(numpy_helper.to_array(t), copy=True)) for t in g.initializer
        }
        # PyTorch's CPU convolutions (depthwise above all, and every one with autograd on) run
        # several times faster on channels-last tensors: 4-D weights and inputs are stored so.
        self.channels_last = channels_last
        if channels_last:
            for name, t in self.constants.items():
                if t.dim() == 4 and t.is_floating_point():
                    self.constants[name] = t.contiguous(memory_format=torch.channels_last)
        self.input_names = tuple(i.name for i in g.input if i.name not in self.constants)
        self.output_names = tuple(o.name for o in g.output)

    def run(self, feeds: Mapping[str, Tensor], *, override: Mapping[int, Override] | None = None) -> dict[str, Tensor]:
        """The graph's outputs for ``feeds``; ``override[i]`` computes node ``i``'s outputs instead."""
        values: dict[str, Tensor] = dict(self.constants)
        for k, v in feeds.items():
            if self.channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
            values[k] = v
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise ModelError(f"missing model inputs: {', '.join(missing)}")
        remaining = _last_uses(self.nodes, self.output_names)
        for i, node in enumerate(self.nodes):
            inputs = [values[name] if name else None for name in node.input]
            if override is not None and i in override:
                outs: Any = override[i](node, inputs)
            else:
                outs = _OPS[node.op_type](node, self.attrs[i], inputs, self.opset)
            if isinstance(outs, Tensor):
                outs = [outs]
            for name, value in zip(node.output, outs, strict=False):
                if name:
                    values[name] = value
            for name in node.input:  # free what no later node reads (keeps autograd's copies only)
                if name and remaining.get(name) == i and name not in self.constants:
                    values.pop(name, None)
        return {name: values[name] for name in self.output_names}

    def run_node(self, index: int, inputs: list[Tensor | None]) -> list[Tensor]:
        """Node ``index`` as the graph has it, on ``inputs`` (an override's float form)."""
        node = self.nodes[index]
        out = _OPS[node.op_type](node, self.attrs[index], inputs, self.opset)
        return [out] if isinstance(out, Tensor) else list(out)


def _last_uses(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> dict[str, int]:
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                last[name] = i
    for name in outputs:
        last[name] = len(nodes)
    return last
