"""Loading and saving ONNX models, and their input/output metadata.

This is the only module of :mod:`quant.graph` that touches files. Every problem a user can cause
(missing file, not ONNX, missing external data, empty graph, opset newer than the installed onnx)
becomes a one-line :class:`~quant.errors.ModelError` naming the model and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, helper

from quant._io import atomic_output
from quant.backends.base import TensorSpec
from quant.errors import ModelError
from quant.graph._util import all_tensors

log = logging.getLogger(__name__)

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "input_specs",
    "load_model",
    "opset_version",
    "output_specs",
    "save_model",
]

#: Serialized size above which :func:`save_model` writes the weights to ``<model>.data`` next to
#: the model (protobuf cannot serialize messages of 2 GiB or more). A little below 2 GiB to leave
#: room for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26

#: Tensors smaller than this stay inside the model file when external data is written.
_EXTERNAL_MIN_TENSOR_BYTES = 1024

_DEFAULT_DOMAINS = ("", "ai.onnx")


def opset_version(model: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set the model imports."""
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    raise ModelError(
        f"model '{model.graph.name or '<unnamed>'}': no opset import for the default ONNX domain; "
        "re-export the model with an explicit opset"
    )


def load_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model (with its external data) and check it is usable; ModelError otherwise."""
    p = Path(path)
    label = str(path)
    if not p.exists():
        raise ModelError(f"model '{label}': no such file")
    if p.is_dir():
        raise ModelError(f"model '{label}': is a directory; give the path of an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ModelError(f"model '{label}': cannot read: {exc.strerror or exc}") from exc
    not_onnx = (
        f"model '{label}': not an ONNX model (cannot parse protobuf); "
        "check that the file is a complete .onnx export (not truncated, not a checkpoint or an engine)"
    )
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise ModelError(not_onnx) from exc
    # Protobuf parses some non-ONNX bytes (an empty file, other messages) without complaint; an
    # ONNX model always has an IR version and a graph.
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise ModelError(not_onnx)
    _load_external_data(model, p, label)
    graph = model.graph
    if len(graph.node) == 0:
        raise ModelError(f"model '{label}': the graph is empty (no nodes); export the model with its layers")
    if len(graph.output) == 0:
        raise ModelError(f"model '{label}': the graph has no outputs; export the model with its outputs")
    try:
        opset = opset_version(model)
    except ModelError as exc:
        raise ModelError(
            f"model '{label}': no opset import for the default ONNX domain; re-export with an explicit opset"
        ) from exc
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(
            f"model '{label}': opset {opset} is newer than the installed onnx {onnx.__version__} "
            f"supports (up to {newest}); upgrade onnx or export with a lower opset"
        )
    log.debug("loaded model %s: %d nodes, opset %d", label, len(graph.node), opset)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path, label: str) -> None:
    """Resolve external tensors relative to the model's directory, naming a missing data file."""
    tensors = [t for t in all_tensors(model) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    base = path.parent
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        data_path = base / location
        if not location or not data_path.is_file():
            raise ModelError(
                f"model '{label}': external data file '{location}' (tensor '{tensor.name}') not found in "
                f"'{base}'; copy the data file next to the model"
            )
    try:
        external_data_helper.load_external_data_for_model(model, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelError(
            f"model '{label}': cannot read its external data ({exc}); check the data files next to the model"
        ) from exc


def _value_spec(vi: onnx.ValueInfoProto, what: str) -> TensorSpec:
    if not vi.type.HasField("tensor_type"):
        raise ModelError(
            f"{what} '{vi.name}': is not a tensor (sequence/map types are not supported); "
            "export the model with tensor inputs and outputs"
        )
    tt = vi.type.tensor_type
    if tt.elem_type == onnx.TensorProto.UNDEFINED:
        raise ModelError(f"{what} '{vi.name}': has no element type; re-export the model with typed {what}s")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"{what} '{vi.name}': element type {onnx.TensorProto.DataType.Name(tt.elem_type)} has no NumPy "
            "equivalent; use a float, int or bool input"
        ) from exc
    dims: list[int | str | None] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return TensorSpec(name=vi.name, shape=tuple(dims), dtype=dtype)


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The real inputs of the model (graph inputs that are not initializers), in graph order."""
    inits = {t.name for t in model.graph.initializer}
    return [_value_spec(vi, "input") for vi in model.graph.input if vi.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph outputs of the model, in graph order."""
    return [_value_spec(vi, "output") for vi in model.graph.output]


def _check(model: onnx.ModelProto | Path, label: str) -> None:
    """onnx.checker on a model in memory, or on a file (which also checks its external data)."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model))
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"model '{label}': not saved, it fails the ONNX checker: {first}; this is a bug in the step "
            "that produced the model, please report it"
        ) from exc


def save_model(model: onnx.ModelProto, path: str | os.PathLike[str]) -> Path:
    """Check ``model`` and write it atomically to ``path``; return the path.

    Models whose serialized size exceeds :data:`EXTERNAL_DATA_THRESHOLD` are written with their
    large tensors in ``<file name>.data`` in the same directory (ONNX's external-data format), which
    must then travel with the model. The checker runs before anything is written.
    """
    dest = Path(path)
    label = str(path)
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        _check(model, label)
        with atomic_output(dest) as tmp:
            tmp.write_bytes(model.SerializeToString())
        return dest
    return _save_with_external_data(model, dest, label)


def _save_with_external_data(model: onnx.ModelProto, dest: Path, label: str) -> Path:
    data_name = dest.name + ".data"
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    chunks: list[bytes] = []
    offset = 0
    for tensor in all_tensors(proto):
        if external_data_helper.uses_external_data(tensor):
            raise ModelError(
                f"model '{label}': tensor '{tensor.name}' still refers to external data; load the model "
                "with load_model so its data is in memory before saving"
            )
        if not tensor.HasField("raw_data"):
            if tensor.data_type == onnx.TensorProto.STRING:
                continue
            arr = onnx.numpy_helper.to_array(tensor)
            if arr.nbytes < _EXTERNAL_MIN_TENSOR_BYTES:
                continue
            tensor.CopyFrom(onnx.numpy_helper.from_array(arr, tensor.name))
        raw = tensor.raw_data
        if len(raw) < _EXTERNAL_MIN_TENSOR_BYTES:
            continue
        pad = (-offset) % 4096  # page-aligned offsets let runtimes mmap the weights
        if pad:
            chunks.append(b"\0" * pad)
            offset += pad
        chunks.append(raw)
        external_data_helper.set_external_data(tensor, location=data_name, offset=offset, length=len(raw))
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
        offset += len(raw)
    externals = [t for t in all_tensors(proto) if external_data_helper.uses_external_data(t)]

    def point_to(location: str) -> None:
        for tensor in externals:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location

    # Both files are written to temporary names next to the destination and checked together
    # (the checker follows the data location); an error leaves neither file behind.
    with atomic_output(dest.with_name(data_name)) as tmp_data:
        with open(tmp_data, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        with atomic_output(dest) as tmp:
            point_to(tmp_data.name)
            tmp.write_bytes(proto.SerializeToString())
            _check(tmp, label)
            point_to(data_name)
            tmp.write_bytes(proto.SerializeToString())
    log.info("saved %s with external data %s (%d bytes)", label, data_name, offset)
    return dest
