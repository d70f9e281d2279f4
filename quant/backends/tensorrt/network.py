"""The TensorRT steps both flavours share, parameterised by the imported module (``tensorrt`` or
``tensorrt_rtx``): logger bridge, plugins, network creation, ONNX parsing with quant's error
messages, network inputs, builder configuration, optimization profiles, timing cache, target
compute capabilities, and a summary of the parsed network (``quant inspect --trt``).

Nothing here imports TensorRT: every function gets the module (``trt``) it works with, so the one
strongly typed build path in :mod:`quant.backends.tensorrt.builder` runs unchanged on TensorRT
10.x/11.x and on TensorRT-RTX.
"""

from __future__ import annotations

import ctypes
import logging
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.backends.base import TensorSpec
from quant.backends.tensorrt.flavors import RTX_COMPUTE_CAPABILITIES, Capabilities
from quant.backends.tensorrt.options import ShapeProfile
from quant.errors import ModelError, UsageError

if TYPE_CHECKING:
    # TensorRT-RTX's objects have TensorRT's API: typed with TensorRT's (checked against
    # tensorrt-stubs by tests/backends/tensorrt/test_trt_static.py).
    import tensorrt

log = logging.getLogger("quant.backends.tensorrt")


# --------------------------------------------------------------------------------------------
# Logger
# --------------------------------------------------------------------------------------------


class LoggingBridge:
    """Forward TensorRT's messages to ``logging`` (warnings as warnings; errors, info and verbose
    as debug) and remember the last errors: every TensorRT error ends up in the one-line message
    of the exception quant raises, so it is not printed a second time (``--verbose`` shows all). :func:`make_logger` mixes this
    into the module's ``ILogger``."""

    errors: deque[str]

    def _start_bridge(self) -> None:
        self.errors = deque(maxlen=8)

    def _forward(self, severity: Any, msg: str, sev: Any) -> None:
        if severity in (sev.INTERNAL_ERROR, sev.ERROR):
            self.errors.append(msg)
            log.debug("TensorRT error: %s", msg)
        elif severity == sev.WARNING:
            log.warning("TensorRT: %s", msg)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("TensorRT: %s", msg)

    def last_error(self) -> str | None:
        return self.errors[-1] if self.errors else None


_LOGGERS: dict[ModuleType, LoggingBridge] = {}


def make_logger(trt: ModuleType) -> LoggingBridge:
    """The :class:`LoggingBridge` of module ``trt``, which is also its ``ILogger``, with its
    remembered errors cleared.

    One per module and process: TensorRT keeps the first logger a builder or runtime was created
    with and ignores later ones ("The logger passed into createInferBuilder differs from one
    already registered"), so a fresh logger per build would never see TensorRT's errors. The
    class calls its TensorRT base ``__init__`` explicitly, as the TensorRT Python API requires of
    classes it calls back into."""
    bridge = _LOGGERS.get(trt)
    if bridge is not None:
        bridge.errors.clear()
        return bridge
    base = trt.ILogger
    severity = base.Severity

    def __init__(self: Any) -> None:
        base.__init__(self)
        LoggingBridge._start_bridge(self)

    def log_method(self: Any, sev: Any, msg: str) -> None:
        LoggingBridge._forward(self, sev, msg, severity)

    cls = type("TrtLoggingBridge", (LoggingBridge, base), {"__init__": __init__, "log": log_method})
    bridge = cls()
    _LOGGERS[trt] = bridge
    return bridge


# --------------------------------------------------------------------------------------------
# Plugins, network, parser
# --------------------------------------------------------------------------------------------

_PLUGIN_LIBS: list[ctypes.CDLL] = []


def load_plugins(trt: ModuleType, logger: LoggingBridge, plugins: Sequence[Path]) -> None:
    """Register TensorRT's own plugins, then load each plugin library (like trtexec's
    ``--staticPlugins``: the library registers its creators when it is loaded). Call before
    parsing a model or deserializing an engine that uses them."""
    if not trt.init_libnvinfer_plugins(logger, ""):
        log.warning("TensorRT's own plugins could not be registered; models using them will not parse")
    for lib in plugins:
        path = Path(lib)
        if not path.is_file():
            raise UsageError(f"--plugins '{path}': no such file; give the path of the plugin library (.so)")
        try:
            _PLUGIN_LIBS.append(ctypes.CDLL(str(path.resolve()), mode=ctypes.RTLD_GLOBAL))
        except OSError as exc:
            raise ModelError(
                f"cannot load plugin library '{path}': {exc}; check it was built for this TensorRT "
                f"and CUDA version"
            ) from exc
        log.info("loaded plugin library '%s'", path)


def network_flags(trt: ModuleType, caps: Capabilities, strongly_typed: bool) -> int:
    """The creation flags of an ONNX network: EXPLICIT_BATCH before 10.0, STRONGLY_TYPED where
    asked for and the flag exists (TensorRT 11 may no longer have it: always strongly typed)."""
    flags = 0
    if caps.needs_explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:
            flags |= 1 << int(flag)
    return flags


def parser_errors(parser: tensorrt.OnnxParser) -> list[str]:
    """The parser's errors, each ``node 'NAME' (OP): TensorRT's message`` where it names a node."""
    errors: list[str] = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = " ".join(str(err.desc()).split())
        node = err.node()
        name_fn = getattr(err, "node_name", None)
        op_fn = getattr(err, "node_operator", None)
        name = str(name_fn()) if callable(name_fn) else ""
        op = str(op_fn()) if callable(op_fn) else ""
        if name:
            where = f"node '{name}'" + (f" ({op})" if op else "")
        elif isinstance(node, int) and node >= 0:
            where = f"node {node}" + (f" ({op})" if op else "")
        else:
            where = ""
        errors.append(f"{where}: {desc}" if where else desc)
    return errors


def parser_message(caps: Capabilities, parser: tensorrt.OnnxParser, model: str | Path, logger: LoggingBridge) -> str:
    """One line: what TensorRT's ONNX parser refused, with its own words."""
    errors = parser_errors(parser)
    if not errors:
        errors.append(logger.last_error() or "no details from the parser")
    text = errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    hint = ""
    if any("plugin" in e.lower() or "no importer" in e.lower() for e in errors):
        hint = "; a custom layer? load its plugin library with --plugins lib.so"
    elif any("zero point" in e.lower() for e in errors):
        hint = "; TensorRT's INT8 is symmetric (zero point 0, signed INT8): quantize with quant build"
    return f"{caps.flavor.label} cannot parse '{model}': {text}{hint}"


def parse_onnx_unchecked(
    trt: ModuleType,
    caps: Capabilities,
    builder: tensorrt.Builder,
    logger: LoggingBridge,
    *,
    model_path: Path,
    onnx_bytes: bytes | None,
    strongly_typed: bool,
) -> tuple[tensorrt.INetworkDefinition, tensorrt.OnnxParser, bool]:
    """Create the network and parse the model into it (from the file, or from ``onnx_bytes`` when
    quant rewrote it). Returns (network, parser, parsed); the parser keeps its errors."""
    network = builder.create_network(network_flags(trt, caps, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if onnx_bytes is None:
        ok = parser.parse_from_file(str(model_path))
    else:
        ok = parser.parse(onnx_bytes, str(model_path))
    return network, parser, bool(ok)


def parse_onnx(
    trt: ModuleType,
    caps: Capabilities,
    builder: tensorrt.Builder,
    logger: LoggingBridge,
    *,
    model_path: Path,
    onnx_bytes: bytes | None,
    strongly_typed: bool,
) -> tuple[tensorrt.INetworkDefinition, tensorrt.OnnxParser]:
    """:func:`parse_onnx_unchecked`, with ModelError naming the node when parsing fails."""
    network, parser, ok = parse_onnx_unchecked(
        trt, caps, builder, logger, model_path=model_path, onnx_bytes=onnx_bytes, strongly_typed=strongly_typed
    )
    if not ok:
        raise ModelError(parser_message(caps, parser, model_path, logger))
    return network, parser


def dims(d: tensorrt.Dims) -> tuple[int, ...]:
    """A TensorRT ``Dims`` as a tuple of ints (-1 for dynamic dimensions)."""
    return tuple(int(d[i]) for i in range(len(d)))


def network_inputs(trt: ModuleType, network: tensorrt.INetworkDefinition) -> list[TensorSpec]:
    """The network's inputs (None for dynamic dimensions); shape-tensor inputs are refused."""
    specs: list[TensorSpec] = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.is_shape_tensor:
            raise ModelError(
                f"network input '{t.name}' is a shape tensor, which quant's TensorRT backend does not "
                f"support; export the model with a data input instead"
            )
        shape = tuple(None if d < 0 else d for d in dims(t.shape))
        specs.append(TensorSpec(t.name, shape, np.dtype(trt.nptype(t.dtype))))
    return specs


# --------------------------------------------------------------------------------------------
# Builder configuration
# --------------------------------------------------------------------------------------------


def configure(
    trt: ModuleType,
    config: tensorrt.IBuilderConfig,
    *,
    flags: Sequence[str],
    clear_flags: Sequence[str],
    workspace_mb: int | None,
    optimization_level: int | None,
) -> None:
    """Builder flags to set / clear (a flag the module lacks is skipped when clearing), workspace
    limit, optimization level, and DETAILED profiling verbosity (layer names, types, precisions
    and tactics in the engine, for ``quant inspect``)."""
    for name in flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in clear_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            config.clear_flag(flag)
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if optimization_level is not None:
        config.builder_optimization_level = int(optimization_level)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED


def set_compute_capabilities(trt: ModuleType, config: Any, targets: Sequence[str]) -> None:
    """TensorRT-RTX: build for ``targets`` (quant's spelling, e.g. ``("8.9", "12.0")``);
    () keeps TensorRT-RTX's default set."""
    if not targets:
        return
    config.num_compute_capabilities = len(targets)
    for i, cc in enumerate(targets):
        member = getattr(trt.ComputeCapability, RTX_COMPUTE_CAPABILITIES[cc])
        if not config.set_compute_capability(member, i):
            raise UsageError(f"--compute-capability: TensorRT-RTX refused target {cc}")


def attach_timing_cache(config: tensorrt.IBuilderConfig, path: Path | None) -> Path | None:
    """Load (or start) the timing cache file; the caller saves it after the build."""
    if path is None:
        return None
    data = b""
    if path.exists():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"--timing-cache '{path}': cannot read it ({exc.strerror or exc})") from exc
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache '%s' was made by another TensorRT version or GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log.info("using timing cache '%s'", path)
    return path


def make_profile(
    trt: ModuleType, builder: tensorrt.Builder, profiles: Sequence[ShapeProfile]
) -> tensorrt.IOptimizationProfile:
    """An optimization profile with min / opt / max of each dynamic input."""
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    return profile


# --------------------------------------------------------------------------------------------
# What TensorRT made of the model (quant inspect --trt)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkView:
    """TensorRT's network after parsing: layers by type, the Q/DQ layers, inputs and outputs."""

    source: str
    trt: str
    num_layers: int
    layer_types: dict[str, int]
    quantize_layers: tuple[str, ...]
    dequantize_layers: tuple[str, ...]
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]
    parser_errors: tuple[str, ...] = ()
    built: bool | None = None
    engine_bytes: int | None = None
    build_seconds: float | None = None
    messages: tuple[str, ...] = field(default_factory=tuple)

    @property
    def parsed(self) -> bool:
        return not self.parser_errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "trt": self.trt,
            "parsed": self.parsed,
            "parser_errors": list(self.parser_errors),
            "num_layers": self.num_layers,
            "layer_types": dict(self.layer_types),
            "quantize_layers": list(self.quantize_layers),
            "dequantize_layers": list(self.dequantize_layers),
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.inputs],
            "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.outputs],
            "built": self.built,
            "engine_bytes": self.engine_bytes,
            "build_seconds": self.build_seconds,
            "messages": list(self.messages),
        }


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", None)
    return str(name) if name else str(value).rsplit(".", 1)[-1]


def _tensors(network: tensorrt.INetworkDefinition, count: int, get: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    out = []
    for i in range(count):
        t = getattr(network, get)(i)
        out.append((str(t.name), dims(t.shape), _enum_name(t.dtype)))
    return tuple(out)


def network_view(caps: Capabilities, network: tensorrt.INetworkDefinition, *, source: str) -> NetworkView:
    """Count the parsed network's layers by ``LayerType`` and list its Q/DQ layers."""
    types: Counter[str] = Counter()
    quantize: list[str] = []
    dequantize: list[str] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = _enum_name(layer.type)
        types[kind] += 1
        if kind == "QUANTIZE":
            quantize.append(str(layer.name))
        elif kind == "DEQUANTIZE":
            dequantize.append(str(layer.name))
    return NetworkView(
        source=source,
        trt=caps.describe,
        num_layers=int(network.num_layers),
        layer_types=dict(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
        quantize_layers=tuple(quantize),
        dequantize_layers=tuple(dequantize),
        inputs=_tensors(network, network.num_inputs, "get_input"),
        outputs=_tensors(network, network.num_outputs, "get_output"),
    )


def render_network_view(view: NetworkView, *, max_names: int = 8) -> str:
    """The text ``quant inspect model.onnx --trt`` prints."""
    lines = [f"TensorRT view  {view.source} ({view.trt}'s ONNX parser)"]
    if not view.parsed:
        lines.append(f"parser refused the model ({len(view.parser_errors)} error(s)):")
        lines.extend(f"  {e}" for e in view.parser_errors)
        return "\n".join(lines)
    for label, tensors in (("input ", view.inputs), ("output", view.outputs)):
        for name, shape, dtype in tensors:
            lines.append(f"{label}  {name}  {'x'.join(str(d) for d in shape)}  {dtype}")
    lines.append(f"layers  {view.num_layers}")
    width = max((len(k) for k in view.layer_types), default=4)
    for kind, n in view.layer_types.items():
        lines.append(f"  {kind.ljust(width)}  {n}")
    for label, names in (("quantize", view.quantize_layers), ("dequantize", view.dequantize_layers)):
        shown = ", ".join(names[:max_names]) + (f", ... ({len(names) - max_names} more)" if len(names) > max_names else "")
        lines.append(f"{label} layers  {len(names)}" + (f": {shown}" if names else ""))
    if view.built is not None:
        if view.built:
            lines.append(f"engine  built in {view.build_seconds:.2f} s, {view.engine_bytes} bytes (not written)")
        else:
            lines.append("engine  the builder failed")
    lines.extend(f"note  {m}" for m in view.messages)
    return "\n".join(lines)


__all__ = [
    "LoggingBridge",
    "NetworkView",
    "attach_timing_cache",
    "configure",
    "dims",
    "load_plugins",
    "make_logger",
    "make_profile",
    "network_flags",
    "network_inputs",
    "network_view",
    "parse_onnx",
    "parse_onnx_unchecked",
    "parser_errors",
    "parser_message",
    "render_network_view",
    "set_compute_capabilities",
]
