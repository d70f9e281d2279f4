"""Which arithmetic computes each precision, and how the report names it.

Everything that predicts TensorRT (the ``int8`` precision: TensorRT's Q/DQ placement) runs with
Q/DQ as float maths, exact on every CPU. Only ``int8-ort``, the CPU deployment form, runs ONNX
Runtime's fused integer kernels, because what it must report is what the deployed model does on
this CPU. See docs/DESIGN.md, "INT8 arithmetic".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

#: Metadata keys the ONNX Runtime form carries (written by quant.pipeline.quantize).
CPU_CLASS_KEY = "quant.cpu_class"
WEIGHT_TYPE_KEY = "quant.weight_type"

#: The precision whose numbers are ONNX Runtime's fused integer kernels on this machine.
FUSED_PRECISIONS = frozenset({"int8-ort"})


def int8_mode(precision: str) -> str:
    """The :class:`~quant.backends.onnxruntime.OrtRunner` ``int8`` mode for ``precision``."""
    return "fused" if precision in FUSED_PRECISIONS else "exact"


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def stamp_cpu(model: onnx.ModelProto, cpu_class: str, weight_type: str) -> None:
    """Record in ``model`` (in place) the CPU class its ONNX Runtime form was built for."""
    props = {p.key: p for p in model.metadata_props}
    for key, value in ((CPU_CLASS_KEY, cpu_class), (WEIGHT_TYPE_KEY, weight_type)):
        if key in props:
            props[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value


def describe(precision: str, model: onnx.ModelProto) -> str | None:
    """How ``precision`` is computed, for the report's ``environment.int8_arithmetic`` (None for
    float precisions)."""
    from quant.backends.cpu import fused_kernel_path, host_cpu
    from quant.report.schema import EXACT_ARITHMETIC

    if not precision.startswith("int8"):
        return None
    if int8_mode(precision) == "exact":
        return EXACT_ARITHMETIC
    meta = _metadata(model)
    weights = meta.get(WEIGHT_TYPE_KEY, "int8")
    built = meta.get(CPU_CLASS_KEY, "unknown")
    return f"fused ONNX Runtime integer kernels, {fused_kernel_path(host_cpu(), weights)}; built for cpu {built}"


def cpu_mismatch(precision: str, model: onnx.ModelProto) -> str | None:
    """One line when ``precision`` runs fused on a CPU class other than the one it was built for."""
    from quant.backends.cpu import host_cpu

    if int8_mode(precision) != "fused":
        return None
    built = _metadata(model).get(CPU_CLASS_KEY)
    here = host_cpu().int8_class
    if built is None or built == here:
        return None
    return (
        f"{precision}: the model was built for cpu class '{built}' but runs on a '{here}' CPU here; its numbers "
        f"are this CPU's integer kernels, not those of the CPU it was built for (build with --cpu {here} "
        f"or --cpu auto to deploy here)"
    )
