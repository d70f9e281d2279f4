"""FP16 conversion of a model for evaluation (float32 inputs and outputs kept).

Uses ONNX Runtime's converter (``onnxruntime.transformers.float16``, imported lazily). Some ops
come out of that converter in a form ONNX Runtime cannot run in float16 (for example a
``RandomNormal`` whose dtype attribute is rewritten to float16: no such kernel). :func:`to_fp16`
therefore checks the converted model by opening an ONNX Runtime CPU session; when the session
names a failing node, that node is put on the converter's ``node_block_list`` (it stays float32,
with Casts around it) and the conversion is redone. Each node kept in float32 is logged as a
warning. TensorRT has FP16 kernels for far more ops; the fallback only matters for the CPU
evaluation this model is made for.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable

import onnx

from quant.errors import BackendUnavailableError, ModelError
from quant.graph._util import NameAllocator, all_names, copy_model, topological_sort

log = logging.getLogger(__name__)

__all__ = ["to_fp16"]

#: How many failing nodes to move to float32 before giving up.
MAX_FALLBACK_NODES = 32

#: Protobuf's limit: larger models cannot be opened from memory, so they are not verified.
_PROTO_LIMIT = 2**31 - 2**20

_NODE_PATTERNS = (
    re.compile(r"node with name '([^']+)'"),
    re.compile(r"in node \(([^)]+)\)"),
    re.compile(r"Node \(([^)]+)\)"),
)


def _name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names so that a failing one can be put on the block list."""
    names = NameAllocator(all_names(model))
    for idx, node in enumerate(model.graph.node):
        if not node.name:
            node.name = names(f"{node.op_type}_{idx}")


def _session_problem(model: onnx.ModelProto) -> str | None:
    """None if ONNX Runtime (CPU) can open the model, else its error message."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/NotImplemented/InvalidGraph types
        return str(exc)
    return None


def _failing_node(message: str, model: onnx.ModelProto) -> str | None:
    names = {n.name for n in model.graph.node}
    for pattern in _NODE_PATTERNS:
        for match in pattern.finditer(message):
            if match.group(1) in names:
                return match.group(1)
    return None


def to_fp16(
    model: onnx.ModelProto,
    *,
    op_block_list: Iterable[str] | None = None,
    node_block_list: Iterable[str] = (),
    verify: bool = True,
) -> onnx.ModelProto:
    """Return a copy of ``model`` with float tensors in float16 and float32 inputs/outputs.

    ``op_block_list`` (default: the converter's own list) and ``node_block_list`` keep ops / nodes in
    float32. With ``verify`` (default) the result is opened in an ONNX Runtime CPU session and nodes
    it cannot run are moved to float32 automatically (see the module docstring); a failure that
    names no node raises ModelError.
    """
    try:
        from onnxruntime.transformers import float16
    except ImportError as exc:
        raise BackendUnavailableError(
            "FP16 conversion needs onnxruntime (onnxruntime.transformers.float16); install onnxruntime"
        ) from exc

    base = copy_model(model)
    _name_unnamed_nodes(base)
    ops = list(float16.DEFAULT_OP_BLOCK_LIST if op_block_list is None else op_block_list)
    blocked = list(dict.fromkeys(node_block_list))
    label = model.graph.name or "<unnamed>"
    for _ in range(MAX_FALLBACK_NODES + 1):
        with warnings.catch_warnings():
            # The converter warns for every weight clamped to the float16 range; one log line instead.
            warnings.simplefilter("ignore", UserWarning)
            try:
                converted = float16.convert_float_to_float16(
                    copy_model(base), keep_io_types=True, op_block_list=ops, node_block_list=blocked
                )
            except (
                ValueError,
                RuntimeError,
                KeyError,
                IndexError,
                AttributeError,
                onnx.checker.ValidationError,
                onnx.shape_inference.InferenceError,
            ) as exc:
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(
                    f"model '{label}': FP16 conversion failed ({detail}); keep the offending op in float32 "
                    "with op_block_list / node_block_list"
                ) from exc
        # The converter appends its Cast nodes at the end of the graph.
        topological_sort(converted.graph)
        if not verify:
            return converted
        if converted.ByteSize() >= _PROTO_LIMIT:
            log.info("to_fp16: model over 2 GB, not verified in ONNX Runtime")
            return converted
        problem = _session_problem(converted)
        if problem is None:
            if blocked:
                log.info("to_fp16: %d nodes kept in float32: %s", len(blocked), ", ".join(blocked))
            return converted
        node = _failing_node(problem, converted)
        if node is None or node in blocked:
            first = problem.strip().splitlines()[0] if problem.strip() else "unknown error"
            raise ModelError(
                f"model '{label}': the FP16 model does not load in ONNX Runtime ({first}); keep the "
                "offending op in float32 with op_block_list / node_block_list"
            )
        log.warning("to_fp16: node '%s' has no float16 implementation in ONNX Runtime; kept in float32", node)
        blocked.append(node)
    raise ModelError(
        f"model '{label}': more than {MAX_FALLBACK_NODES} nodes cannot run in float16; "
        "give op_block_list with their op types"
    )
