"""Build TensorRT engines from ONNX models: INT8 (calibrator, dynamic ranges or Q/DQ), FP16, FP32.

What happens depends on the installed TensorRT (see :func:`plan_build`, pure and unit-tested):

============================  =================================================================
TensorRT 8.6-10.x, int8       plain model: INT8 (+FP16 with ``allow_fp16``) builder flags and an
                              IInt8 calibrator fed by the data; an existing cache is handed to it
                              and TensorRT does not recalibrate. ``dynamic_range``: ranges from
                              the cache with ``ITensor.set_dynamic_range``, no calibrator.
                              Q/DQ model: explicit quantization (INT8 flag, weakly typed).
TensorRT 11.x and TensorRT-RTX, Q/DQ model: strongly typed explicit quantization. Plain model +
int8                          cache: quant inserts Q/DQ nodes from the cache first.
fp16                          FP16 flag (< 11); on 11 and TensorRT-RTX, the model's float types
                              are converted to FP16 first (no FP16 flag there).
fp32                          no precision flags, TF32 off (results comparable with ONNX Runtime).
============================  =================================================================

The flavour (``tensorrt`` or ``tensorrt-rtx``, :mod:`quant.backends.tensorrt.flavors`) is a
parameter of the one build function: the strongly typed Q/DQ path, parsing, configuration,
profiles and the sidecar are shared; the implicit-INT8 calibrator and dynamic-range steps run only
where the flavour has them (TensorRT 8.6-10.x); TensorRT-RTX adds target compute capabilities
and needs no GPU. Every engine gets a sidecar ``<engine>.json`` (flavour and version, GPU or
targets, precision, options, hashes) that :class:`~quant.backends.tensorrt.runner.TrtRunner`
checks before loading.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from quant.backends.base import TensorSpec
from quant.backends.tensorrt.flavors import Capabilities, capabilities
from quant.backends.tensorrt.options import (
    CalibratorKind,
    EngineBuildOptions,
    ShapeProfile,
    calibration_shapes,
    default_batch_profiles,
    resolve_profiles,
)
from quant.backends.tensorrt.sidecar import GpuInfo
from quant.backends.tensorrt.versions import TrtVersion
from quant.errors import CacheError, ModelError, OutputError, QuantError, UsageError

if TYPE_CHECKING:
    import onnx
    import tensorrt

    from quant.backends.tensorrt.calibrator import CalibratorCore
    from quant.backends.tensorrt.network import LoggingBridge
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
    version: TrtVersion | Capabilities,
    model_has_qdq: bool,
    has_cache: bool,
    has_data: bool,
    cache_algorithm: str | None = None,
) -> BuildPlan:
    """Choose the build mode for ``options`` on TensorRT ``version`` (pure).

    ``version`` is a TensorRT version or the :class:`Capabilities` of a flavour and version
    (TensorRT-RTX plans like TensorRT 11: strongly typed, INT8 only from Q/DQ). Raises UsageError
    for what cannot be built: INT8 without a cache, data or Q/DQ nodes; TensorRT 11 / TensorRT-RTX
    asked for a calibrator or dynamic ranges; FP16/FP32 asked of a Q/DQ (INT8) model.
    """
    from quant.backends.tensorrt.calibrator import kind_of_algorithm

    caps = version if isinstance(version, Capabilities) else capabilities("tensorrt", version)
    trt_name = caps.describe
    msgs: list[str] = []
    weak_precision = ("FP16",) if options.allow_fp16 else ()
    strongly = caps.always_strongly_typed

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
        if caps.has_precision_flags:
            return BuildPlan("fp16", flags=("FP16",), messages=tuple(msgs))
        msgs.append(
            f"{trt_name} has no FP16 builder flag (networks are strongly typed): "
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

    if not caps.has_implicit_int8:
        if options.dynamic_range:
            raise UsageError(
                f"{trt_name} removed ITensor.set_dynamic_range; drop --dynamic-range "
                f"(quant inserts Q/DQ nodes from the cache instead)"
            )
        if options.calibrator is not None:
            raise UsageError(
                f"{trt_name} has no INT8 calibrators; drop --calibrator, run 'quant calibrate' "
                f"and build from its --cache"
            )
        if not has_cache:
            raise UsageError(
                f"{trt_name} has no INT8 calibrators: run 'quant calibrate MODEL --data DIR "
                f"--cache model.cache' first and pass --cache model.cache (quant then inserts Q/DQ nodes "
                f"from it)"
            )
        msgs.append(
            f"{trt_name} has no implicit INT8: building quant's Q/DQ model from the cache "
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
    trt_flavor: str = "tensorrt"
    compute_capabilities: tuple[str, ...] = ()
    engine_bytes: int = 0
    build_seconds: float = 0.0
    num_layers: int = 0

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
            "trt_flavor": self.trt_flavor,
            "compute_capabilities": list(self.compute_capabilities),
            "engine_bytes": self.engine_bytes,
            "build_seconds": self.build_seconds,
            "num_layers": self.num_layers,
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
    flavor: str = "tensorrt",
) -> EngineBuildResult:
    """Build ``output`` (a TensorRT engine) and ``output.json`` from the ONNX model at ``model_path``.

    ``flavor``: ``tensorrt`` (TensorRT 8.6-11.x, on the GPU the engine is for) or ``tensorrt-rtx``
    (TensorRT for RTX: built ahead of time, no GPU needed, for ``options.compute_capabilities``).
    Both go through this one function; what differs is asked of the flavour's
    :class:`~quant.backends.tensorrt.flavors.Capabilities`.

    ``cache``: a calibration cache (quant's, TensorRT's or ONNX Runtime's) for INT8. With a
    calibrator (TensorRT 8.6-10.x), a cache path that does not exist yet is where TensorRT's
    calibration is saved (with quant's sidecar); ``cache_out`` overrides where a new calibration
    is saved (default: ``cache`` when it did not exist, else ``<output>.cache``).
    ``calib_dataset`` feeds TensorRT's calibrator. Raises BackendUnavailableError without the
    flavour's module (or, for ``tensorrt``, without a GPU).
    """
    from quant.backends.tensorrt import network as nw
    from quant.backends.tensorrt.flavors import import_flavor

    trt, caps = import_flavor(flavor)

    from quant import __version__
    from quant._io import atomic_write, check_output_not_input
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
    version = caps.version
    if options.timing_cache is not None and not caps.has_timing_cache:
        raise UsageError(
            f"--timing-cache: {caps.flavor.label} has no timing cache (a no-op since TensorRT-RTX 1.2: it "
            f"compiles kernels just in time on the GPU); drop --timing-cache"
        )
    gpu = _target_gpu(caps, options)
    if caps.builds_without_gpu:
        log.info("%s: ahead-of-time build for compute capabilities %s", caps.describe, gpu.compute_capability)
    else:
        log.info("%s on %s", caps.describe, gpu.describe())

    model = load_model(model_path)
    qdq = has_qdq(model)
    if qdq:
        from quant.backends.tensorrt.qdq_rules import check_qdq_rules

        check_qdq_rules(model, source=str(model_path), trt=caps.flavor.label)
    loaded = _read_cache_if_any(cache_path, options, caps, qdq, calib_dataset is not None)
    plan = plan_build(
        options,
        version=caps,
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

    logger = nw.make_logger(trt)
    builder = trt.Builder(logger)
    nw.load_plugins(trt, logger, options.plugins)
    network, _parser = nw.parse_onnx(
        trt, caps, builder, logger, model_path=model_path, onnx_bytes=onnx_bytes, strongly_typed=plan.strongly_typed
    )
    inputs = nw.network_inputs(trt, network)
    shapes, auto = default_batch_profiles(inputs, options.shapes)
    for p in auto:
        msg = f"input '{p.name}': only the batch is dynamic, profile {p.text} (give --shapes to choose)"
        log.info("%s", msg)
        messages.append(msg)
    profiles = resolve_profiles(inputs, shapes)

    config = builder.create_builder_config()
    nw.configure(
        trt, config, flags=plan.flags, clear_flags=plan.clear_flags,
        workspace_mb=options.workspace_mb, optimization_level=options.optimization_level,
    )
    if caps.has_compute_capabilities:
        nw.set_compute_capabilities(trt, config, options.compute_capabilities)
    timing_cache = nw.attach_timing_cache(config, options.timing_cache)
    if profiles:
        config.add_optimization_profile(nw.make_profile(trt, builder, profiles))

    core: CalibratorCore | None = None
    ranges_set = 0
    ranges_missing: list[str] = []
    if plan.mode == "int8-calibrator":  # TensorRT 8.6-10.x only: plan_build never picks it otherwise
        assert plan.calibrator is not None  # plan_build sets it in this mode
        core, calib_msgs = _attach_calibrator(
            trt, builder, config, logger,
            kind=plan.calibrator, loaded=loaded, cache_path=cache_path,
            cache_out=None if cache_out is None else Path(cache_out), output=output,
            dataset=calib_dataset, inputs=inputs, profiles=profiles, options=options,
            version=version, model=model,
        )
        messages.extend(calib_msgs)
    elif plan.mode == "int8-dynamic-range":
        assert loaded is not None  # plan_build requires a cache in this mode
        ranges_set, ranges_missing, range_msgs = _apply_dynamic_ranges(
            trt, network, loaded.amax, source=str(loaded.path), strict=options.strict
        )
        messages.extend(range_msgs)

    log.info("building the %s engine (%s) with %s; this can take minutes...", options.precision, plan.mode, caps.describe)
    build_start = time.perf_counter()
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if core is not None:
            core.close()
    build_seconds = time.perf_counter() - build_start
    if core is not None:
        core.raise_if_failed()
    if serialized is None:
        raise QuantError(
            f"{caps.flavor.label} could not build an engine from '{model_path}': "
            f"{_one_line(logger.last_error()) or 'see the TensorRT messages above (run with --verbose)'}"
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
        trt_flavor=caps.flavor.name,
        compute_capabilities=tuple(options.compute_capabilities),
        engine_bytes=len(engine_bytes),
        build_seconds=round(build_seconds, 3),
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
        trt_flavor=caps.flavor.name,
        compute_capabilities=tuple(options.compute_capabilities),
        engine_bytes=len(engine_bytes),
        build_seconds=build_seconds,
        num_layers=int(network.num_layers),
    )


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------


def _one_line(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def _target_gpu(caps: Capabilities, options: EngineBuildOptions) -> GpuInfo:
    """The GPU the engine is for: this machine's (TensorRT), or TensorRT-RTX's targets (no GPU
    needed; ``current`` needs one)."""
    if not caps.has_compute_capabilities:
        if options.compute_capabilities:
            raise UsageError(
                "--compute-capability applies to --backend tensorrt-rtx; TensorRT builds for the GPU of "
                "this machine (--device)"
            )
        from quant.backends.tensorrt import cuda as cu

        cu.set_device(options.device)
        return cu.device_info(options.device)
    if options.compute_capabilities == ("current",):
        problem = local_gpu_problem()
        if problem is not None:
            raise UsageError(
                f"--compute-capability current builds for this machine's GPU, and {problem}; name the "
                f"target GPUs instead (e.g. --compute-capability 8.9,12.0) or leave it out for "
                f"TensorRT-RTX's default set"
            )
        return GpuInfo(name="this machine's GPU (current)", compute_capability="current")
    targets = ",".join(options.compute_capabilities) or "default"
    return GpuInfo(name=f"{caps.flavor.label} targets", compute_capability=targets)


def local_gpu_problem() -> str | None:
    """None when the CUDA driver sees at least one GPU here; else why not (one phrase)."""
    import ctypes.util

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "this machine has no NVIDIA driver (libcuda.so.1 not found)"
    status = lib.cuInit(0)
    if status != 0:
        return f"the NVIDIA driver found no usable GPU (cuInit returned {status})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the NVIDIA driver found no GPU"
    return None


def _read_cache_if_any(
    cache_path: Path | None, options: EngineBuildOptions, caps: Capabilities, qdq: bool, has_data: bool
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
        and caps.has_implicit_int8
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


def _attach_calibrator(
    trt: ModuleType,
    builder: tensorrt.Builder,
    config: tensorrt.IBuilderConfig,
    logger: LoggingBridge,
    *,
    kind: CalibratorKind,
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
    """TensorRT 8.6-10.x implicit INT8: the calibrator (fed by ``dataset`` or answering from the
    cache) on ``config``, and the calibration profile at the opt shapes."""
    from quant.backends.tensorrt import network as nw
    from quant.backends.tensorrt.calibrator import create_calibrator

    core, messages = _calibrator_core(
        kind, loaded=loaded, cache_path=cache_path, cache_out=cache_out, output=output, dataset=dataset,
        inputs=inputs, profiles=profiles, options=options, version=version, model=model,
    )
    config.int8_calibrator = create_calibrator(core)
    if profiles:
        # TensorRT calibrates at the calibration profile's opt shapes (min/max are set to opt).
        fixed = [ShapeProfile(p.name, p.opt, p.opt, p.opt) for p in profiles]
        if not config.set_calibration_profile(nw.make_profile(trt, builder, fixed)):
            core.close()
            raise QuantError(
                f"TensorRT rejected the calibration profile {[p.text for p in fixed]}: "
                f"{logger.last_error() or 'see the TensorRT messages above'}"
            )
    return core, messages


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
    trt: ModuleType,
    network: tensorrt.INetworkDefinition,
    amax: Mapping[str, float],
    *,
    source: str,
    strict: bool,
) -> tuple[int, list[str], list[str]]:
    """``set_dynamic_range(-amax, amax)`` on every network tensor the cache has a range for.

    Returns (number set, float activations without a range, messages). Missing ranges make
    TensorRT run those layers in FP16/FP32; cache entries that are not network tensors are
    ignored. Both fail with ``strict``. TensorRT 8.6-10.x only.
    """
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


__all__ = ["BuildPlan", "EngineBuildResult", "build_engine", "has_qdq", "local_gpu_problem", "plan_build"]
