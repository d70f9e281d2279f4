"""Rebuild a small ONNX CNN as a PyTorch module, so QAT can fine-tune a model quant only has as ONNX.

Supported ops (the demo's op set and a few neighbours): Conv (1-D/2-D/3-D, symmetric or
asymmetric pads), ConvTranspose (2-D), BatchNormalization, Relu, LeakyRelu, Sigmoid, Tanh,
Clip, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape (constant shape), Gemm
(constant B, transA=0), MatMul (constant 2-D B), Add (two activations: a :class:`quant.qat.Add`
so residual adds get quantized; activation + constant: a bias), Mul/Sub/Div by a constant,
Softmax, Dropout and Identity. Anything else raises ModelError naming the node: give the model
as a PyTorch factory instead.

Every Conv, ConvTranspose, Gemm/MatMul and Add becomes a torch module named after the ONNX
node (sanitised: ``conv1``, ``fc1``...) that include/exclude patterns can select, and the module
records the ONNX tensors it reads (:attr:`OnnxGraphModule.onnx_inputs`), so amax values of a
calibration cache for that ONNX model map onto the QAT quantizers exactly
(:func:`quantizer_tensor_names`). The module runs the graph in the ONNX node order; it is
traceable, so the QAT export gives back the same graph with Q/DQ added.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from quant.errors import ModelError
from quant.qat.modules import Add

_ACTIVATIONS: dict[str, Callable[[onnx.NodeProto], nn.Module]] = {
    "Relu": lambda n: nn.ReLU(),
    "Sigmoid": lambda n: nn.Sigmoid(),
    "Tanh": lambda n: nn.Tanh(),
    "LeakyRelu": lambda n: nn.LeakyReLU(float(_attr(n, "alpha", 0.01))),
}


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _sym_pads(node: onnx.NodeProto, rank: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(symmetric padding, explicit F.pad list or None when the pads are asymmetric)."""
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad not in ("NOTSET", "VALID"):
        raise ModelError(f"node '{node.name}' ({node.op_type}): auto_pad={auto_pad} is not supported; "
                         "re-export the model with explicit pads")
    pads = list(_attr(node, "pads", [0] * (2 * rank)))
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return tuple(begin), None
    # F.pad takes (last dim begin, last dim end, previous dim begin, ...).
    explicit: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        explicit += [b, e]
    return (0,) * rank, tuple(explicit)


class OnnxGraphModule(nn.Module):
    """A PyTorch module that executes an ONNX graph node by node (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_names: list[str] = []
        self.output_names: list[str] = []
        # (module attribute name or "", callable, input tensor names, output tensor name)
        self._plan: list[tuple[str, Callable[..., torch.Tensor] | None, list[str], str]] = []
        self.onnx_inputs: dict[str, tuple[str, ...]] = {}

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs, strict=True))
        for attr, fn, ins, out in self._plan:
            args = [env[i] if i in env else getattr(self, _buffer_name(i)) for i in ins]
            env[out] = getattr(self, attr)(*args) if attr else fn(*args)  # type: ignore[misc]
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _buffer_name(tensor: str) -> str:
    return "const_" + re.sub(r"\W", "_", tensor)


def _module_name(node: onnx.NodeProto, index: int, taken: set[str], owner: nn.Module) -> str:
    base = re.sub(r"\W", "_", node.name).strip("_") or f"{node.op_type.lower()}{index}"
    if base[0].isdigit():
        base = f"{node.op_type.lower()}_{base}"
    name = base
    k = 1
    while name in taken or hasattr(owner, name):
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def torch_module_from_onnx(model: onnx.ModelProto) -> OnnxGraphModule:
    """Build an :class:`OnnxGraphModule` with the model's weights (float32, eval mode).

    Raises ModelError for an unsupported op or attribute, naming the node.
    """
    try:
        g = onnx.shape_inference.infer_shapes(model).graph
    except (onnx.shape_inference.InferenceError, ValueError, RuntimeError):
        # Shape inference is only a hint (the rank of BatchNorm inputs); go on without it.
        g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts: dict[str, np.ndarray] = dict(inits)
    for node in g.node:
        if node.op_type == "Constant":
            a = node.attribute[0]
            if a.name != "value":
                raise ModelError(f"node '{node.name}': Constant with {a.name} is not supported")
            consts[node.output[0]] = numpy_helper.to_array(a.t)
    init_names = set(inits)
    m = OnnxGraphModule()
    m.input_names = [i.name for i in g.input if i.name not in init_names]
    m.output_names = [o.name for o in g.output]
    taken: set[str] = set()
    used_consts: set[str] = set()

    def const(name: str, node: onnx.NodeProto) -> np.ndarray:
        if name not in consts:
            raise ModelError(
                f"node '{node.name}' ({node.op_type}): input '{name}' must be a constant (initializer) "
                "for quant's ONNX-to-PyTorch loader; give the model as a PyTorch factory instead"
            )
        return np.asarray(consts[name])

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    def add_module(node: onnx.NodeProto, index: int, mod: nn.Module, ins: list[str], record: bool) -> None:
        name = _module_name(node, index, taken, m)
        m.add_module(name, mod)
        m._plan.append((name, None, ins, node.output[0]))
        if record:
            m.onnx_inputs[name] = tuple(ins)

    def add_fn(fn: Callable[..., torch.Tensor], ins: list[str], out: str) -> None:
        m._plan.append(("", fn, ins, out))

    def add_const_operand(name: str, node: onnx.NodeProto) -> str:
        buf = _buffer_name(name)
        if name not in used_consts:
            m.register_buffer(buf, t(const(name, node)))
            used_consts.add(name)
        return name

    for index, node in enumerate(g.node):
        op = node.op_type
        if len(node.output) != 1 and op not in ("BatchNormalization", "Dropout", "MaxPool"):
            raise ModelError(f"node '{node.name}' ({op}): more than one output is not supported")
        if op == "Constant":
            continue
        out = node.output[0]
        if op in ("Conv", "ConvTranspose"):
            w = const(node.input[1], node)
            rank = w.ndim - 2
            bias = const(node.input[2], node) if len(node.input) > 2 and node.input[2] else None
            groups = int(_attr(node, "group", 1))
            strides = tuple(_attr(node, "strides", [1] * rank))
            dilations = tuple(_attr(node, "dilations", [1] * rank))
            pads, explicit = _sym_pads(node, rank)
            if op == "Conv":
                cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}.get(rank)
                if cls is None:
                    raise ModelError(f"node '{node.name}': Conv with {rank} spatial dims is not supported")
                conv_cls: Any = cls
                conv: Any = conv_cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=strides,
                                     padding=pads, dilation=dilations, groups=groups, bias=bias is not None)
            else:
                if rank != 2 or explicit is not None or _attr(node, "output_shape", None) is not None:
                    raise ModelError(f"node '{node.name}': only 2-D ConvTranspose with symmetric pads is supported")
                out_pad = tuple(_attr(node, "output_padding", [0, 0]))
                convt_cls: Any = nn.ConvTranspose2d
                conv = convt_cls(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride=strides,
                                 padding=pads, output_padding=out_pad, groups=groups,
                                 dilation=dilations, bias=bias is not None)
            with torch.no_grad():
                conv.weight.copy_(t(w))
                if bias is not None:
                    conv.bias.copy_(t(bias))
            x = node.input[0]
            if explicit is not None:
                padded = f"{out}__padded"
                add_fn(lambda a, p=explicit: F.pad(a, p), [x], padded)
                add_module(node, index, conv, [padded], record=False)
                m.onnx_inputs[m._plan[-1][0]] = (x,)
            else:
                add_module(node, index, conv, [x], record=True)
        elif op == "BatchNormalization":
            if int(_attr(node, "training_mode", 0)) != 0:
                raise ModelError(f"node '{node.name}': BatchNormalization in training mode is not supported")
            scale, b, mean, var = (const(i, node) for i in node.input[1:5])
            bn_cls = {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
            bn: Any = bn_cls.get(_rank_hint(g, node.input[0]), nn.BatchNorm2d)(
                scale.shape[0], eps=float(_attr(node, "epsilon", 1e-5)),
                momentum=1.0 - float(_attr(node, "momentum", 0.9)),
            )
            with torch.no_grad():
                bn.weight.copy_(t(scale))
                bn.bias.copy_(t(b))
                bn.running_mean.copy_(t(mean))
                bn.running_var.copy_(t(var))
            add_module(node, index, bn, [node.input[0]], record=False)
        elif op in _ACTIVATIONS:
            add_module(node, index, _ACTIVATIONS[op](node), [node.input[0]], record=False)
        elif op == "Clip":
            lo = float(const(node.input[1], node)) if len(node.input) > 1 and node.input[1] else None
            hi = float(const(node.input[2], node)) if len(node.input) > 2 and node.input[2] else None
            add_fn(lambda a, lo=lo, hi=hi: torch.clamp(a, lo, hi), [node.input[0]], out)
        elif op in ("MaxPool", "AveragePool"):
            if len(node.output) > 1 and node.output[1]:
                raise ModelError(f"node '{node.name}': MaxPool with an Indices output is not supported")
            kernel = tuple(_attr(node, "kernel_shape", []))
            rank = len(kernel)
            strides = tuple(_attr(node, "strides", [1] * rank))
            pads, explicit = _sym_pads(node, rank)
            if explicit is not None:
                raise ModelError(f"node '{node.name}': {op} with asymmetric pads is not supported")
            ceil = bool(_attr(node, "ceil_mode", 0))
            pool_cls: Any
            if op == "MaxPool":
                dil = tuple(_attr(node, "dilations", [1] * rank))
                pool_cls = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[rank]
                pool: nn.Module = pool_cls(kernel, strides, pads, dil, ceil_mode=ceil)
            else:
                include_pad = bool(_attr(node, "count_include_pad", 0))
                pool_cls = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[rank]
                pool = pool_cls(kernel, strides, pads, ceil_mode=ceil, count_include_pad=include_pad)
            add_module(node, index, pool, [node.input[0]], record=False)
        elif op == "GlobalAveragePool":
            add_fn(lambda a: a.mean(dim=tuple(range(2, a.dim())), keepdim=True), [node.input[0]], out)
        elif op == "Flatten":
            axis = int(_attr(node, "axis", 1))
            if axis == 1:
                add_fn(lambda a: torch.flatten(a, 1), [node.input[0]], out)
            else:
                add_fn(lambda a, axis=axis: a.reshape(int(np.prod(a.shape[:axis])), -1), [node.input[0]], out)
        elif op == "Reshape":
            shape = [int(v) for v in const(node.input[1], node).reshape(-1)]
            if int(_attr(node, "allowzero", 0)):
                raise ModelError(f"node '{node.name}': Reshape with allowzero=1 is not supported")
            add_fn(lambda a, s=shape: a.reshape([a.shape[i] if v == 0 else v for i, v in enumerate(s)]),
                   [node.input[0]], out)
        elif op in ("Gemm", "MatMul"):
            b_mat = const(node.input[1], node)
            if b_mat.ndim != 2:
                raise ModelError(f"node '{node.name}': {op} needs a 2-D constant second input")
            bias = None
            if op == "Gemm":
                if int(_attr(node, "transA", 0)):
                    raise ModelError(f"node '{node.name}': Gemm with transA=1 is not supported")
                alpha = float(_attr(node, "alpha", 1.0))
                beta = float(_attr(node, "beta", 1.0))
                weight = b_mat if int(_attr(node, "transB", 0)) else b_mat.T
                weight = weight * alpha
                if len(node.input) > 2 and node.input[2]:
                    c = const(node.input[2], node)
                    if c.size not in (1, weight.shape[0]):
                        raise ModelError(f"node '{node.name}': Gemm bias of shape {c.shape} is not supported")
                    bias = np.broadcast_to(c.reshape(-1), (weight.shape[0],)) * beta
            else:
                weight = b_mat.T
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                lin.weight.copy_(t(weight))
                if bias is not None:
                    lin.bias.copy_(t(bias))
            add_module(node, index, lin, [node.input[0]], record=True)
        elif op in ("Add", "Sub", "Mul", "Div"):
            a_name, b_name = node.input[0], node.input[1]
            a_const, b_const = a_name in consts, b_name in consts
            if op == "Add" and not a_const and not b_const:
                add_module(node, index, Add(), [a_name, b_name], record=True)
                continue
            if a_const and b_const:
                raise ModelError(f"node '{node.name}': {op} of two constants; fold constants first")
            for name in (a_name, b_name):
                if name in consts:
                    add_const_operand(name, node)
            fns: dict[str, Any] = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
            fn: Callable[..., torch.Tensor] = fns[op]
            add_fn(fn, [a_name, b_name], out)
        elif op == "Softmax":
            axis = int(_attr(node, "axis", -1))
            add_fn(lambda a, axis=axis: torch.softmax(a, axis), [node.input[0]], out)
        elif op in ("Identity", "Dropout"):
            add_fn(lambda a: a, [node.input[0]], out)
        else:
            raise ModelError(
                f"node '{node.name}' ({op}) is not supported by quant's ONNX-to-PyTorch loader "
                "(Conv, BatchNormalization, Relu, MaxPool, Flatten/Reshape, Gemm and a few more are); "
                "give the model as a PyTorch factory with --model module:function"
            )
    return m.eval()


def _rank_hint(g: onnx.GraphProto, tensor: str) -> int:
    for vi in (*g.value_info, *g.input):
        if vi.name == tensor and vi.type.tensor_type.HasField("shape"):
            return len(vi.type.tensor_type.shape.dim)
    return 4


def quantizer_tensor_names(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Quantizer name -> the ONNX tensor it reads, for an :class:`OnnxGraphModule` (float or
    quantized: the names are those :func:`quant.qat.quantize_model` gives the quantizers)."""
    if not isinstance(model, OnnxGraphModule):
        raise ModelError("quantizer_tensor_names needs a model built by torch_module_from_onnx")
    out: dict[str, tuple[str, ...]] = {}
    for name, inputs in model.onnx_inputs.items():
        mod = getattr(model, name, None)
        if isinstance(mod, Add):
            out[f"{name}.input_quantizer"] = (inputs[0],)
            out[f"{name}.other_quantizer"] = (inputs[1],)
        elif mod is not None:
            out[f"{name}.input_quantizer"] = (inputs[0],)
    return out
