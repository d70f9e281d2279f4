"""ONNX Runtime runner: one small interface (open, input metadata, infer, close) over an InferenceSession.

onnxruntime (and onnx) are imported inside the functions that need them, so importing this
module is cheap. ORT's own logging is silenced (severity "fatal"): every failure becomes a
one-line :class:`ModelError` / :class:`DataError` naming the model, and ORT's full text goes to
this module's logger at debug level.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from quant._io import atomic_output
from quant.backends.base import TensorSpec
from quant.errors import BackendUnavailableError, DataError, ModelError, UsageError

if TYPE_CHECKING:
    import onnx

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("all", "extended", "basic", "none")

# Protobuf cannot serialise a message of 2 GiB or more; bigger models go through a temporary
# file with external data instead of bytes.
_MAX_INLINE_BYTES = 2**31 - 2**20

_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}

# How ONNX Runtime computes a Q/DQ model (the ``int8`` argument of :class:`OrtRunner`):
# - "exact": QuantizeLinear/DequantizeLinear stay separate nodes and the ops between them run in
#   float (session config ``session.disable_quant_qdq=1``). Each product of two dequantized INT8
#   values is exact in float32 and the sums round like float32: TensorRT's int32 accumulation up to
#   float rounding, on every CPU. This is what quant runs wherever it predicts TensorRT.
# - "fused": ORT fuses DQ -> op -> Q groups into its integer kernels (QLinearConv, MatMulInteger...),
#   the way a deployed CPU model runs. On x86 without VNNI those multiply u8 x s8 pairs with a 16-bit
#   saturating multiply-add, so the result depends on the CPU (docs/DESIGN.md, "INT8 arithmetic").
INT8_ARITHMETIC = ("exact", "fused")
EXACT_INT8_SESSION_CONFIG = {"session.disable_quant_qdq": "1"}

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


def _import_ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:  # a core dependency, but say what to do if it is broken or absent
        raise BackendUnavailableError(
            "onnxruntime is not installed; install it with 'pip install onnxruntime'"
        ) from exc
    return onnxruntime


_SHARED_ARENA: list[bool] = []


def _shared_cpu_arena(ort: ModuleType) -> bool:
    """Register (once per process) a CPU arena in ORT's environment that sessions can share.

    Sessions created with ``session.use_env_allocators`` then draw from one arena instead of one
    each, so several sessions alive at once hold the peak of the largest, not the sum of all.
    Returns False (each session keeps its own arena) when this ORT build cannot register one.
    """
    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # max_mem 0 (no limit), extend strategy 1 (kSameAsRequested: no power-of-two overshoot)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _SHARED_ARENA.append(True)
        except Exception as exc:  # older builds lack the API or refuse the registration
            logger.debug("cannot register a shared ONNX Runtime CPU arena: %s", exc)
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def default_threads() -> int:
    """Intra-op threads for a session: the CPUs this process may run on.

    ONNX Runtime's own default counts the machine's cores and, in some builds, pins one thread to
    each, ignoring the process's CPU affinity (``taskset``, container CPU sets): 16 threads then
    fight over 2 allowed CPUs. Asking for the affinity count avoids that everywhere.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def ort_version() -> str:
    """The installed ONNX Runtime version, e.g. '1.18.0'."""
    return str(_import_ort().__version__)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return _ORT_PREFIX.sub("", line).strip()


def describe_session_error(exc: BaseException, model: str) -> str:
    """One-line message for an InferenceSession creation failure, naming the model and the cause."""
    text = str(exc)
    m = re.search(r"(\S+?):([\w.]+)\(-?\d+\) is not a registered function/op", text)
    if m:
        return (
            f"model '{model}' uses op '{m.group(2)}' (domain '{m.group(1)}') that ONNX Runtime does not "
            "know; register its custom-op library or remove it"
        )
    m = re.search(r"No Op registered for ([\w.]+) with domain_version of (\d+)", text)
    if m:
        node = re.search(r'In Node, \("[^"]*", [\w.]+, "([^"]*)"', text)
        domain = node.group(1) if node and node.group(1) else "ai.onnx"
        fix = (
            "check the op name and the model's opset, or re-export the model with supported ops"
            if domain in ("ai.onnx", "ai.onnx.ml", "com.microsoft")
            else "register its custom-op library or remove it"
        )
        return (
            f"model '{model}' uses op '{m.group(1)}' (domain '{domain}', opset {m.group(2)}) that ONNX "
            f"Runtime {ort_version()} does not know; {fix}"
        )
    m = re.search(
        r"Opset (\d+) is under development.*?support for domain (\S+) is till opset (\d+)", text, re.S
    )
    if m:
        return (
            f"model '{model}' uses opset {m.group(1)} of domain '{m.group(2)}', but ONNX Runtime "
            f"{ort_version()} supports up to opset {m.group(3)}; export the model with opset "
            f"<= {m.group(3)} or upgrade onnxruntime"
        )
    m = re.search(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'", text)
    if m:
        return (
            f"model '{model}': ONNX Runtime {ort_version()} has no kernel for op '{m.group(1)}' at opset "
            f"{m.group(2)} (node '{m.group(3)}') with these input types; re-export the model with a newer "
            "opset (ONNX Runtime supports opset 7 and later) or with float32 inputs for that op"
        )
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if m:
        return (
            f"model '{model}' has ONNX IR version {m.group(1)}, but ONNX Runtime {ort_version()} "
            f"supports up to {m.group(2)}; re-save the model with an older onnx or upgrade onnxruntime"
        )
    return f"ONNX Runtime cannot load model '{model}': {_first_line(exc)}"


def numpy_dtype(ort_type: str) -> np.dtype:
    """numpy dtype of an ORT type string such as 'tensor(float)'; KeyError for non-tensor types."""
    return np.dtype(_ORT_TYPES[ort_type])


def _fmt_shape(shape: Sequence[object]) -> str:
    dims = [str(d) if isinstance(d, (int, str)) and d != "" else "?" for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def check_feed(feed: Mapping[str, Any], specs: Sequence[TensorSpec], *, model: str) -> None:
    """Check a feed against the model inputs before running; DataError naming the input otherwise.

    Catches missing and extra names, non-arrays, wrong dtype, wrong rank and wrong static
    dimensions (dynamic dimensions accept any size), so that ORT's own message never reaches users.
    """
    expected = {s.name: s for s in specs}
    for name in expected:
        if name not in feed:
            raise DataError(
                f"the data has no input '{name}' that model '{model}' needs (data inputs: "
                f"{', '.join(feed) or 'none'}); check the input names of the data"
            )
    for name, value in feed.items():
        spec = expected.get(name)
        if spec is None:
            raise DataError(
                f"the data has input '{name}' that model '{model}' does not have (model inputs: "
                f"{', '.join(expected)}); rename or drop it"
            )
        if not isinstance(value, np.ndarray):
            raise DataError(
                f"input '{name}' for model '{model}' is a {type(value).__name__}, not a numpy array"
            )
        if value.dtype != spec.dtype:
            raise DataError(
                f"input '{name}' has dtype {value.dtype} but model '{model}' expects {spec.dtype}; "
                "convert the data (or check the preprocessing)"
            )
        wrong_rank = value.ndim != len(spec.shape)
        wrong_dim = not wrong_rank and any(
            isinstance(d, int) and d > 0 and d != actual
            for d, actual in zip(spec.shape, value.shape, strict=True)
        )
        batch = spec.shape[0] if spec.shape else None
        if (
            not wrong_rank
            and isinstance(batch, int)
            and batch > 0
            and value.shape[0] != batch
            and all(
                not (isinstance(d, int) and d > 0) or d == actual
                for d, actual in zip(spec.shape[1:], value.shape[1:], strict=True)
            )
        ):
            raise DataError(
                f"input '{name}': a batch of {value.shape[0]} samples, but model '{model}' has a fixed "
                f"batch size of {batch}; give a multiple of {batch} samples (e.g. --max-samples) or export "
                "the model with a dynamic batch dimension"
            )
        if wrong_rank or wrong_dim:
            raise DataError(
                f"input '{name}' has shape {_fmt_shape(value.shape)} but model '{model}' expects "
                f"{_fmt_shape(spec.shape)}; check the preprocessing (size, layout) or the data"
            )


def add_outputs(model: onnx.ModelProto, names: Sequence[str], *, model_name: str) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (tensors of the main graph).

    Element types come from the graph's value_info, inputs and outputs, else from shape inference,
    else float32; shapes are left open (ORT needs only the type).
    """
    import onnx
    from onnx import helper

    graph = model.graph
    existing = {o.name for o in graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    known = {i.name for i in graph.input} | {o for node in graph.node for o in node.output}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise ModelError(
            f"model '{model_name}' has no tensor '{missing[0]}' in its main graph"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; check the tensor names"
        )
    types = {
        vi.name: vi.type.tensor_type.elem_type for vi in (*graph.value_info, *graph.input, *graph.output)
    }
    if any(not types.get(n) for n in wanted):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception as exc:  # inference is only a source of types; fall back to float32
            logger.debug(
                "shape inference failed for model '%s' (%s); assuming float32 outputs", model_name, exc
            )
        else:
            for vi in inferred.graph.value_info:
                if vi.type.tensor_type.elem_type and not types.get(vi.name):
                    types[vi.name] = vi.type.tensor_type.elem_type
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in wanted:
        elem = types.get(name) or onnx.TensorProto.FLOAT
        copy.graph.output.append(helper.make_tensor_value_info(name, elem, None))
    return copy


def _add_initializers(ort: ModuleType, options: Any, initializers: Mapping[str, np.ndarray] | None) -> None:
    """Hand ``initializers`` to a session's options as ORT external initializers: they replace the
    model's initializer stubs of those names (external data), and ORT copies them in."""
    if initializers:
        names = list(initializers)
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(initializers[n])) for n in names]
        options.add_external_initializers(names, values)


def save_optimized(
    model: bytes,
    path: Path,
    *,
    name: str,
    initializers: Mapping[str, np.ndarray] | None = None,
    external_weights: str | None = None,
    session_config: Mapping[str, str] | None = None,
) -> None:
    """Write ONNX Runtime's optimized form of the serialized ``model`` to ``path``: every graph
    optimization for the CPU provider, including the layout ones (NCHWc) that depend on this
    machine's CPU, so the file is for this machine only. ``initializers`` replace the model's
    initializers of those names that are stubs with external data (ORT copies them in before it
    optimizes). ``external_weights``: a file name next to ``path`` where ORT writes the initializers
    of 1 KiB or more (external data), instead of inline. ``session_config``: ORT session
    configuration entries for the optimization (e.g. :data:`EXACT_INT8_SESSION_CONFIG`, which keeps
    a Q/DQ model's QuantizeLinear and DequantizeLinear nodes apart). The session is only built,
    never run (weight pre-packing is off: it is thrown away at once). ModelError naming ``name`` if
    ORT refuses the model."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # also silences ORT's warning that the file is machine-specific
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.disable_prepacking", "1")
    for key, value in (session_config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    if external_weights is not None:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", external_weights)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    _add_initializers(ort, options, initializers)
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises pybind exceptions without a common base
        logger.debug("ONNX Runtime could not optimize '%s': %s", name, exc)
        raise ModelError(describe_session_error(exc, name)) from exc
    del session


def _display_name(model: object) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    graph_name = getattr(getattr(model, "graph", None), "name", "")
    return graph_name if isinstance(graph_name, str) and graph_name else "<in-memory model>"


class OrtRunner:
    """An ONNX Runtime InferenceSession behind the :class:`quant.backends.base.Runner` interface.

    ``model`` is a ModelProto (sent to ORT as bytes; a model over 2 GiB goes through a temporary
    file with external data, removed on close) or a path. ``extra_outputs`` are intermediate
    tensors added as graph outputs (on a copy). ``optimization`` is "all" | "extended" | "basic" |
    "none" ("extended" skips the layout transformations, e.g. NCHWc, that copy weights);
    ``threads`` sets ORT's intra-op thread count (None: the CPUs this process may use, see
    :func:`default_threads`). ``name`` names
    the model in messages (default: the path, or the graph name). ``session_config`` holds ORT
    session configuration entries (e.g. ``{"session.intra_op.allow_spinning": "0"}``);
    ``memory_arena=False`` lets freed activations go back to the system allocator instead of a
    per-session arena; ``"shared"`` draws from one arena that all sessions created so share
    (several sessions alive at once then hold one peak, not one each). ``initializers`` give the
    values of initializers that the model holds as stubs with external data (ORT copies them in;
    calibration's stages get their weights this way, see quant/calibrators/blocked.py). ``int8``
    chooses how Q/DQ models are computed (see :data:`INT8_ARITHMETIC`): "exact" (default:
    TensorRT's arithmetic on every CPU) or "fused" (ORT's integer kernels, what a CPU deployment
    runs; CPU-dependent). Session creation failures become ModelError with a one-line cause.
    """

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        *,
        threads: int | None = None,
        extra_outputs: Sequence[str] = (),
        optimization: str = "all",
        providers: Sequence[str] = ("CPUExecutionProvider",),
        name: str | None = None,
        session_config: Mapping[str, str] | None = None,
        memory_arena: bool | str = True,
        initializers: Mapping[str, np.ndarray] | None = None,
        int8: str = "exact",
    ) -> None:
        if int8 not in INT8_ARITHMETIC:
            raise UsageError(f"int8 arithmetic must be one of {', '.join(INT8_ARITHMETIC)} (got {int8!r})")
        if optimization not in OPTIMIZATION_LEVELS:
            raise UsageError(
                f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)} (got {optimization!r})"
            )
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"--threads must be a positive integer (got {threads!r})")
        ort = _import_ort()
        available = ort.get_available_providers()
        for provider in providers:
            if provider not in available:
                raise BackendUnavailableError(
                    f"ONNX Runtime execution provider '{provider}' is not available (available: "
                    f"{', '.join(available)}); install the onnxruntime build that has it"
                )
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._session: Any = None
        self.name = name or _display_name(model)
        source = self._prepare(model, list(extra_outputs))

        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: errors are reported through ModelError
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        if threads is None:
            threads = default_threads()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if memory_arena == "shared" and _shared_cpu_arena(ort):
            options.add_session_config_entry("session.use_env_allocators", "1")
        else:
            options.enable_cpu_mem_arena = bool(memory_arena)
        config = dict(EXACT_INT8_SESSION_CONFIG) if int8 == "exact" else {}
        config.update(session_config or {})
        for key, value in config.items():
            options.add_session_config_entry(str(key), str(value))
        self.int8 = int8
        _add_initializers(ort, options, initializers)
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        try:
            self._session = ort.InferenceSession(source, sess_options=options, providers=list(providers))
        except Exception as exc:  # ORT raises pybind exceptions without a common base
            self._cleanup_tmp()
            logger.debug("ONNX Runtime session creation failed for '%s': %s", self.name, exc)
            raise ModelError(describe_session_error(exc, self.name)) from exc
        self._inputs = self._read_input_specs()
        self._outputs = [o.name for o in self._session.get_outputs()]

    def _prepare(self, model: onnx.ModelProto | str | Path, extra: list[str]) -> str | bytes:
        """What to hand to InferenceSession: a path or the serialized model."""
        import onnx

        if isinstance(model, (str, Path)):
            path = Path(model)
            if not path.is_file():
                raise ModelError(f"model file '{path}' does not exist; check the path")
            if not extra:
                return str(path)
            try:
                model = onnx.load(str(path))
            except Exception as exc:  # onnx raises DecodeError, OSError, ValidationError...
                raise ModelError(f"cannot read model '{self.name}' as ONNX: {_first_line(exc)}") from exc
        elif not isinstance(model, onnx.ModelProto):
            raise UsageError(f"OrtRunner needs an onnx.ModelProto or a path, got {type(model).__name__}")
        proto = add_outputs(model, extra, model_name=self.name) if extra else model
        # Serialising is the cheap size check (ByteSize() walks a model with large weights slowly);
        # protobuf refuses messages of 2 GiB or more.
        try:
            data = proto.SerializeToString()
        except ValueError:
            data = b""
        if 0 < len(data) < _MAX_INLINE_BYTES:
            return data
        return self._write_temp(proto, copied=bool(extra))

    def _write_temp(self, proto: onnx.ModelProto, *, copied: bool) -> str:
        """Save a large model with external data in a private temporary directory; return the path."""
        import onnx

        if not copied:  # saving with external data rewrites the proto in place: never the caller's
            own = onnx.ModelProto()
            own.CopyFrom(proto)
            proto = own
        self._tmpdir = tempfile.TemporaryDirectory(prefix="quant-ort-")
        path = Path(self._tmpdir.name) / "model.onnx"
        # onnx writes the external data file itself, next to the model, inside our private directory.
        with atomic_output(path) as tmp:
            onnx.save_model(
                proto,
                str(tmp),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="model.onnx.data",
            )
        logger.debug("model '%s' is over 2 GiB; loading it through %s", self.name, path)
        return str(path)

    def _read_input_specs(self) -> list[TensorSpec]:
        specs = []
        for arg in self._session.get_inputs():
            try:
                dtype = numpy_dtype(arg.type)
            except KeyError:
                self.close()
                raise ModelError(
                    f"model '{self.name}' input '{arg.name}' has type {arg.type}; only tensor inputs of "
                    "numeric types are supported"
                ) from None
            shape = tuple(d if isinstance(d, (int, str)) else None for d in arg.shape)
            specs.append(TensorSpec(arg.name, shape, dtype))
        return specs

    # -- Runner interface ----------------------------------------------------------------------

    def __enter__(self) -> OrtRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def input_specs(self) -> list[TensorSpec]:
        """Name, shape (str/None for dynamic dims) and numpy dtype of every model input."""
        return list(self._inputs)

    def output_names(self) -> list[str]:
        """Names of every output the session produces, extra outputs included."""
        return list(self._outputs)

    def infer(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested ``outputs`` (default: all) by name.

        The feed is checked first (DataError naming the input, its shape and the expected
        shape); a failure inside ORT becomes ModelError naming the model with ORT's first line.
        """
        if self._session is None:
            raise ModelError(
                f"the ONNX Runtime session of model '{self.name}' is closed; create a new runner"
            )
        check_feed(feed, self._inputs, model=self.name)
        names = list(outputs) if outputs is not None else self._outputs
        unknown = [n for n in names if n not in self._outputs]
        if unknown:
            raise ModelError(
                f"model '{self.name}' has no output '{unknown[0]}' (outputs: {', '.join(self._outputs)}); "
                "add it with extra_outputs"
            )
        try:
            values = self._session.run(names, dict(feed), self._run_options)
        except Exception as exc:  # ORT raises pybind exceptions without a common base
            logger.debug("ONNX Runtime run failed for '%s': %s", self.name, exc)
            raise ModelError(f"model '{self.name}' failed in ONNX Runtime: {_first_line(exc)}") from exc
        return dict(zip(names, values, strict=True))

    def infer_values(self, feed: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        """Run one batch without copying: ``feed`` values are numpy arrays or OrtValues and the
        ``outputs`` come back as OrtValues (``.numpy()`` is a view of ORT's buffer, valid while the
        OrtValue is referenced).

        The fast path for callers that feed the outputs of one session into another and reduce
        large activations in place (calibration). The feed is not checked here: check it once with
        :func:`check_feed` against the specs the caller promises. ORT failures become ModelError.
        """
        if self._session is None:
            raise ModelError(
                f"the ONNX Runtime session of model '{self.name}' is closed; create a new runner"
            )
        ort = _import_ort()
        values = {
            k: v if isinstance(v, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(v)
            for k, v in feed.items()
        }
        names = list(outputs)
        try:
            result = self._session.run_with_ort_values(names, values, self._run_options)
        except Exception as exc:  # ORT raises pybind exceptions without a common base
            logger.debug("ONNX Runtime run failed for '%s': %s", self.name, exc)
            raise ModelError(f"model '{self.name}' failed in ONNX Runtime: {_first_line(exc)}") from exc
        return dict(zip(names, result, strict=True))

    def close(self) -> None:
        """Release the session (and the temporary model file, if any). Idempotent."""
        self._session = None
        self._cleanup_tmp()

    def _cleanup_tmp(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
