"""Quantization-aware training (the ``qat`` extra: PyTorch).

Fake-quantized wrappers for Conv1d/2d/3d, ConvTranspose2d, Linear and residual adds
(:class:`Add`), swapped into a copy of a model by type and module name; activation ranges from
quant's calibrators or a calibration cache; a short fine-tuning loop; export to Q/DQ ONNX that
follows TensorRT's explicit-quantization rules. See docs/QAT.md.

    from quant.qat import quantize_model, calibrate_model, fine_tune, export_onnx
    qmodel = quantize_model(model, exclude=["classifier.*"])
    calibrate_model(qmodel, calib_batches, method="entropy")
    fine_tune(qmodel, train_loader, config=TrainConfig(epochs=1, lr=1e-3))
    onnx_model = export_onnx(qmodel, example_input, input_names=["input"], output_names=["logits"])

Importing ``quant.qat`` is cheap; the names below load their module (and PyTorch) on first use,
and a missing PyTorch raises BackendUnavailableError naming the extra.
"""

from __future__ import annotations

import importlib
from typing import Any

from quant.errors import BackendUnavailableError

_EXPORTS: dict[str, str] = {
    "ActQuantizer": "quant.qat.modules",
    "Add": "quant.qat.modules",
    "QuantAdd": "quant.qat.modules",
    "QuantConv1d": "quant.qat.modules",
    "QuantConv2d": "quant.qat.modules",
    "QuantConv3d": "quant.qat.modules",
    "QuantConvTranspose2d": "quant.qat.modules",
    "QuantLinear": "quant.qat.modules",
    "quantize_model": "quant.qat.swap",
    "quantizers": "quant.qat.swap",
    "amax_dict": "quant.qat.swap",
    "AmaxInit": "quant.qat.calibrate",
    "calibrate_model": "quant.qat.calibrate",
    "load_amax": "quant.qat.calibrate",
    "quantization_disabled": "quant.qat.calibrate",
    "TrainConfig": "quant.qat.train",
    "TrainResult": "quant.qat.train",
    "TrainingError": "quant.qat.train",
    "fine_tune": "quant.qat.train",
    "load_checkpoint": "quant.qat.train",
    "export_onnx": "quant.qat.export",
    "export_float_onnx": "quant.qat.export",
    "onnx_tensor_names": "quant.qat.export",
    "finalize_qdq": "quant.qat.onnx_post",
    "check_qdq": "quant.qat.onnx_post",
    "torch_module_from_onnx": "quant.qat.onnx_loader",
    "quantizer_tensor_names": "quant.qat.onnx_loader",
    "QatOptions": "quant.qat.api",
    "QatOutcome": "quant.qat.api",
    "run_qat": "quant.qat.api",
    "qat_demo": "quant.qat.api",
    "qat_model": "quant.qat.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'quant.qat' has no attribute {name!r}")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "torch" or (exc.name or "").startswith("torch."):
            raise BackendUnavailableError(
                f"quant.qat.{name} needs PyTorch, which is not installed; install the qat extra: "
                "pip install 'quant[qat]'"
            ) from exc
        raise
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
