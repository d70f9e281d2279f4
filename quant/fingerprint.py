"""Content fingerprints: of models (graph and weights separately) and of arbitrary bytes.

A calibration is valid only for the model and data it was made with, and TensorRT does not check
(REFERENCE.md). The sidecar therefore records fingerprints, and :func:`compare_fingerprints` says
what changed since.

The model fingerprint has two sha256 halves so that a message can say *what* changed:

- ``graph``: the node list (op_type, domain, inputs, outputs, attributes, in order), the graph's
  inputs and outputs with their types and shapes, the opset imports, local functions, and the
  structure of subgraphs. Not hashed: node / graph names, doc strings, producer, metadata,
  ``value_info`` (shape-inference output), the IR version.
- ``weights``: every initializer and sparse initializer (name, dtype, dims, bytes) in name order,
  plus the tensors held in node attributes (Constant nodes carry weights too; their name, dtype and
  dims are hashed in the graph half as part of the attribute, the bytes here).

Tensor bytes are canonical: ``raw_data`` as stored (ONNX defines it little-endian); a tensor held in
``float_data`` / ``int32_data`` / ``int64_data`` ... is converted through ``onnx.numpy_helper`` into
the raw layout first, so the same values hash the same either way. External data that was not
loaded is hashed by its reference (location, offset, length), with a warning.

Every value is fed to the hash tagged and length-prefixed, so different structures cannot collide
by concatenation.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quant.errors import CacheError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

#: Bumped whenever the hashed content changes, so old and new fingerprints never compare equal.
FINGERPRINT_VERSION = 1


def hash_bytes(data: bytes) -> str:
    """sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def combine(*parts: str) -> str:
    """sha256 hex digest of several strings (e.g. hex digests), order-sensitive and unambiguous."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(struct.pack("<Q", len(b)))
        h.update(b)
    return h.hexdigest()


class _Hasher:
    """sha256 over tagged, length-prefixed values."""

    def __init__(self, domain: str) -> None:
        self._h = hashlib.sha256()
        self.put_str(f"quant-{domain}-v{FINGERPRINT_VERSION}")

    def put_bytes(self, b: bytes) -> None:
        self._h.update(b"b" + struct.pack("<Q", len(b)))
        self._h.update(b)

    def put_str(self, s: str) -> None:
        b = s.encode("utf-8", "surrogatepass")
        self._h.update(b"s" + struct.pack("<Q", len(b)))
        self._h.update(b)

    def put_int(self, i: int) -> None:
        self._h.update(b"i" + struct.pack("<q", i))

    def put_float(self, f: float) -> None:
        self._h.update(b"f" + struct.pack("<d", f))

    def tag(self, t: str) -> None:
        self.put_str("#" + t)

    def put_strs(self, items: Iterable[str]) -> None:
        lst = list(items)
        self.put_int(len(lst))
        for s in lst:
            self.put_str(s)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass(frozen=True)
class ModelFingerprint:
    """sha256 of a model's structure (``graph``) and of its weights (``weights``)."""

    graph: str
    weights: str

    @property
    def combined(self) -> str:
        """One digest for both halves (changes when either does)."""
        return combine(self.graph, self.weights)

    def to_dict(self) -> dict[str, str]:
        return {"graph": self.graph, "weights": self.weights, "combined": self.combined}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelFingerprint:
        """Inverse of :meth:`to_dict` (``combined`` is recomputed, and checked when present)."""
        if not isinstance(d, Mapping):
            raise CacheError(
                f"model fingerprint {d!r} is not an object with 'graph' and 'weights'; recalibrate"
            )
        graph, weights = d.get("graph"), d.get("weights")
        if not isinstance(graph, str) or not isinstance(weights, str):
            raise CacheError(
                f"model fingerprint {dict(d)!r} lacks the 'graph' and 'weights' digests; recalibrate"
            )
        fp = cls(graph=graph, weights=weights)
        if "combined" in d and d["combined"] != fp.combined:
            raise CacheError(
                "model fingerprint's 'combined' digest does not match its 'graph' and 'weights' "
                "(edited by hand?); recalibrate"
            )
        return fp


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    """Canonical little-endian bytes of a tensor's data (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    if t.data_location == onnx.TensorProto.EXTERNAL:
        logger.warning(
            "initializer '%s' has external data that was not loaded; its fingerprint covers only "
            "the reference, not the values",
            t.name,
        )
        ref = "\0".join(f"{e.key}={e.value}" for e in t.external_data)
        return b"external:" + ref.encode("utf-8")
    if t.data_type == onnx.TensorProto.STRING:
        h = _Hasher("strings")
        h.put_int(len(t.string_data))
        for s in t.string_data:
            h.put_bytes(s)
        return b"strings:" + h.hexdigest().encode("ascii")
    if t.raw_data:
        return bytes(t.raw_data)
    arr = numpy_helper.to_array(t)
    return bytes(numpy_helper.from_array(arr).raw_data)


def _hash_tensor_header(h: _Hasher, t: onnx.TensorProto) -> None:
    h.tag("tensor")
    h.put_str(t.name)
    h.put_int(t.data_type)
    h.put_int(len(t.dims))
    for d in t.dims:
        h.put_int(d)


def _hash_tensor(h: _Hasher, t: onnx.TensorProto) -> None:
    _hash_tensor_header(h, t)
    h.put_bytes(_tensor_bytes(t))


def _hash_sparse(h: _Hasher, s: onnx.SparseTensorProto) -> None:
    h.tag("sparse")
    h.put_int(len(s.dims))
    for d in s.dims:
        h.put_int(d)
    _hash_tensor(h, s.values)
    _hash_tensor(h, s.indices)


# --------------------------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------------------------


def _hash_type(h: _Hasher, tp: onnx.TypeProto) -> None:
    kind = tp.WhichOneof("value")
    h.tag(kind or "none")
    if kind == "tensor_type" or kind == "sparse_tensor_type":
        tt = getattr(tp, kind)
        h.put_int(tt.elem_type)
        if tt.HasField("shape"):
            h.put_int(len(tt.shape.dim))
            for dim in tt.shape.dim:
                which = dim.WhichOneof("value")
                if which == "dim_value":
                    h.put_int(dim.dim_value)
                elif which == "dim_param":
                    h.put_str(dim.dim_param)
                else:
                    h.tag("?")
        else:
            h.tag("unranked")
    elif kind == "sequence_type":
        _hash_type(h, tp.sequence_type.elem_type)
    elif kind == "optional_type":
        _hash_type(h, tp.optional_type.elem_type)
    elif kind == "map_type":
        h.put_int(tp.map_type.key_type)
        _hash_type(h, tp.map_type.value_type)


def _hash_value_infos(h: _Hasher, infos: Iterable[onnx.ValueInfoProto]) -> None:
    lst = list(infos)
    h.put_int(len(lst))
    for vi in lst:
        h.put_str(vi.name)
        if vi.HasField("type"):
            _hash_type(h, vi.type)
        else:
            h.tag("untyped")


# --------------------------------------------------------------------------------------------
# Nodes and graphs
# --------------------------------------------------------------------------------------------


def _hash_attribute(g: _Hasher, w: _Hasher, a: onnx.AttributeProto) -> None:
    import onnx

    A = onnx.AttributeProto
    g.tag("attr")
    g.put_str(a.name)
    g.put_int(a.type)
    if a.ref_attr_name:
        g.put_str("ref:" + a.ref_attr_name)
        return
    if a.type == A.FLOAT:
        g.put_float(a.f)
    elif a.type == A.INT:
        g.put_int(a.i)
    elif a.type == A.STRING:
        g.put_bytes(a.s)
    elif a.type == A.TENSOR:
        _hash_tensor_header(g, a.t)
        w.tag("attr-tensor")
        _hash_tensor(w, a.t)
    elif a.type == A.SPARSE_TENSOR:
        g.tag("sparse")
        w.tag("attr-sparse")
        _hash_sparse(w, a.sparse_tensor)
    elif a.type == A.GRAPH:
        _hash_graph(g, w, a.g)
    elif a.type == A.FLOATS:
        g.put_int(len(a.floats))
        for f in a.floats:
            g.put_float(f)
    elif a.type == A.INTS:
        g.put_int(len(a.ints))
        for i in a.ints:
            g.put_int(i)
    elif a.type == A.STRINGS:
        g.put_int(len(a.strings))
        for s in a.strings:
            g.put_bytes(s)
    elif a.type == A.TENSORS:
        g.put_int(len(a.tensors))
        w.tag("attr-tensors")
        for t in a.tensors:
            _hash_tensor_header(g, t)
            _hash_tensor(w, t)
    elif a.type == A.GRAPHS:
        g.put_int(len(a.graphs))
        for sub in a.graphs:
            _hash_graph(g, w, sub)
    elif a.type == A.TYPE_PROTO:
        _hash_type(g, a.tp)
    elif a.type == A.TYPE_PROTOS:
        g.put_int(len(a.type_protos))
        for tp in a.type_protos:
            _hash_type(g, tp)
    else:  # unknown / future attribute types: fall back to the serialized value
        g.put_bytes(a.SerializeToString(deterministic=True))


def _hash_nodes(g: _Hasher, w: _Hasher, nodes: Iterable[onnx.NodeProto]) -> None:
    lst = list(nodes)
    g.put_int(len(lst))
    for n in lst:
        g.tag("node")
        g.put_str(n.op_type)
        g.put_str(n.domain)
        g.put_strs(n.input)
        g.put_strs(n.output)
        attrs = sorted(n.attribute, key=lambda a: a.name)
        g.put_int(len(attrs))
        for a in attrs:
            _hash_attribute(g, w, a)


def _hash_graph(g: _Hasher, w: _Hasher, graph: onnx.GraphProto) -> None:
    g.tag("graph")
    _hash_nodes(g, w, graph.node)
    g.tag("inputs")
    _hash_value_infos(g, graph.input)
    g.tag("outputs")
    _hash_value_infos(g, graph.output)
    w.tag("initializers")
    inits = sorted(graph.initializer, key=lambda t: t.name)
    w.put_int(len(inits))
    for t in inits:
        _hash_tensor(w, t)
    sparse = sorted(graph.sparse_initializer, key=lambda s: s.values.name)
    w.put_int(len(sparse))
    for s in sparse:
        _hash_sparse(w, s)


def model_fingerprint(model: onnx.ModelProto) -> ModelFingerprint:
    """Fingerprint of ``model``'s structure and weights (see the module docstring for what counts)."""
    g = _Hasher("graph")
    w = _Hasher("weights")
    _hash_graph(g, w, model.graph)
    g.tag("opsets")
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    g.put_int(len(opsets))
    for domain, version in opsets:
        g.put_str(domain)
        g.put_int(version)
    g.tag("functions")
    funcs = sorted(model.functions, key=lambda f: (f.domain, f.name, getattr(f, "overload", "")))
    g.put_int(len(funcs))
    for f in funcs:
        g.put_str(f.domain)
        g.put_str(f.name)
        g.put_str(getattr(f, "overload", ""))
        g.put_strs(f.input)
        g.put_strs(f.output)
        g.put_strs(f.attribute)
        _hash_nodes(g, w, f.node)
        g.put_int(len(f.opset_import))
        for domain, version in sorted((o.domain, o.version) for o in f.opset_import):
            g.put_str(domain)
            g.put_int(version)
    return ModelFingerprint(graph=g.hexdigest(), weights=w.hexdigest())


def compare_fingerprints(
    sidecar_calibration: Mapping[str, Any], *, model: ModelFingerprint, data: str | None
) -> list[str]:
    """What changed since calibration: a list of "model weights changed", "model graph changed",
    "calibration data changed" (empty if nothing did).

    ``sidecar_calibration`` is the sidecar's ``calibration`` object (a CalibrationResult dict).
    Its ``model_fingerprint`` may be a ModelFingerprint dict or a single digest string (compared
    with ``model.combined``; a difference is then reported as "model changed"). Fingerprints
    missing on either side are not compared (``data=None`` skips the data check).
    """
    diffs: list[str] = []
    stored = sidecar_calibration.get("model_fingerprint")
    if isinstance(stored, Mapping):
        old = ModelFingerprint.from_dict(stored)
        if old.weights != model.weights:
            diffs.append("model weights changed")
        if old.graph != model.graph:
            diffs.append("model graph changed")
    elif isinstance(stored, str):
        if stored != model.combined:
            diffs.append("model changed")
    elif stored is not None:
        raise CacheError(f"model fingerprint {stored!r} in the sidecar is malformed; recalibrate")
    stored_data = sidecar_calibration.get("data_fingerprint")
    if data is not None and stored_data is not None and stored_data != data:
        diffs.append("calibration data changed")
    return diffs


__all__ = [
    "FINGERPRINT_VERSION",
    "ModelFingerprint",
    "combine",
    "compare_fingerprints",
    "hash_bytes",
    "model_fingerprint",
]
