"""Run a model in consecutive stages so that calibration holds one stage's activations at a time.

Fetching every calibrated tensor of a batch from one ONNX Runtime run makes ORT hold all of
them at once (for ResNet-50 at batch 8 with every activation calibrated: 850 MB, twice the whole
inference footprint). :func:`plan_stages` cuts the graph (already topologically sorted, as ONNX
requires) into consecutive pieces whose fetched tensors fit a byte budget; each piece is a small
model whose inputs are graph inputs or tensors made by earlier pieces. Running the pieces in order
over the same batch computes exactly what the whole model computes (the same kernels on the same
values), so calibration statistics do not depend on the cut.

Pure graph code: ModelProto in, stage ModelProtos out. Running them is calibrate.py's business.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from quant.graph._util import iter_graphs, iter_subgraphs

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_STAGE_BYTES", "Stage", "plan_stages", "stage_model", "tensor_bytes"]

#: Default budget for the tensors one stage fetches, per batch. Small enough that calibration's
#: peak memory stays close to plain inference's; large enough that ResNet-50 at batch 8 needs
#: only a handful of stages.
DEFAULT_STAGE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Stage:
    """One consecutive piece of the graph.

    ``nodes``: the graph nodes it runs (build its model with :func:`stage_model`, one at a time,
    so that the stage models never all exist at once). ``inputs``: tensors it reads that come from
    the feed or from earlier stages. ``outputs``: what
    it returns: the calibration tensors it makes (``reduce``) and the tensors later stages read.
    ``release``: tensors that no stage after this one reads (drop them once it has run).
    """

    nodes: tuple[int, ...] | None  # indices into the model's graph.node; None: the whole model
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reduce: tuple[str, ...]
    release: tuple[str, ...]


def _elem_size(elem_type: int) -> int:
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize)
    except (KeyError, TypeError, ValueError):
        return 4


def tensor_bytes(model: onnx.ModelProto, batch_size: int) -> dict[str, int]:
    """Bytes of each top-level tensor with a known shape at ``batch_size`` (symbolic dims count as
    the batch size, unknown dims make the tensor unknown and it is left out)."""
    g = model.graph
    sizes: dict[str, int] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue
        n = 1
        known = True
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                n *= max(int(d.dim_value), 0)
            elif d.HasField("dim_param"):
                n *= batch_size
            else:
                known = False
                break
        if known:
            sizes.setdefault(vi.name, n * _elem_size(tt.elem_type))
    return sizes


def _node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor a node reads, including outer-scope names its subgraphs use."""
    names = [i for i in node.input if i]
    for sub in iter_subgraphs(node):
        local: set[str] = set()
        for g in iter_graphs(sub):
            local.update(i.name for i in g.input)
            local.update(t.name for t in g.initializer)
            local.update(o for n in g.node for o in n.output)
        for g in iter_graphs(sub):
            names.extend(i for n in g.node for i in n.input if i and i not in local)
            names.extend(o.name for o in g.output if o.name not in local)
    return names


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type)
    return types


def plan_stages(
    model: onnx.ModelProto,
    fetch: Sequence[str],
    *,
    batch_size: int,
    max_bytes: int | None = DEFAULT_STAGE_BYTES,
    sizes: Mapping[str, int] | None = None,
) -> list[Stage]:
    """Cut ``model`` into stages that together compute every tensor in ``fetch``.

    Only nodes that ``fetch`` depends on are kept. A stage closes before the node whose outputs
    would take its fetched bytes past ``max_bytes`` (None: one stage). Graph inputs in ``fetch``
    are not produced by any stage (the caller has them in the feed). Every stage input and output
    must have a known element type (from value_info: run shape inference first); otherwise one
    stage is returned, which needs no intermediate types. ``sizes`` gives the bytes per batch of
    tensors whose value_info has no shape (default: from the model's value_info only).
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in inits]
    producer: dict[str, int] = {}
    for idx, node in enumerate(g.node):
        for o in node.output:
            if o:
                producer[o] = idx
    wanted = [t for t in dict.fromkeys(fetch) if t in producer]

    # Nodes the fetched tensors depend on, in graph (topological) order.
    needed: set[int] = set()
    stack = [producer[t] for t in wanted]
    reads: dict[int, list[str]] = {}
    while stack:
        idx = stack.pop()
        if idx in needed:
            continue
        needed.add(idx)
        reads[idx] = _node_reads(g.node[idx])
        stack.extend(producer[t] for t in reads[idx] if t in producer and producer[t] not in needed)
    order = sorted(needed)
    if not order:
        return []

    known = tensor_bytes(model, batch_size)
    if sizes is not None:
        known.update(sizes)
    fetch_set = set(wanted)
    groups: list[list[int]] = [[]]
    used = 0
    for idx in order:
        add = sum(known.get(o, 0) for o in g.node[idx].output if o in fetch_set)
        if max_bytes is not None and groups[-1] and used + add > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(idx)
        used += add

    types = _types(model)
    stage_of: dict[str, int] = {}
    for s, grp in enumerate(groups):
        for idx in grp:
            for o in g.node[idx].output:
                if o:
                    stage_of[o] = s
    # The last stage that reads each tensor.
    last_read: dict[str, int] = {}
    for s, grp in enumerate(groups):
        for idx in grp:
            for t in reads[idx]:
                if t not in inits:
                    last_read[t] = s
    boundary = {t for t, s in last_read.items() if t in stage_of and stage_of[t] != s}
    boundary |= {t for t in last_read if t in graph_inputs}
    if len(groups) == 1 or any(t not in types for t in boundary | fetch_set):
        if len(groups) > 1:
            logger.info("calibration: some tensor types are unknown; running the model in one stage")
        return [_single_stage(model, wanted, graph_inputs)]

    stages: list[Stage] = []
    held: set[str] = set()  # tensors alive between stages (feed included)
    for s, grp in enumerate(groups):
        produced = {o for idx in grp for o in g.node[idx].output if o}
        stage_reads = list(dict.fromkeys(t for idx in grp for t in reads[idx]))
        inputs = tuple(t for t in stage_reads if t not in produced and t not in inits)
        later = {t for t, last in last_read.items() if last > s and t in produced}
        outputs = tuple(o for idx in grp for o in g.node[idx].output if o and (o in fetch_set or o in later))
        reduce = tuple(o for o in outputs if o in fetch_set)
        held |= set(inputs) | set(outputs)
        release = tuple(sorted(t for t in held if last_read.get(t, -1) <= s))
        held -= set(release)
        stages.append(Stage(tuple(grp), inputs, outputs, reduce, release))
    logger.debug("calibration runs the model in %d stages", len(stages))
    return stages


def _single_stage(model: onnx.ModelProto, wanted: Sequence[str], graph_inputs: Sequence[str]) -> Stage:
    return Stage(None, tuple(graph_inputs), tuple(wanted), tuple(wanted), tuple(graph_inputs))


def stage_model(model: onnx.ModelProto, stage: Stage) -> onnx.ModelProto:
    """The ModelProto that runs ``stage`` of ``model``: its nodes and the initializers they read,
    the stage inputs as graph inputs and the stage outputs as graph outputs (with their types).
    A whole-model stage is the model with the fetched tensors added as outputs."""
    if stage.nodes is None:
        from quant.backends.onnxruntime import add_outputs

        return add_outputs(model, stage.outputs, model_name=model.graph.name or "model")
    g = model.graph
    types = _types(model)
    used: set[str] = set()
    for idx in stage.nodes:
        used.update(_node_reads(g.node[idx]))
    graph = onnx.GraphProto()
    graph.name = f"{g.name or 'model'}_stage"
    graph.node.extend(g.node[idx] for idx in stage.nodes)
    graph.initializer.extend(t for t in g.initializer if t.name in used)
    graph.sparse_initializer.extend(t for t in g.sparse_initializer if t.values.name in used)
    for t in stage.inputs:
        vi = graph.input.add()
        vi.name = t
        vi.type.CopyFrom(types[t])
    for t in stage.outputs:
        vi = graph.output.add()
        vi.name = t
        vi.type.CopyFrom(types[t])
    keep = set(stage.inputs) | set(stage.outputs)
    graph.value_info.extend(v for v in g.value_info if v.name not in keep and v.name in used)
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    out.graph.CopyFrom(graph)
    return out
