"""What runs inside a TensorRT engine: per-layer type, precision and tactic (``quant inspect``).

TensorRT's engine inspector (8.2+) describes an engine's layers as JSON
(``get_engine_information(LayerInformationFormat.JSON)``). With the engine built at
``ProfilingVerbosity.DETAILED`` (quant's builder always sets it) each layer is an object::

    {"Name": "conv1 + relu1", "LayerType": "CaskConvolution", "ParameterType": "Convolution",
     "Inputs":  [{"Name": "input", "Dimensions": [8,3,224,224], "Format/Datatype": "Row major linear FP32"}],
     "Outputs": [{"Name": "relu1_out", "Dimensions": [...], "Format/Datatype": "Channel major FP16 format ..."}],
     "TacticName": "sm80_xmma_fprop_...", "TacticValue": "0x...", "Metadata": "[ONNX Layer: conv1]\\x1e..."}

and the document has ``"Layers": [...]`` plus ``"Bindings": [names]`` (TensorRT <= 10) or
``"I/O Tensors": [{"Name": ...}]`` (TensorRT 11, where ``Format/Datatype`` is also split into
``DataType`` and ``Format``). At the default verbosity ``Layers`` is a list of names only.

:func:`parse_engine_information` (pure, unit-tested on documented samples) turns that text into
an :class:`EngineInspection`: layers with their precision (that of the first input, else of the
first output, as NVIDIA's trt-engine-explorer counts it), reformat layers counted apart, and
counts of layers per precision. Engines with several optimization profiles list each layer once
per profile (names suffixed ``[profile N]``); only profile 0 is kept.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.errors import ModelError

_PRECISION_TOKENS = {
    "fp32": "FP32",
    "float": "FP32",
    "fp16": "FP16",
    "half": "FP16",
    "bfloat16": "BF16",
    "bf16": "BF16",
    "int8": "INT8",
    "uint8": "UINT8",
    "int32": "INT32",
    "int64": "INT64",
    "bool": "BOOL",
    "fp8": "FP8",
    "int4": "INT4",
    "fp4": "FP4",
    "double": "FP64",
}
_PROFILE_RE = re.compile(r"\[profile (\d+)\]")
_SKIPPED_TYPES = {"signal", "wait"}  # multi-stream synchronization markers, not layers
_NOT_COUNTED_TYPES = {"NoOp"}


def precision_of(description: str | None) -> str:
    """``"Row major linear FP32"`` -> ``FP32``, ``"Four wide channel vectorized row major Int8 format"``
    -> ``INT8``, ``"Half"`` -> ``FP16``; ``UNKNOWN`` when no type is named."""
    if not description:
        return "UNKNOWN"
    for token in re.findall(r"[A-Za-z0-9]+", description):
        p = _PRECISION_TOKENS.get(token.lower())
        if p is not None:
            return p
    return "UNKNOWN"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    precision: str
    format: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "precision": self.precision, "format": self.format}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorInfo:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["precision"]), str(d["format"]))


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer. ``type`` is the layer's operation (``Convolution``), ``kernel`` the
    implementation class (``CaskConvolution``, ``Reformat``, ``Myelin``...)."""

    name: str
    type: str
    kernel: str
    precision: str
    tactic: str | None = None
    inputs: tuple[TensorInfo, ...] = ()
    outputs: tuple[TensorInfo, ...] = ()
    origin: str | None = None

    @property
    def is_reformat(self) -> bool:
        return "Reformat" in (self.type, self.kernel) or self.name.startswith("Reformatting CopyNode")

    @property
    def counted(self) -> bool:
        return self.type not in _NOT_COUNTED_TYPES and not self.is_reformat

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "kernel": self.kernel,
            "precision": self.precision,
            "tactic": self.tactic,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "origin": self.origin,
            "reformat": self.is_reformat,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerInfo:
        return cls(
            name=str(d["name"]),
            type=str(d["type"]),
            kernel=str(d["kernel"]),
            precision=str(d["precision"]),
            tactic=d.get("tactic"),
            inputs=tuple(TensorInfo.from_dict(t) for t in d.get("inputs", ())),
            outputs=tuple(TensorInfo.from_dict(t) for t in d.get("outputs", ())),
            origin=d.get("origin"),
        )


@dataclass(frozen=True)
class EngineInspection:
    """An engine's layers and what they add up to."""

    source: str
    detailed: bool
    layers: tuple[LayerInfo, ...]
    io_tensors: tuple[str, ...] = ()
    num_profiles: int = 1
    trt_version: str | None = None
    gpu: str | None = None
    precision: str | None = None
    mode: str | None = None

    @property
    def precision_counts(self) -> dict[str, int]:
        """Layers per precision, reformat and no-op layers excluded (most frequent first)."""
        c = Counter(layer.precision for layer in self.layers if layer.counted)
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def reformat_count(self) -> int:
        return sum(1 for layer in self.layers if layer.is_reformat)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "detailed": self.detailed,
            "trt_version": self.trt_version,
            "gpu": self.gpu,
            "precision": self.precision,
            "mode": self.mode,
            "num_layers": len(self.layers),
            "num_profiles": self.num_profiles,
            "precision_counts": self.precision_counts,
            "reformat_layers": self.reformat_count,
            "io_tensors": list(self.io_tensors),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineInspection:
        try:
            return cls(
                source=str(d["source"]),
                detailed=bool(d["detailed"]),
                layers=tuple(LayerInfo.from_dict(x) for x in d["layers"]),
                io_tensors=tuple(str(n) for n in d.get("io_tensors", ())),
                num_profiles=int(d.get("num_profiles", 1)),
                trt_version=d.get("trt_version"),
                gpu=d.get("gpu"),
                precision=d.get("precision"),
                mode=d.get("mode"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"engine inspection record is malformed ({exc!r})") from exc


# --------------------------------------------------------------------------------------------
# Parsing (pure)
# --------------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    # TensorRT separates fused ONNX node names with the ASCII record/unit separators.
    return text.replace("\x1e", "+").replace("\x1f", "+")


def _tensor(d: Any, where: str) -> TensorInfo:
    if not isinstance(d, Mapping):
        raise ModelError(f"{where}: a tensor entry is not an object")
    fmt = d.get("Format/Datatype")
    if fmt is None:  # TensorRT 11: split fields
        fmt = " ".join(str(x) for x in (d.get("DataType"), d.get("Format")) if x is not None)
    dims = d.get("Dimensions") or []
    try:
        shape = tuple(int(x) for x in dims)
    except (TypeError, ValueError):
        shape = ()
    return TensorInfo(name=_clean(str(d.get("Name", ""))), shape=shape, precision=precision_of(str(fmt)), format=str(fmt))


def _profile_of(name: str) -> int:
    m = _PROFILE_RE.search(name)
    return int(m.group(1)) if m else 0


def _layer(raw: Any, index: int, source: str) -> LayerInfo:
    where = f"engine information of '{source}', layer {index}"
    if isinstance(raw, str):
        return LayerInfo(name=_clean(raw), type="?", kernel="?", precision="UNKNOWN")
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: not an object or a name")
    name = _clean(str(raw.get("Name", f"layer {index}")))
    kernel = str(raw.get("LayerType", "?"))
    ltype = str(raw.get("ParameterType") or kernel)
    inputs = tuple(_tensor(t, where) for t in raw.get("Inputs") or ())
    outputs = tuple(_tensor(t, where) for t in raw.get("Outputs") or ())
    if inputs:
        precision = inputs[0].precision
    elif outputs:
        precision = outputs[0].precision
    else:
        precision = "UNKNOWN"
    tactic = raw.get("TacticName") or raw.get("TacticValue")
    origin = raw.get("Metadata") or raw.get("Origin")
    return LayerInfo(
        name=name,
        type=ltype,
        kernel=kernel,
        precision=precision,
        tactic=None if tactic in (None, "") else str(tactic),
        inputs=inputs,
        outputs=outputs,
        origin=None if origin in (None, "") else _clean(str(origin)),
    )


def parse_engine_information(text: str, *, source: str) -> EngineInspection:
    """Parse the engine inspector's JSON (``LayerInformationFormat.JSON``) of engine ``source``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"engine information of '{source}' is not JSON (line {exc.lineno}: {exc.msg}); "
            f"the engine inspector output is unexpected for this TensorRT version"
        ) from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("Layers"), list):
        raise ModelError(f"engine information of '{source}' has no 'Layers' list; not an engine inspector document")
    raw_layers = doc["Layers"]
    detailed = bool(raw_layers) and all(isinstance(x, Mapping) for x in raw_layers)
    layers: list[LayerInfo] = []
    profiles = 1
    for i, raw in enumerate(raw_layers):
        info = _layer(raw, i, source)
        p = _profile_of(info.name)
        profiles = max(profiles, p + 1)
        if p != 0 or info.kernel in _SKIPPED_TYPES:
            continue
        layers.append(info)
    io: list[str] = []
    if isinstance(doc.get("Bindings"), list):
        io = [str(b) for b in doc["Bindings"]]
    elif isinstance(doc.get("I/O Tensors"), list):
        io = [str(t.get("Name", "")) if isinstance(t, Mapping) else str(t) for t in doc["I/O Tensors"]]
    io = [n for n in io if _profile_of(n) == 0]
    return EngineInspection(source=source, detailed=detailed, layers=tuple(layers), io_tensors=tuple(io), num_profiles=profiles)


# --------------------------------------------------------------------------------------------
# Rendering (pure)
# --------------------------------------------------------------------------------------------


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def render_engine_inspection(info: EngineInspection, *, max_layers: int | None = None) -> str:
    """A plain-text report: header, precision counts, reformat count, one row per layer."""
    lines: list[str] = []
    built = ", ".join(
        x for x in (
            f"TensorRT {info.trt_version}" if info.trt_version else "",
            f"built for {info.gpu}" if info.gpu else "",
            f"{info.precision} ({info.mode})" if info.precision and info.mode else (info.precision or ""),
        ) if x
    )
    lines.append(f"engine {info.source}: {len(info.layers)} layers" + (f" ({built})" if built else ""))
    if info.num_profiles > 1:
        lines.append(f"optimization profiles: {info.num_profiles} (layers of profile 0 shown)")
    if not info.detailed:
        lines.append(
            "layer details unavailable: the engine was built without ProfilingVerbosity.DETAILED "
            "(rebuild it with quant to see precisions and tactics)"
        )
    else:
        counts = ", ".join(f"{p} {n}" for p, n in info.precision_counts.items()) or "none"
        lines.append(f"layers by precision: {counts}")
        lines.append(f"reformat layers: {info.reformat_count}")
    if info.io_tensors:
        lines.append(f"I/O tensors: {', '.join(info.io_tensors)}")
    rows = list(info.layers if max_layers is None else info.layers[:max_layers])
    if rows:
        header = ("#", "name", "type", "precision", "tactic")
        table = [
            (str(i), _short(layer.name, 60), _short(layer.type, 24), layer.precision, _short(layer.tactic or "", 60))
            for i, layer in enumerate(rows)
        ]
        widths = [max(len(r[c]) for r in (header, *table)) for c in range(len(header))]
        lines.append("")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        for r in table:
            lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if max_layers is not None and len(info.layers) > max_layers:
        lines.append(f"... and {len(info.layers) - max_layers} more layers")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# From an engine file (needs TensorRT)
# --------------------------------------------------------------------------------------------


def inspect_engine(
    path: str | Path, *, device: int = 0, plugins: Sequence[str | Path] | None = None
) -> EngineInspection:
    """Deserialize the engine at ``path`` and describe its layers with TensorRT's engine inspector
    (with the flavour, TensorRT or TensorRT-RTX, that its sidecar records)."""
    from quant.backends.tensorrt.runner import load_engine

    loaded = load_engine(path, device=device, plugins=plugins)
    trt = loaded.trt
    assert trt is not None
    inspector = loaded.engine.create_engine_inspector()
    if inspector is None:
        raise ModelError(f"TensorRT could not create an engine inspector for '{path}'")
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    info = parse_engine_information(text, source=str(path))
    side = loaded.sidecar
    if side is None:
        return info
    return EngineInspection(
        source=info.source,
        detailed=info.detailed,
        layers=info.layers,
        io_tensors=info.io_tensors,
        num_profiles=info.num_profiles,
        trt_version=side.trt_version,
        gpu=side.gpu.describe() if side.trt_flavor != "tensorrt-rtx"
        else f"TensorRT-RTX targets {', '.join(side.compute_capabilities) or 'default'}",
        precision=side.precision,
        mode=side.mode,
    )


__all__ = [
    "EngineInspection",
    "LayerInfo",
    "TensorInfo",
    "inspect_engine",
    "parse_engine_information",
    "precision_of",
    "render_engine_inspection",
]
