"""Export a fake-quantized PyTorch model as a Q/DQ ONNX model for TensorRT explicit quantization.

The export uses PyTorch's TorchScript-based ONNX exporter (``torch.onnx.export(...,
dynamo=False)``, still present and deprecated in torch 2.13; it needs no ``onnxscript``): it
maps ``fake_quantize_per_tensor_affine`` / ``fake_quantize_per_channel_affine`` straight to
QuantizeLinear/DequantizeLinear with INT8 zero points. The weight scales are frozen to
constants for the export, and :func:`quant.qat.onnx_post.finalize_qdq` then folds weights into
INT8 initializers, folds BatchNorm into the quantized convolutions and removes Identity and
Constant nodes, so the result follows the same rules as quant's post-training Q/DQ models.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from quant.errors import ModelError
from quant.qat.calibrate import ModelInputs, _as_args, check_calibrated, quantization_disabled
from quant.qat.modules import QMAX, QuantModule, weight_scale
from quant.qat.onnx_post import _constants_to_initializers, _Graph, _remove_identities, finalize_qdq
from quant.qat.swap import quantizers

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


@contextlib.contextmanager
def _frozen_weight_scales(model: nn.Module) -> Iterator[None]:
    mods = [m for m in model.modules() if isinstance(m, QuantModule)]
    try:
        for m in mods:
            m._export_weight_scale = weight_scale(m.weight, m.weight_axis).clone()
        yield
    finally:
        for m in mods:
            m._export_weight_scale = None


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _torch_export(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool,
    opset: int,
) -> onnx.ModelProto:
    # A private temporary directory (removed afterwards): the exporter writes a file.
    with tempfile.TemporaryDirectory(prefix="quant-qat-") as tmp:
        return _torch_export_to(model, args, Path(tmp) / "model.onnx", input_names=input_names,
                                output_names=output_names, dynamic_batch=dynamic_batch, opset=opset)


def _torch_export_to(
    model: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool,
    opset: int,
) -> onnx.ModelProto:
    dynamic_axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
    with warnings.catch_warnings():
        # torch 2.9+ warns that the TorchScript exporter is deprecated; it is what we want here.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        try:
            torch.onnx.export(
                model, args, str(path), dynamo=False, opset_version=opset, input_names=list(input_names),
                output_names=list(output_names), dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ModelError(
                f"torch.onnx.export of the QAT model failed: {exc}; the model must be traceable "
                "(no data-dependent Python control flow) with the given example input"
            ) from exc
    return onnx.load(str(path))


def export_onnx(
    model: nn.Module,
    example_inputs: ModelInputs,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export a calibrated quantized model (eval-mode semantics) as a finalized Q/DQ ModelProto.

    The model is left as it was (training mode, weight scale behaviour). Raises
    CalibrationError when a quantizer has no amax, ModelError when export fails.
    """
    if opset < 13:
        raise ModelError(f"opset {opset} has no per-channel DequantizeLinear; use opset 13 or newer")
    check_calibrated(model)
    args = tuple(t.detach() for t in _as_args(example_inputs))
    with _eval_mode(model), _frozen_weight_scales(model), torch.no_grad():
        raw = _torch_export(model, args, input_names=input_names, output_names=output_names,
                            dynamic_batch=dynamic_batch, opset=opset)
    final = finalize_qdq(raw)
    final.producer_name = "quant.qat"
    onnx.checker.check_model(final)
    return final


def export_float_onnx(
    model: nn.Module,
    example_inputs: ModelInputs,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
) -> onnx.ModelProto:
    """Export a float model, or a quantized one with its fake quantization switched off."""
    args = tuple(t.detach() for t in _as_args(example_inputs))
    with _eval_mode(model), quantization_disabled(model), torch.no_grad():
        proto = _torch_export(model, args, input_names=input_names, output_names=output_names,
                              dynamic_batch=dynamic_batch, opset=opset)
    proto.producer_name = "quant.qat"
    return proto


def onnx_tensor_names(
    model: nn.Module,
    example_inputs: ModelInputs,
    *,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("output",),
    opset: int = DEFAULT_OPSET,
) -> dict[str, tuple[str, ...]]:
    """Map each quantizer of ``model`` to the ONNX names of the tensor it quantizes.

    The names are those PyTorch's TorchScript exporter gives the model (``/layer1/layer1.0/
    relu/Relu_output_0``, graph inputs by ``input_names``); the same model exported the same way
    for post-training calibration has the same names, so its cache matches. A BatchNorm output
    also gets the name of the convolution output before it, as a second candidate: exporting
    the float model folds the BatchNorm and the tensor keeps the convolution's name.

    Each quantizer is tagged with a distinct temporary amax (quantizer *i* gets scale *i + 1*),
    the model exported, and every QuantizeLinear's scale read back; the amax values are restored.
    """
    all_q = list(quantizers(model).items())
    saved = [(q, q.amax.clone(), q.enabled) for _, q in all_q]
    args = tuple(t.detach() for t in _as_args(example_inputs))
    try:
        with torch.no_grad():
            for i, (_, q) in enumerate(all_q):
                q.amax.fill_(float(QMAX * (i + 1)))
                q.enabled = True
        with _eval_mode(model), _frozen_weight_scales(model), torch.no_grad():
            raw = _torch_export(model, args, input_names=input_names, output_names=output_names,
                                dynamic_batch=True, opset=opset)
    finally:
        with torch.no_grad():
            for q, amax, enabled in saved:
                q.amax.copy_(amax)
                q.enabled = enabled
    g = _Graph(raw.graph)
    _constants_to_initializers(g)
    _remove_identities(g)
    producers = g.producers()
    out: dict[str, tuple[str, ...]] = {}
    for node in g.nodes:
        if node.op_type != "QuantizeLinear" or node.input[0] in g.inits or node.input[1] not in g.inits:
            continue
        scale = g.inits[node.input[1]]
        if scale.size != 1:
            continue
        index = round(float(scale.reshape(())) - 1)
        if 0 <= index < len(all_q) and abs(float(scale.reshape(())) - (index + 1)) < 1e-3:
            name = node.input[0]
            prod = producers.get(name)
            names: tuple[str, ...] = (name,)
            if prod is not None and prod.op_type == "BatchNormalization":
                before = producers.get(prod.input[0])
                if before is not None and before.op_type in ("Conv", "ConvTranspose", "Gemm"):
                    names = (name, prod.input[0])
            out[all_q[index][0]] = names
    missing = [name for name, _ in all_q if name not in out]
    if missing:
        log.debug("no ONNX tensor found for quantizers %s", missing)
    return out
