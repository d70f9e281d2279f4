"""Fake-quantized module wrappers for quantization-aware training.

Every wrapper is a subclass of the torch module it replaces (``QuantConv2d`` is an
``nn.Conv2d``), so parameters, ``state_dict`` keys and ``isinstance`` checks stay the same; it
adds an :class:`ActQuantizer` child (``input_quantizer``) and quantizes its weight on the fly.

Quantization scheme (what TensorRT's explicit quantization expects, see REFERENCE.md):
- symmetric signed INT8, zero point 0, levels -128..127, scale = amax / 127;
- activations (the module's input) per tensor, amax held in the ``amax`` buffer of the
  quantizer: set once by calibration or from a cache, then **frozen** (not trained);
- weights per output channel (axis 0; axis 1 for ConvTranspose), amax = max |w| of each channel,
  recomputed from the current weights at every forward, so a weight is never clipped and the
  exported INT8 weights are exactly the weights the last forward used.
Both use PyTorch's own ``torch.fake_quantize_per_tensor_affine`` /
``torch.fake_quantize_per_channel_affine`` (straight-through gradient inside the range, zero
outside), which the ONNX exporter turns into QuantizeLinear/DequantizeLinear pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from quant.errors import CalibrationError

QMIN = -128
QMAX = 127
# Smallest amax used for a quantizer or a weight channel: an all-zero channel would otherwise
# give scale 0 (division by zero); 2**-24 / 127 is still a normal float32.
MIN_AMAX = 2.0**-24


class ActQuantizer(nn.Module):
    """Per-tensor symmetric INT8 fake quantization of an activation with a frozen amax.

    ``amax`` is a float32 buffer (NaN until calibrated, so it travels in ``state_dict`` and
    checkpoints). ``enabled=False`` passes tensors through unchanged (used while calibrating,
    and for quantizers whose calibration found no range).
    """

    amax: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("amax", torch.tensor(float("nan"), dtype=torch.float32))
        self.enabled = True
        # Set by quantize_model(): the qualified name used in messages and amax dictionaries.
        self.qualified_name = "input_quantizer"

    @property
    def is_calibrated(self) -> bool:
        return bool(torch.isfinite(self.amax).item())

    def set_amax(self, value: float) -> None:
        """Set the range; values below :data:`MIN_AMAX` (e.g. an all-zero tensor) are raised to it."""
        if not math.isfinite(value) or value < 0:
            raise CalibrationError(
                f"quantizer '{self.qualified_name}': amax must be a finite non-negative number, got {value!r}; "
                "check the calibration data for NaN/inf activations"
            )
        self.amax.fill_(max(float(value), MIN_AMAX))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if not self.is_calibrated:
            raise CalibrationError(
                f"quantizer '{self.qualified_name}' has no amax; run quant.qat.calibrate_model() "
                "or quant.qat.load_amax() before using the quantized model"
            )
        scale = (self.amax / QMAX).to(device=x.device, dtype=torch.float32)
        zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, QMIN, QMAX)

    def extra_repr(self) -> str:
        amax = float(self.amax.item())
        return f"amax={amax:.6g}, enabled={self.enabled}"


def weight_scale(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-channel symmetric INT8 scale (max |w| / 127 along every axis but ``axis``), detached."""
    with torch.no_grad():
        dims = [d for d in range(weight.dim()) if d != axis]
        amax = weight.detach().abs().amax(dim=dims).float().clamp(min=MIN_AMAX)
        return amax / QMAX


def fake_quant_weight(weight: torch.Tensor, axis: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantize ``weight`` per channel along ``axis`` (scale from its max unless given)."""
    if scale is None:
        scale = weight_scale(weight, axis)
    zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.device), zero_point, axis, QMIN, QMAX)


class QuantModule(nn.Module):
    """Mix-in of the wrappers: one input quantizer, per-channel weight fake quantization.

    Subclasses set ``weight_axis``. ``weight_quant_enabled`` can be turned off (the calibration
    pass runs the float model); ``_export_weight_scale`` is set only while exporting so the
    weight scale becomes a constant of the ONNX graph instead of a chain of reductions.
    """

    weight_axis: ClassVar[int] = 0
    weight: torch.Tensor

    input_quantizer: ActQuantizer
    weight_quant_enabled: bool
    _export_weight_scale: torch.Tensor | None

    def _init_quant(self) -> None:
        self.input_quantizer = ActQuantizer()
        self.weight_quant_enabled = True
        self._export_weight_scale = None

    def quantizers(self) -> dict[str, ActQuantizer]:
        """The activation quantizers of this module by attribute name."""
        return {"input_quantizer": self.input_quantizer}

    def quant_weight(self) -> torch.Tensor:
        if not self.weight_quant_enabled:
            return self.weight
        return fake_quant_weight(self.weight, self.weight_axis, self._export_weight_scale)


def _copy_state(src: nn.Module, dst: nn.Module) -> None:
    """Make ``dst`` use ``src``'s parameters and buffers (the same tensors, not copies)."""
    for name, param in src.named_parameters(recurse=False):
        setattr(dst, name, param)
    for name, buf in src.named_buffers(recurse=False):
        dst.register_buffer(name, buf)
    dst.train(src.training)


class _QuantConvNd(QuantModule):
    _float_type: ClassVar[type[nn.Module]]

    @classmethod
    def from_float(cls, mod: nn.Module) -> Any:
        """A wrapper sharing ``mod``'s parameters (call on a copy to keep the original untouched)."""
        if type(mod) is not cls._float_type:
            raise TypeError(f"{cls.__name__}.from_float expects {cls._float_type.__name__}, got {type(mod).__name__}")
        conv: Any = mod
        kwargs: dict[str, Any] = {
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "groups": conv.groups,
            "bias": conv.bias is not None,
            "padding_mode": conv.padding_mode,
            "device": conv.weight.device,
            "dtype": conv.weight.dtype,
        }
        if isinstance(mod, nn.ConvTranspose2d):
            kwargs["output_padding"] = conv.output_padding
        new: Any = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **kwargs)
        _copy_state(mod, new)
        return new


class QuantConv1d(_QuantConvNd, nn.Conv1d):
    """``nn.Conv1d`` with INT8 fake-quantized input (per tensor) and weight (per output channel)."""

    _float_type = nn.Conv1d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_quant()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(input), self.quant_weight(), self.bias)


class QuantConv2d(_QuantConvNd, nn.Conv2d):
    """``nn.Conv2d`` with INT8 fake-quantized input (per tensor) and weight (per output channel)."""

    _float_type = nn.Conv2d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_quant()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(input), self.quant_weight(), self.bias)


class QuantConv3d(_QuantConvNd, nn.Conv3d):
    """``nn.Conv3d`` with INT8 fake-quantized input (per tensor) and weight (per output channel)."""

    _float_type = nn.Conv3d

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.Conv3d.__init__(self, *args, **kwargs)
        self._init_quant()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(input), self.quant_weight(), self.bias)


class QuantConvTranspose2d(_QuantConvNd, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with INT8 fake quantization; weight channels on axis 1 (its outputs)."""

    _float_type = nn.ConvTranspose2d
    weight_axis = 1

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        nn.ConvTranspose2d.__init__(self, *args, **kwargs)
        self._init_quant()

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        padding: Any = self.padding
        output_padding = self._output_padding(
            input, output_size, list(self.stride), list(padding), list(self.kernel_size),
            num_spatial_dims, list(self.dilation),
        )
        return F.conv_transpose2d(
            self.input_quantizer(input), self.quant_weight(), self.bias, self.stride, padding,
            output_padding, self.groups, self.dilation,
        )


class QuantLinear(QuantModule, nn.Linear):
    """``nn.Linear`` with INT8 fake-quantized input (per tensor) and weight (per output row)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_quant()

    @classmethod
    def from_float(cls, mod: nn.Module) -> QuantLinear:
        if type(mod) is not nn.Linear:
            raise TypeError(f"QuantLinear.from_float expects Linear, got {type(mod).__name__}")
        new = cls(mod.in_features, mod.out_features, mod.bias is not None,
                  device=mod.weight.device, dtype=mod.weight.dtype)
        _copy_state(mod, new)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(input), self.quant_weight(), self.bias)


class Add(nn.Module):
    """A residual addition as a module, so QAT can quantize both of its inputs.

    Write ``self.add = quant.qat.Add()`` and ``out = self.add(out, identity)`` instead of
    ``out + identity`` in a model; :func:`quant.qat.quantize_model` swaps it for :class:`QuantAdd`.
    Without quantization it is exactly ``a + b``.
    """

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class QuantAdd(Add):
    """``a + b`` with both inputs INT8 fake-quantized per tensor (TensorRT's residual-add rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_quantizer = ActQuantizer()
        self.other_quantizer = ActQuantizer()

    @classmethod
    def from_float(cls, mod: nn.Module) -> QuantAdd:
        new = cls()
        new.train(mod.training)
        return new

    def quantizers(self) -> dict[str, ActQuantizer]:
        return {"input_quantizer": self.input_quantizer, "other_quantizer": self.other_quantizer}

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.input_quantizer(a) + self.other_quantizer(b)


# Float type -> wrapper. Matching is by exact type: a subclass of nn.Conv2d may have its own
# forward, which a wrapper would silently replace.
QUANT_MODULES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.Linear: QuantLinear,
    Add: QuantAdd,
}


def quantizer_inputs(module: nn.Module, args: Sequence[Any]) -> dict[str, Any]:
    """Which forward argument each activation quantizer of a wrapper sees (for calibration hooks)."""
    if isinstance(module, QuantAdd):
        return {"input_quantizer": args[0], "other_quantizer": args[1]}
    return {"input_quantizer": args[0]}
