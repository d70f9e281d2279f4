"""Build TensorRT engines from ONNX models: INT8 (calibrator, dynamic ranges or Q/DQ), FP16, FP32.

What happens depends on the installed TensorRT (see :func:`plan_build`, pure and unit-tested):

============================  =================================================================
TensorRT 8.6-10.x, int8       plain model: INT8 (+FP16 with ``allow_fp16``) builder flags and an
                              IInt8 calibrator fed by the data; an existing cache is handed to it
                              and TensorRT does not recalibrate. ``dynamic_range``: ranges from
                              the cache with ``ITensor.set_dynamic_range``, no calibrator.
                              Q/DQ model: explicit quantization (INT8 flag, weakly typed).
TensorRT 11.x, int8           Q/DQ model: strongly typed explicit quantization. Plain model +
                              cache: quant inserts Q/DQ nodes from the cache first.
fp16                          FP16 flag (< 11); on 11, the model's float types are converted to
                              FP16 first (TensorRT 11 has no FP16 flag).
fp32                          no precision flags, TF32 off (results comparable with ONNX Runtime).
============================  =================================================================

Every engine gets a sidecar ``<engine>.json`` (TensorRT version, GPU, precision, options, hashes)
that :class:`~quant.backends.tensorrt.runner.TrtRunner` checks before loading.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from quant.backends.base import TensorSpec
from quant.backends.tensorrt.options import (
    CalibratorKind,
    EngineBuildOptions,
    ShapeProfile,
    calibration_shapes,
    resolve_profiles,
)
from quant.backends.tensorrt.sidecar import GpuInfo
from quant.backends.tensorrt.versions import TrtVersion
from quant.errors import CacheError, ModelError, OutputError, QuantError, UsageError

if TYPE_CHECKING:
    import onnx
    import tensorrt

    from quant.backends.tensorrt._trt import LoggingBridge
    from quant.backends.tensorrt.calibrator import CalibratorCore
    from quant.cache.io import LoadedCache
    from quant.datasets.base import Dataset

log = logging.getLogger(__name__)

Mode = Literal[
    "int8-calibrator",
    "int8-dynamic-range",
    "int8-qdq",
    "int8-qdq-from-cache",
    "fp16",
    "fp16-converted",
    "fp32",
]
Transform = Literal["none", "insert-qdq", "to-fp16"]


# --------------------------------------------------------------------------------------------
# The plan (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildPlan:
    """How an engine will be built: TensorRT builder flags to set / clear, network typing, a model
    rewrite before parsing, the calibrator, and messages for the user."""

    mode: Mode
    flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    transform: Transform = "none"
    calibrator: CalibratorKind | None = None
    uses_cache: bool = False
    messages: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "flags": list(self.flags),
            "clear_flags": list(self.clear_flags),
            "strongly_typed": self.strongly_typed,
            "transform": self.transform,
            "calibrator": self.calibrator,
            "uses_cache": self.uses_cache,
            "messages": list(self.messages),
        }


def plan_build(
    options: EngineBuildOptions,
    *,
    version: TrtVersion,
    model_has_qdq: bool,
    has_cache: bool,
    has_data: bool,
    cache_algorithm: str | None = None,
) -> BuildPlan:
    """Choose the build mode for ``options`` on TensorRT ``version`` (pure).

    Raises UsageError for what cannot be built: INT8 without a cache, data or Q/DQ nodes; TensorRT
    11 asked for a calibrator or dynamic ranges; FP16/FP32 asked of a Q/DQ (INT8) model.
    """
    from quant.backends.tensorrt.calibrator import kind_of_algorithm

    msgs: list[str] = []
    weak_precision = ("FP16",) if options.allow_fp16 else ()
    strongly = version.always_strongly_typed

    if options.precision != "int8" and model_has_qdq:
        raise UsageError(
            f"the model has QuantizeLinear/DequantizeLinear nodes (it is an INT8 model), so TensorRT "
            f"cannot build it as {options.precision}; use --precision int8, or pass the original model"
        )
    if options.precision == "fp32":
        if has_cache:
            msgs.append("--precision fp32: the cache is not used")
        return BuildPlan("fp32", clear_flags=("TF32",), strongly_typed=strongly, messages=tuple(msgs))
    if options.precision == "fp16":
        if has_cache:
            msgs.append("--precision fp16: the cache is not used")
        if version.has_precision_flags:
            return BuildPlan("fp16", flags=("FP16",), messages=tuple(msgs))
        msgs.append(
            f"TensorRT {version.short} has no FP16 builder flag (networks are strongly typed): "
            f"converting the model's float tensors to FP16 first (inputs and outputs stay FP32)"
        )
        return BuildPlan("fp16-converted", strongly_typed=True, transform="to-fp16", messages=tuple(msgs))

    # INT8
    if model_has_qdq:
        for flag, on in (("--dynamic-range", options.dynamic_range), ("--calibrator", options.calibrator is not None)):
            if on:
                raise UsageError(
                    f"{flag} applies to models without Q/DQ nodes; this model already carries its INT8 "
                    f"scales in QuantizeLinear/DequantizeLinear nodes"
                )
        if has_cache:
            msgs.append("the model already has Q/DQ nodes: their scales are used and the cache is ignored")
        if strongly:
            return BuildPlan("int8-qdq", strongly_typed=True, messages=tuple(msgs))
        return BuildPlan("int8-qdq", flags=("INT8", *weak_precision), messages=tuple(msgs))

    if not version.has_implicit_int8:
        if options.dynamic_range:
            raise UsageError(
                f"TensorRT {version.short} removed ITensor.set_dynamic_range; drop --dynamic-range "
                f"(quant inserts Q/DQ nodes from the cache instead)"
            )
        if options.calibrator is not None:
            raise UsageError(
                f"TensorRT {version.short} has no INT8 calibrators; drop --calibrator, run 'quant calibrate' "
                f"and build from its --cache"
            )
        if not has_cache:
            raise UsageError(
                f"TensorRT {version.short} has no INT8 calibrators: run 'quant calibrate MODEL --data DIR "
                f"--cache model.cache' first and pass --cache model.cache (quant then inserts Q/DQ nodes "
                f"from it)"
            )
        msgs.append(
            f"TensorRT {version.short} has no implicit INT8: building quant's Q/DQ model from the cache "
            f"first, then a strongly typed engine from it"
        )
        if has_data:
            msgs.append("the calibration data is not used: the ranges come from the cache")
        return BuildPlan(
            "int8-qdq-from-cache", strongly_typed=True, transform="insert-qdq", uses_cache=True, messages=tuple(msgs)
        )

    flags = ("INT8", *weak_precision)
    if options.dynamic_range:
        if not has_cache:
            raise UsageError("--dynamic-range sets ranges from a cache; pass --cache (run 'quant calibrate' first)")
        if has_data:
            msgs.append("--dynamic-range: the calibration data is not used, the ranges come from the cache")
        return BuildPlan("int8-dynamic-range", flags=flags, uses_cache=True, messages=tuple(msgs))
    if not has_cache and not has_data:
        raise UsageError(
            "--precision int8 needs a calibration cache (--cache), calibration data for TensorRT's "
            "calibrator (--data), or a model with Q/DQ nodes"
        )
    kind: CalibratorKind = options.calibrator or kind_of_algorithm(cache_algorithm) or "entropy2"
    return BuildPlan("int8-calibrator", flags=flags, calibrator=kind, uses_cache=has_cache, messages=tuple(msgs))


def has_qdq(model: onnx.ModelProto) -> bool:
    """True if the model has standard-domain QuantizeLinear or DequantizeLinear nodes."""
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx"):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineBuildResult:
    """What :func:`build_engine` built and how.

    ``calibration_batches`` is the number of batches TensorRT's calibrator consumed (0 when it
    reused the cache); ``cache_reused`` says TensorRT took the cache without calibrating.
    """

    engine: Path
    sidecar: Path
    trt_version: str
    gpu: GpuInfo
    precision: str
    mode: str
    calibrator: str | None = None
    calibration_batches: int = 0
    calibration_samples: int = 0
    cache: Path | None = None
    cache_written: Path | None = None
    cache_reused: bool = False
    dynamic_ranges_set: int = 0
    ranges_missing: tuple[str, ...] = ()
    timing_cache: Path | None = None
    messages: tuple[str, ...] = ()
    seconds: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": str(self.engine),
            "sidecar": str(self.sidecar),
            "trt_version": self.trt_version,
            "gpu": self.gpu.to_dict(),
            "precision": self.precision,
            "mode": self.mode,
            "calibrator": self.calibrator,
            "calibration_batches": self.calibration_batches,
            "calibration_samples": self.calibration_samples,
            "cache": None if self.cache is None else str(self.cache),
            "cache_written": None if self.cache_written is None else str(self.cache_written),
            "cache_reused": self.cache_reused,
            "dynamic_ranges_set": self.dynamic_ranges_set,
            "ranges_missing": list(self.ranges_missing),
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "messages": list(self.messages),
            "seconds": self.seconds,
            "plan": dict(self.plan),
        }


# --------------------------------------------------------------------------------------------
# Building (needs TensorRT)
# --------------------------------------------------------------------------------------------


def build_engine(
    model_path: str | Path,
    *,
    output: str | Path,
    options: EngineBuildOptions | None = None,
    cache: str | Path | None = None,
    calib_dataset: Dataset | None = None,
    cache_out: str | Path | None = None,
) -> EngineBuildResult:
    """Build ``output`` (a TensorRT engine) and ``output.json`` from the ONNX model at ``model_path``.

    ``cache``: a calibration cache (quant's, TensorRT's or ONNX Runtime's) for INT8. With a
    calibrator, a cache path that does not exist yet is where TensorRT's calibration is saved
    (with quant's sidecar); ``cache_out`` overrides where a new calibration is saved (default:
    ``cache`` when it did not exist, else ``<output>.cache``). ``calib_dataset`` feeds TensorRT's
    calibrator. Raises BackendUnavailableError without TensorRT or a GPU.
    """
    from quant.backends.tensorrt import import_tensorrt

    import_tensorrt()
    import tensorrt as trt

    from quant import __version__
    from quant._io import atomic_write, check_output_not_input
    from quant.backends.tensorrt import _trt
    from quant.backends.tensorrt import cuda as cu
    from quant.backends.tensorrt.calibrator import create_calibrator
    from quant.backends.tensorrt.sidecar import EngineSidecar, sha256_file, write_engine_sidecar
    from quant.graph.load import load_model

    options = options or EngineBuildOptions()
    start = time.perf_counter()
    model_path = Path(model_path)
    output = Path(output)
    cache_path = None if cache is None else Path(cache)
    check_output_not_input(output, model_path, cache_path, options.timing_cache)
    if not output.parent.exists() and str(output.parent) not in ("", "."):
        raise OutputError(f"cannot write '{output}': directory '{output.parent}' does not exist; create it first")
    version = TrtVersion.parse(trt.__version__)
    cu.set_device(options.device)
    gpu = cu.device_info(options.device)
    log.info("TensorRT %s on %s", version, gpu.describe())

    model = load_model(model_path)
    qdq = has_qdq(model)
    loaded = _read_cache_if_any(cache_path, options, version, qdq, calib_dataset is not None)
    plan = plan_build(
        options,
        version=version,
        model_has_qdq=qdq,
        has_cache=loaded is not None,
        has_data=calib_dataset is not None,
        cache_algorithm=None if loaded is None else loaded.parsed.algorithm,
    )
    messages = list(plan.messages)
    for m in plan.messages:
        log.info("%s", m)
    if loaded is not None and plan.uses_cache:
        messages.extend(_check_cache_fingerprint(loaded, model, strict=options.strict))

    onnx_bytes = _transformed_model(plan, model, loaded, options, messages)

    logger = _trt.make_logger()
    builder = trt.Builder(logger)
    load_plugins(logger, options.plugins)
    network = builder.create_network(_network_flags(version, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if onnx_bytes is None:
        parsed_ok = parser.parse_from_file(str(model_path))
    else:
        parsed_ok = parser.parse(onnx_bytes, str(model_path))
    if not parsed_ok:
        raise ModelError(_parser_message(parser, model_path, logger))
    inputs = _network_inputs(network)
    profiles = resolve_profiles(inputs, options.shapes)

    config = builder.create_builder_config()
    _configure(config, options, plan)
    timing_cache = _attach_timing_cache(config, options.timing_cache)
    if profiles:
        config.add_optimization_profile(_profile(builder, profiles))

    core: CalibratorCore | None = None
    calibrator = None
    ranges_set = 0
    ranges_missing: list[str] = []
    if plan.mode == "int8-calibrator":
        assert plan.calibrator is not None  # plan_build sets it in this mode
        core, calib_msgs = _calibrator_core(
            plan.calibrator,
            loaded=loaded,
            cache_path=cache_path,
            cache_out=None if cache_out is None else Path(cache_out),
            output=output,
            dataset=calib_dataset,
            inputs=inputs,
            profiles=profiles,
            options=options,
            version=version,
            model=model,
        )
        messages.extend(calib_msgs)
        calibrator = create_calibrator(core)
        config.int8_calibrator = calibrator
        if profiles:
            # TensorRT calibrates at the calibration profile's opt shapes (min/max are set to opt).
            fixed = [ShapeProfile(p.name, p.opt, p.opt, p.opt) for p in profiles]
            if not config.set_calibration_profile(_profile(builder, fixed)):
                raise QuantError(
                    f"TensorRT rejected the calibration profile {[p.text for p in fixed]}: "
                    f"{logger.last_error() or 'see the TensorRT messages above'}"
                )
    elif plan.mode == "int8-dynamic-range":
        assert loaded is not None  # plan_build requires a cache in this mode
        ranges_set, ranges_missing, range_msgs = _apply_dynamic_ranges(
            network, loaded.amax, source=str(loaded.path), strict=options.strict
        )
        messages.extend(range_msgs)

    log.info("building the %s engine (%s); this can take minutes...", options.precision, plan.mode)
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if core is not None:
            core.close()
    if core is not None:
        core.raise_if_failed()
    if serialized is None:
        raise QuantError(
            f"TensorRT could not build an engine from '{model_path}': "
            f"{logger.last_error() or 'see the TensorRT messages above (run with --verbose)'}"
        )
    engine_bytes = bytes(memoryview(serialized))
    atomic_write(output, engine_bytes)
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))

    reused = core is not None and core.cache_returned and core.batches_served == 0
    if reused:
        messages.append(f"TensorRT used the cache '{cache_path}' without recalibrating")
    used_cache = _cache_of_engine(plan, core, loaded)
    sidecar = EngineSidecar(
        trt_version=str(version),
        gpu=gpu,
        precision=options.precision,
        mode=plan.mode,
        model=str(model_path),
        model_sha256=sha256_file(model_path),
        cache=None if used_cache is None else str(used_cache),
        cache_sha256=None if used_cache is None else sha256_file(used_cache),
        engine_sha256=hashlib.sha256(engine_bytes).hexdigest(),
        build_options=options.to_dict(),
        messages=tuple(messages),
        quant_version=__version__,
    )
    side = write_engine_sidecar(output, sidecar)
    seconds = time.perf_counter() - start
    log.info("wrote engine '%s' (%.1f MB) in %.1f s", output, len(engine_bytes) / 1e6, seconds)
    return EngineBuildResult(
        engine=output,
        sidecar=side,
        trt_version=str(version),
        gpu=gpu,
        precision=options.precision,
        mode=plan.mode,
        calibrator=plan.calibrator,
        calibration_batches=0 if core is None else core.batches_served,
        calibration_samples=0 if core is None else core.samples_served,
        cache=used_cache,
        cache_written=None if core is None else core.written_path,
        cache_reused=reused,
        dynamic_ranges_set=ranges_set,
        ranges_missing=tuple(ranges_missing),
        timing_cache=timing_cache,
        messages=tuple(messages),
        seconds=seconds,
        plan=plan.to_dict(),
    )


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _read_cache_if_any(
    cache_path: Path | None, options: EngineBuildOptions, version: TrtVersion, qdq: bool, has_data: bool
) -> LoadedCache | None:
    """Read the cache when it exists. A missing cache is fine only where TensorRT's calibrator
    will create it; elsewhere it is an error."""
    if cache_path is None:
        return None
    if cache_path.exists():
        from quant.cache.io import read_cache

        return read_cache(cache_path)
    will_calibrate = (
        options.precision == "int8"
        and not options.dynamic_range
        and not qdq
        and version.has_implicit_int8
        and has_data
    )
    if will_calibrate:
        log.info("cache '%s' does not exist yet: TensorRT will calibrate and write it", cache_path)
        return None
    if options.precision != "int8" or qdq:
        return None
    raise CacheError(f"cache '{cache_path}': no such file; run 'quant calibrate' first or check the path")


def _check_cache_fingerprint(loaded: LoadedCache, model: onnx.ModelProto, *, strict: bool) -> list[str]:
    """Warn (or fail with ``strict``) when quant's sidecar says the cache was made for another model."""
    calibration = loaded.calibration
    if not calibration:
        return []
    from quant.fingerprint import compare_fingerprints, model_fingerprint

    diffs = compare_fingerprints(calibration, model=model_fingerprint(model), data=None)
    if not diffs:
        return []
    msg = f"cache '{loaded.path}' is stale: {'; '.join(diffs)}; recalibrate with 'quant calibrate --force'"
    if strict:
        raise CacheError(msg)
    log.warning("%s", msg)
    return [msg]


def _transformed_model(
    plan: BuildPlan,
    model: onnx.ModelProto,
    loaded: LoadedCache | None,
    options: EngineBuildOptions,
    messages: list[str],
) -> bytes | None:
    """The ONNX bytes TensorRT parses when the plan rewrites the model (None: parse the file)."""
    if plan.transform == "none":
        return None
    from quant.graph.cleanup import cleanup

    clean = cleanup(model)
    if plan.transform == "insert-qdq":
        from quant.graph.qdq import insert_qdq

        assert loaded is not None  # plan_build requires a cache for insert-qdq
        res = insert_qdq(clean, loaded.amax, target="tensorrt", exclude=tuple(options.exclude))
        quantized = tuple(res.quantized_tensors)
        if not quantized:
            raise CacheError(
                f"cache '{loaded.path}' gives no range for any tensor quant would quantize in this model; "
                f"was it made for another model?"
            )
        msg = f"inserted Q/DQ for {len(quantized)} activations from cache '{loaded.path}'"
        log.info("%s", msg)
        messages.append(msg)
        built = res.model
    else:
        from quant.graph.fp16 import to_fp16

        built = to_fp16(clean)
    try:
        return built.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GB
        raise ModelError(
            f"the rewritten model is too large to hand to TensorRT in memory ({exc}); "
            f"build the Q/DQ / FP16 ONNX with 'quant build' first and pass that file"
        ) from exc


_PLUGIN_LIBS: list[ctypes.CDLL] = []


def load_plugins(logger: LoggingBridge, plugins: Sequence[Path]) -> None:
    """Register TensorRT's own plugins, then load each plugin library (like trtexec's
    ``--staticPlugins``: the library registers its creators when it is loaded). Call before
    parsing a model or deserializing an engine that uses them."""
    import tensorrt as trt

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


def _network_flags(version: TrtVersion, strongly_typed: bool) -> int:
    import tensorrt as trt

    flags = 0
    if version.needs_explicit_batch_flag:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        # TensorRT 11 networks are always strongly typed; the flag may no longer exist there.
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is not None:
            flags |= 1 << int(flag)
    return flags


def _parser_message(parser: tensorrt.OnnxParser, model_path: Path, logger: LoggingBridge) -> str:
    errors: list[str] = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = str(err.desc())
        node = err.node()
        name_fn = getattr(err, "node_name", None)
        name = name_fn() if callable(name_fn) else ""
        where = f"node {node}" + (f" ({name})" if name else "") if isinstance(node, int) and node >= 0 else ""
        errors.append(f"{where}: {desc}" if where else desc)
    if not errors:
        errors.append(logger.last_error() or "no details from the parser")
    text = errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
    hint = ""
    if any("plugin" in e.lower() or "no importer" in e.lower() for e in errors):
        hint = "; a custom layer? load its plugin library with --plugins lib.so"
    return f"TensorRT cannot parse '{model_path}': {text}{hint}"


def _network_inputs(network: tensorrt.INetworkDefinition) -> list[TensorSpec]:
    import tensorrt as trt

    from quant.backends.tensorrt.runner import dims

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


def _configure(config: tensorrt.IBuilderConfig, options: EngineBuildOptions, plan: BuildPlan) -> None:
    import tensorrt as trt

    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is not None:
            config.clear_flag(flag)
    if options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    if options.optimization_level is not None:
        config.builder_optimization_level = int(options.optimization_level)
    # Layer names, types, precisions and tactics in the engine, for `quant inspect`.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED


def _attach_timing_cache(config: tensorrt.IBuilderConfig, path: Path | None) -> Path | None:
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
        log.warning(
            "timing cache '%s' was made by another TensorRT version or GPU; starting a new one", path
        )
        config.set_timing_cache(config.create_timing_cache(b""), False)
    elif data:
        log.info("using timing cache '%s'", path)
    return path


def _profile(builder: tensorrt.Builder, profiles: Sequence[ShapeProfile]) -> tensorrt.IOptimizationProfile:
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    return profile


def _calibrator_core(
    kind: CalibratorKind,
    *,
    loaded: LoadedCache | None,
    cache_path: Path | None,
    cache_out: Path | None,
    output: Path,
    dataset: Dataset | None,
    inputs: Sequence[TensorSpec],
    profiles: Sequence[ShapeProfile],
    options: EngineBuildOptions,
    version: TrtVersion,
    model: onnx.ModelProto,
) -> tuple[CalibratorCore, list[str]]:
    from quant.backends.tensorrt.calibrator import (
        CalibratorCore,
        algorithm_of,
        cache_for_calibrator,
        save_trt_calibration,
    )

    messages: list[str] = []
    data: bytes | None = None
    if loaded is not None:
        decision = cache_for_calibrator(
            loaded.path.read_bytes(),
            loaded.parsed,
            amax=loaded.amax,
            header_version=version.cache_header_number,
            algorithm=algorithm_of(kind),
            force=options.force_cache,
            source=str(loaded.path),
        )
        messages.append(decision.message)
        if decision.data is None:
            log.warning("%s", decision.message)
            if dataset is None:
                raise UsageError(
                    f"{decision.message}; or give calibration data (--data) so that TensorRT recalibrates"
                )
        else:
            log.info("%s", decision.message)
        data = decision.data
    if cache_out is not None:
        write_to: Path | None = cache_out
    elif cache_path is not None and loaded is None:
        write_to = cache_path
    else:
        write_to = Path(str(output) + ".cache")
    if data is None and dataset is not None and write_to is not None and loaded is not None:
        messages.append(f"TensorRT recalibrates; its cache goes to '{write_to}' ('{loaded.path}' is left as it is)")

    from quant.fingerprint import model_fingerprint

    fingerprint = model_fingerprint(model).to_dict()
    data_fp = dataset.fingerprint() if dataset is not None else None

    def writer(path: Path, produced: bytes) -> None:
        save_trt_calibration(
            path,
            produced,
            kind=kind,
            num_samples=core.samples_served,
            model_fingerprint=fingerprint,
            data_fingerprint=data_fp,
        )

    core = CalibratorCore(
        kind=kind,
        dataset=dataset,
        input_shapes=calibration_shapes(inputs, profiles),
        input_dtypes={s.name: s.dtype for s in inputs},
        cache_data=data,
        write_to=write_to,
        writer=writer,
    )
    return core, messages


def _apply_dynamic_ranges(
    network: tensorrt.INetworkDefinition,
    amax: Mapping[str, float],
    *,
    source: str,
    strict: bool,
) -> tuple[int, list[str], list[str]]:
    """``set_dynamic_range(-amax, amax)`` on every network tensor the cache has a range for.

    Returns (number set, float activations without a range, messages). Missing ranges make
    TensorRT run those layers in FP16/FP32; cache entries that are not network tensors are
    ignored. Both fail with ``strict``.
    """
    import tensorrt as trt

    tensors: dict[str, tensorrt.ITensor] = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        tensors[t.name] = t
    for li in range(network.num_layers):
        layer = network.get_layer(li)
        if layer.type == trt.LayerType.CONSTANT:
            continue  # weights: TensorRT derives their scales from the values
        for oi in range(layer.num_outputs):
            t = layer.get_output(oi)
            tensors[t.name] = t
    float_types = {trt.DataType.FLOAT, trt.DataType.HALF}
    count = 0
    missing: list[str] = []
    for name, tensor in tensors.items():
        a = amax.get(name)
        if a is None:
            if tensor.dtype in float_types:
                missing.append(name)
            continue
        if not tensor.set_dynamic_range(-float(a), float(a)):
            log.warning("TensorRT refused the dynamic range of tensor '%s'", name)
            continue
        count += 1
    unknown = [n for n in amax if n not in tensors]
    messages = [f"set dynamic ranges of {count} tensors from cache '{source}'"]
    if missing:
        msg = (
            f"cache '{source}' has no range for {len(missing)} network tensors (first: '{missing[0]}'); "
            f"TensorRT runs the layers that need them in higher precision"
        )
        if strict:
            raise CacheError(msg + "; recalibrate or drop --strict")
        log.warning("%s", msg)
        messages.append(msg)
    if unknown:
        msg = (
            f"{len(unknown)} cache entries are not tensors of TensorRT's network (first: '{unknown[0]}'); "
            f"ignored"
        )
        if strict:
            raise CacheError(f"cache '{source}': {msg}; was it made for another model?")
        log.warning("%s", msg)
        messages.append(msg)
    log.info("%s", messages[0])
    return count, missing, messages


def _cache_of_engine(plan: BuildPlan, core: CalibratorCore | None, loaded: LoadedCache | None) -> Path | None:
    """The cache whose scales the engine holds: the one TensorRT wrote, else the one it used."""
    if core is not None and core.written_path is not None:
        return Path(core.written_path)
    if core is not None and not core.cache_returned:
        return None
    if plan.uses_cache and loaded is not None:
        return loaded.path
    return None


__all__ = ["BuildPlan", "EngineBuildResult", "build_engine", "has_qdq", "load_plugins", "plan_build"]
