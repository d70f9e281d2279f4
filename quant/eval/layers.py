"""Per-layer quantization error: each quantized layer's output in INT8 against FP32.

A *quantized layer* is a compute node of the Q/DQ model that TensorRT runs in INT8 (the rule of
:func:`quant.graph.inspect.precision_view`: Conv / ConvTranspose / Gemm / MatMul / residual Add
whose data inputs all come from DequantizeLinear). Its output tensor keeps its FP32 name, so the
same tensor can be fetched from both models.

Two errors are measured per layer, over the same batches, with streaming
:class:`~quant.eval.metrics.FidelityAccumulator` s (SQNR in dB, cosine, ...; memory per batch only):

* ``fidelity`` (*in the INT8 model*): the layer's output in the Q/DQ model against the FP32 model.
  This error accumulates: every layer after a lossy one inherits its error.
* ``local`` (*this layer alone*): the layer evaluated on the FP32 model's own inputs, passed
  through the layer's Q/DQ (same scales, same INT8 weights), against its FP32 output. It is the
  error this layer adds by itself, which is what points at the culprit (an outlier that stretched
  one tensor's amax). It is computed by a copy of each quantized node appended to the FP32 model
  (one extra run of those layers), and is None when the Q/DQ model's tensors cannot be matched to
  the FP32 model's (e.g. a Q/DQ model exported by another tool with other tensor names).

Layers are ranked worst first by the local SQNR (the accumulated SQNR when no local value exists),
then by the accumulated SQNR, then in graph order.

Cost: both models run on at most ``max_samples`` samples (default :data:`DEFAULT_MAX_SAMPLES`,
rounded up to whole batches) with every quantized layer's output fetched. A per-layer SQNR over
many elements settles early (the demo's layers on 32, 64 and 1,500 samples: the same worst layers,
every SQNR within about 1.5 dB). Per sample, ONNX Runtime runs the FP32 model plus one extra copy
of each quantized layer, and the Q/DQ model, without the fusions that exposing every layer output
prevents, and each layer's output is reduced twice. Measured on 2 CPU cores with ONNX's
``light_resnet50`` test model (ResNet-50 at 224 x 224, fixed batch 1, 70 INT8 layers): about 1.5 s
per sample, three times what evaluating its FP32 and INT8 models costs, so about 100 s for 64
samples. One batch holds about three copies of all those layer outputs
(FP32, local, INT8), hence the small default batch (:data:`DEFAULT_BATCH_SIZE`): ResNet-50's
70 layer outputs are about 67 MB per sample.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quant.errors import DataError, ModelError, UsageError
from quant.eval._fields import as_mapping, get_int, get_list, get_mapping, get_str
from quant.eval.metrics import FidelityAccumulator, FidelityMetrics

if TYPE_CHECKING:
    import onnx

    from quant.datasets.base import Batch, Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_SAMPLES",
    "LOCAL_SUFFIX",
    "LayerError",
    "QuantizedLayer",
    "layer_errors",
    "local_error_model",
    "quantized_layers",
    "rank_layers",
]

#: Samples used by :func:`layer_errors` unless told otherwise (rounded up to whole batches).
DEFAULT_MAX_SAMPLES = 64
#: Batch size used by the API for the layer analysis (every layer's output is held per batch).
DEFAULT_BATCH_SIZE = 8
#: Suffix of the tensors that carry each layer's local (this layer alone) INT8 output.
LOCAL_SUFFIX = "__quant_local"


@dataclass(frozen=True)
class QuantizedLayer:
    """A node of a Q/DQ model that runs in INT8: its name, op, output and quantized inputs.

    ``inputs`` are the activation tensors quantized on the way in (the inputs of the
    QuantizeLinear nodes feeding it: the tensors whose calibrated amax was used); ``index`` is the
    node's position in the Q/DQ model's graph.
    """

    name: str
    op_type: str
    output: str
    inputs: tuple[str, ...]
    index: int


@dataclass(frozen=True)
class LayerError:
    """The quantization error of one layer's output against FP32 (see the module docstring)."""

    layer: str
    op_type: str
    tensor: str
    inputs: tuple[str, ...]
    position: int
    fidelity: FidelityMetrics
    local: FidelityMetrics | None = None

    @property
    def sqnr_db(self) -> float | None:
        """SQNR (dB) of the output in the INT8 model against FP32 (None: exact or undefined)."""
        return self.fidelity.sqnr_db

    @property
    def local_sqnr_db(self) -> float | None:
        """SQNR (dB) of the output of this layer alone in INT8 (None: not measured, exact or undefined)."""
        return None if self.local is None else self.local.sqnr_db

    @property
    def rank_key(self) -> tuple[float, float, int]:
        """Sort key, worst first: local SQNR (else accumulated), accumulated SQNR, graph position."""
        primary = self.local.sqnr_value if self.local is not None else self.fidelity.sqnr_value
        return (primary, self.fidelity.sqnr_value, self.position)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "op_type": self.op_type,
            "tensor": self.tensor,
            "inputs": list(self.inputs),
            "position": self.position,
            "fidelity": self.fidelity.to_dict(),
            "local": None if self.local is None else self.local.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "layer") -> LayerError:
        d = as_mapping(data, where)
        inputs = get_list(d, "inputs", where)
        if not all(isinstance(i, str) for i in inputs):
            from quant.errors import ReportError

            raise ReportError(f"field '{where}.inputs' should be a list of strings; the report is damaged")
        local = get_mapping(d, "local", where, nullable=True)
        return cls(
            layer=get_str(d, "layer", where),
            op_type=get_str(d, "op_type", where),
            tensor=get_str(d, "tensor", where),
            inputs=tuple(inputs),
            position=get_int(d, "position", where),
            fidelity=FidelityMetrics.from_dict(get_mapping(d, "fidelity", where), f"{where}.fidelity"),
            local=None if local is None else FidelityMetrics.from_dict(local, f"{where}.local"),
        )


def rank_layers(errors: Sequence[LayerError]) -> list[LayerError]:
    """The layers worst first (see :attr:`LayerError.rank_key`)."""
    return sorted(errors, key=lambda e: e.rank_key)


# --- which layers ---------------------------------------------------------------------------


def quantized_layers(model: onnx.ModelProto) -> list[QuantizedLayer]:
    """The INT8 layers of a Q/DQ model in graph order, with their output and quantized inputs."""
    from quant.graph._util import node_label, producers
    from quant.graph.inspect import precision_view

    g = model.graph
    int8 = {layer.name for layer in precision_view(model).layers if layer.precision == "int8"}
    prod = producers(g)
    layers: list[QuantizedLayer] = []
    for idx, node in enumerate(g.node):
        label = node_label(node, idx)
        if label not in int8 or not node.output or not node.output[0]:
            continue
        inputs: dict[str, None] = {}
        for name in node.input:
            dq = prod.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                inputs[q.input[0]] = None
        layers.append(QuantizedLayer(label, node.op_type, node.output[0], tuple(inputs), idx))
    return layers


def _graph_tensors(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {v.name for v in g.input} | {t.name for t in g.initializer}
    names.update(o for n in g.node for o in n.output if o)
    return names


def local_error_model(
    reference: onnx.ModelProto, quantized: onnx.ModelProto, layers: Sequence[QuantizedLayer]
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The FP32 model plus, for each layer, a copy of its quantized node fed from FP32 tensors.

    Each copy reads the FP32 model's activations through the layer's own QuantizeLinear /
    DequantizeLinear (same scales) and its INT8 weights, and writes ``<output>__quant_local``.
    Returns the new model and {layer output: local output tensor}; layers whose inputs cannot be
    traced back to FP32 tensors or initializers are left out (logged).
    """
    import onnx
    from onnx import helper

    from quant.graph._util import NameAllocator, all_names, default_opset, producers

    q_graph = quantized.graph
    q_inits = {t.name: t for t in q_graph.initializer}
    prod = producers(q_graph)
    out = onnx.ModelProto()
    out.CopyFrom(reference)
    ref_opset = default_opset(out) or 0
    q_opset = default_opset(quantized) or 0
    if ref_opset < q_opset:
        try:
            from onnx import version_converter

            out = version_converter.convert_version(out, q_opset)
            out.ir_version = max(out.ir_version, quantized.ir_version)
        except Exception as exc:  # the converter raises many types; local errors are optional
            logger.info("layer analysis: cannot bring the FP32 model to opset %d (%s); no local errors", q_opset, exc)
            return reference, {}
    fp32_tensors = _graph_tensors(out)
    names = NameAllocator(all_names(out))
    copied: dict[str, str] = {}  # Q/DQ-model initializer -> its copy in the new model
    new_inits: list[onnx.TensorProto] = []

    def copy_init(name: str) -> str:
        if name not in copied:
            t = onnx.TensorProto()
            t.CopyFrom(q_inits[name])
            t.name = names(f"{name}{LOCAL_SUFFIX}")
            copied[name] = t.name
            new_inits.append(t)
        return copied[name]

    traced: dict[str, str] = {}  # Q/DQ output in the Q/DQ model -> its copy (shared Q/DQ copied once)

    def trace(name: str, nodes: list[onnx.NodeProto], new: dict[str, str]) -> str | None:
        """The tensor of the new model that plays ``name``'s role, adding Q/DQ copies to ``nodes``."""
        if not name:
            return name
        if name in q_inits:
            return copy_init(name)
        if name in traced or name in new:
            return traced.get(name) or new[name]
        p = prod.get(name)
        if p is None or p.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            return name if name in fp32_tensors else None
        if p.op_type == "QuantizeLinear" and p.input[0] not in q_inits and p.input[0] not in fp32_tensors:
            return None  # the activation it quantizes has no FP32 counterpart
        ins: list[str] = []
        for i in p.input:
            if p.op_type == "QuantizeLinear" and i == p.input[0] and i not in q_inits:
                ins.append(i)  # the FP32 activation itself
                continue
            t = trace(i, nodes, new)
            if t is None:
                return None
            ins.append(t)
        copy = onnx.NodeProto()
        copy.CopyFrom(p)
        del copy.input[:]
        copy.input.extend(ins)
        del copy.output[:]
        copy.output.append(names(f"{p.output[0]}{LOCAL_SUFFIX}"))
        copy.name = names(f"{p.name or p.op_type}{LOCAL_SUFFIX}")
        nodes.append(copy)
        new[name] = copy.output[0]
        return copy.output[0]

    local: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    for layer in layers:
        node = q_graph.node[layer.index]
        nodes: list[onnx.NodeProto] = []
        new: dict[str, str] = {}
        inputs = [trace(i, nodes, new) for i in node.input]
        if any(i is None for i in inputs) or layer.output not in fp32_tensors:
            logger.info("layer analysis: no local error for layer '%s' (inputs not in the FP32 model)", layer.name)
            continue
        copy = helper.make_node(
            node.op_type,
            [str(i) for i in inputs],
            [names(f"{o}{LOCAL_SUFFIX}") if o else "" for o in node.output],
            name=names(f"{layer.name}{LOCAL_SUFFIX}"),
            domain=node.domain,
        )
        copy.attribute.extend(node.attribute)
        nodes.append(copy)
        added.extend(nodes)
        traced.update(new)
        local[layer.output] = copy.output[0]
    out.graph.node.extend(added)
    out.graph.initializer.extend(new_inits)
    return out, local


# --- measuring ------------------------------------------------------------------------------


def _select(layers: list[QuantizedLayer], tensors: Sequence[str] | None, model_name: str) -> list[QuantizedLayer]:
    if tensors is None:
        return layers
    by_output = {layer.output: layer for layer in layers}
    unknown = [t for t in tensors if t not in by_output]
    if unknown:
        raise ModelError(
            f"tensor '{unknown[0]}' is not the output of a quantized layer of model '{model_name}'"
            f" ({len(by_output)} quantized layers); pick outputs of INT8 Conv/Gemm/MatMul/Add nodes"
        )
    wanted = set(tensors)
    return [layer for layer in layers if layer.output in wanted]


def _take(batches: Iterator[Batch], max_samples: int) -> Iterator[Batch]:
    """Whole batches until at least ``max_samples`` samples were given; closes the source."""
    seen = 0
    try:
        for batch in batches:
            yield batch
            seen += batch.size
            if seen >= max_samples:
                return
    finally:
        close = getattr(batches, "close", None)
        if close is not None:  # a generator: release its files / worker threads now
            close()


def layer_errors(
    reference_model: onnx.ModelProto,
    quantized_model: onnx.ModelProto,
    dataset: Dataset,
    tensors: Sequence[str] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    local: bool = True,
    progress: bool = False,
    threads: int | None = None,
    reference_name: str = "fp32",
    quantized_name: str = "int8",
) -> list[LayerError]:
    """Quantization error of every quantized layer's output (or of ``tensors`` only), worst first.

    Both models run on the same batches (at most ``max_samples`` samples, rounded up to whole
    batches). ``local`` also measures each layer alone (see the module docstring). Errors: no
    quantized layer, or none whose output the FP32 model has -> ModelError; a tensor in
    ``tensors`` that is no quantized layer's output -> ModelError; no samples -> DataError.
    """
    from tqdm import tqdm

    from quant.backends.onnxruntime import OrtRunner

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"layer analysis batch size must be a positive integer (got {batch_size!r})")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise UsageError(f"layer analysis max_samples must be a positive integer (got {max_samples!r})")
    layers = quantized_layers(quantized_model)
    if not layers:
        raise ModelError(
            f"model '{quantized_name}' has no INT8 layer (no Conv/Gemm/MatMul/Add fed by DequantizeLinear); "
            "build it from a calibration cache first"
        )
    layers = _select(layers, tensors, quantized_name)
    fp32_tensors = _graph_tensors(reference_model)
    matched = [layer for layer in layers if layer.output in fp32_tensors]
    if not matched:
        raise ModelError(
            f"none of the {len(layers)} quantized layer outputs of model '{quantized_name}' (first: "
            f"'{layers[0].output}') is a tensor of model '{reference_name}'; were both made from the same model?"
        )
    if len(matched) < len(layers):
        logger.info(
            "layer analysis: %d quantized layers have outputs the FP32 model lacks; left out",
            len(layers) - len(matched),
        )
    layers = matched
    ref_model, local_names = (
        local_error_model(reference_model, quantized_model, layers) if local else (reference_model, {})
    )
    outputs = [layer.output for layer in layers]
    ref_fetch = outputs + [local_names[o] for o in outputs if o in local_names]
    cumulative = {o: FidelityAccumulator(o) for o in outputs}
    alone = {o: FidelityAccumulator(o) for o in local_names}
    seen = 0
    expected = min(len(dataset), max_samples)
    with (
        OrtRunner(ref_model, extra_outputs=ref_fetch, threads=threads, name=reference_name) as ref_runner,
        OrtRunner(quantized_model, extra_outputs=outputs, threads=threads, name=quantized_name) as q_runner,
        tqdm(total=expected, unit="sample", desc="layer errors", file=sys.stderr, disable=not progress,
             leave=False) as bar,
    ):
        ref_inputs = [s.name for s in ref_runner.input_specs()]
        q_inputs = [s.name for s in q_runner.input_specs()]
        for batch in _take(dataset.batches(batch_size), max_samples):
            missing = [n for n in (*ref_inputs, *q_inputs) if n not in batch.feed]
            if missing:
                raise DataError(
                    f"the data set provides no input '{missing[0]}' that model '{reference_name}' needs "
                    f"(it provides {sorted(batch.feed)}); check the data"
                )
            ref_out = ref_runner.infer({k: batch.feed[k] for k in ref_inputs}, outputs=ref_fetch)
            q_out = q_runner.infer({k: batch.feed[k] for k in q_inputs}, outputs=outputs)
            for o in outputs:
                cumulative[o].update(q_out.pop(o), ref_out[o])
                if o in local_names:
                    alone[o].update(ref_out.pop(local_names[o]), ref_out[o])
            del ref_out, q_out
            seen += batch.size
            bar.update(batch.size)
    if seen == 0:
        raise DataError(
            f"data set '{dataset.summary().source}' gave no samples for the layer analysis; check the data"
        )
    errors = [
        LayerError(
            layer=layer.name,
            op_type=layer.op_type,
            tensor=layer.output,
            inputs=layer.inputs,
            position=pos,
            fidelity=cumulative[layer.output].result(),
            local=alone[layer.output].result() if layer.output in alone else None,
        )
        for pos, layer in enumerate(layers)
    ]
    ranked = rank_layers(errors)
    worst = ranked[0]
    value = worst.local_sqnr_db if worst.local is not None else worst.sqnr_db
    logger.info(
        "layer errors of %d layers over %d samples; worst: %s (%s dB)",
        len(errors),
        seen,
        worst.layer,
        "n/a" if value is None or not math.isfinite(value) else f"{value:.1f}",
    )
    return ranked

