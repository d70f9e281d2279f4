"""Checks of a Q/DQ model against TensorRT's INT8 explicit-quantization rules that TensorRT's
parser does not enforce itself (pure: ONNX in, problems out).

TensorRT quantizes INT8 activations per tensor (one scale per activation tensor; per-channel and
block scales are for weights). Its parser refuses a non-zero zero point itself (``Non-zero zero
point is not supported``), so that rule is left to it, with its own message. A per-channel scale
on an activation, however, is accepted by the TensorRT-RTX 1.7 parser and builder without a word
(measured), so quant refuses it before TensorRT sees the model: an engine built from it would
not be the INT8 model quant's placement and evaluation describe.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from quant.errors import ModelError

_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _weight_tensors(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> set[str]:
    """Tensors that are weights: constants, and the outputs of Q/DQ nodes applied to constants
    (a float weight quantized in the graph: W -> Q -> DQ)."""
    weights = set(constants)
    changed = True
    while changed:
        changed = False
        for node in model.graph.node:
            if node.op_type in _QDQ and node.input and node.input[0] in weights:
                for out in node.output:
                    if out not in weights:
                        weights.add(out)
                        changed = True
    return weights


def qdq_rule_problems(model: onnx.ModelProto) -> Iterator[str]:
    """One message per Q/DQ node that quantizes an activation with more than one scale."""
    constants = _constants(model)
    weights = _weight_tensors(model, constants)
    for i, node in enumerate(model.graph.node):
        if node.op_type not in _QDQ or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        if node.input[0] in weights:
            continue  # weights may be per-channel
        scale = constants.get(node.input[1])
        if scale is None or scale.size <= 1:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        name = node.name or f"#{i}"
        yield (
            f"node '{name}' ({node.op_type}): activation '{node.input[0]}' has {scale.size} scales (per-channel, "
            f"axis {axis}); TensorRT's INT8 explicit quantization takes one scale per activation tensor"
        )


def check_qdq_rules(model: onnx.ModelProto, *, source: str, trt: str = "TensorRT") -> None:
    """ModelError (one line, naming the first offending node) when :func:`qdq_rule_problems`
    finds anything."""
    problems = list(qdq_rule_problems(model))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelError(
            f"'{source}' is not a Q/DQ model {trt} builds as INT8: {problems[0]}{more}; quantize "
            f"activations per tensor (quant build does)"
        )


__all__ = ["check_qdq_rules", "qdq_rule_problems"]
