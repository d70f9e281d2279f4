"""The public Python API: every CLI command is one function here.

    from quant import api
    from quant.config import DataOptions, CalibrationOptions

    outcome = api.calibrate("model.onnx", DataOptions("calib_images/"), cache="model.cache")
    api.build("model.onnx", cache="model.cache", output="model.int8.onnx")
    report = api.evaluate("model.onnx", DataOptions("val_images/", batch_size=32), cache="model.cache")

The functions orchestrate the pure core (graph rewrites, statistics maths) and the I/O layer;
they never print. Progress bars go to stderr when ``progress=True``; messages for the user are
logged through ``logging`` and returned in the outcome objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import BuildOptions, CalibrationOptions, DataOptions, EvalOptions
from quant.errors import CacheError, DataError, UsageError

if TYPE_CHECKING:
    import onnx

    from quant.backends.base import TensorSpec
    from quant.cache.io import LoadedCache
    from quant.calibrators.result import CalibrationResult
    from quant.datasets.base import Dataset
    from quant.fingerprint import ModelFingerprint
    from quant.report.schema import Report

log = logging.getLogger(__name__)

DEMO = "demo"


# --------------------------------------------------------------------------------------------
# Models and data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedModel:
    """A user's model loaded once: the original, its cleaned form and its fingerprint."""

    path: Path
    original: onnx.ModelProto
    clean: onnx.ModelProto
    fingerprint: ModelFingerprint
    inputs: tuple[TensorSpec, ...]

    @property
    def name(self) -> str:
        return self.path.name


def resolve_model_path(model: str | Path | None) -> Path:
    """``None`` or ``"demo"`` is the embedded demo model."""
    if model is None or str(model) == DEMO:
        from quant.demo import demo_model_path

        return demo_model_path()
    return Path(model)


def prepare_model(model: str | Path | None) -> PreparedModel:
    """Load, fingerprint and clean a model (Identity removal, constant and BatchNorm folding)."""
    from quant.fingerprint import model_fingerprint
    from quant.graph.cleanup import cleanup
    from quant.graph.load import input_specs, load_model

    path = resolve_model_path(model)
    original = load_model(path)
    clean = cleanup(original)
    return PreparedModel(
        path=path,
        original=original,
        clean=clean,
        fingerprint=model_fingerprint(original),
        inputs=tuple(input_specs(clean)),
    )


def effective_batch_size(inputs: Sequence[TensorSpec], requested: int) -> int:
    """A model whose inputs have a fixed batch dimension can only take that batch size."""
    fixed = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if not fixed:
        return requested
    if len(fixed) > 1:
        raise DataError(f"model inputs have different fixed batch sizes {sorted(fixed)}; cannot batch them")
    (size,) = fixed
    if size != requested:
        log.info("model input has a fixed batch size of %d; using it instead of --batch-size %d", size, requested)
    return int(size)


def open_data(prepared: PreparedModel, data: DataOptions) -> Dataset:
    """Open a dataset for the model's inputs (image folder, npy/npz, demo split)."""
    from quant.datasets.loader import open_dataset
    from quant.datasets.preprocess import parse_preprocess

    preprocess = None
    if data.preprocess:
        preprocess = parse_preprocess(data.preprocess)
    return open_dataset(
        data.path,
        inputs=list(prepared.inputs),
        preprocess=preprocess,
        max_samples=data.max_samples,
        seed=data.seed,
        on_bad_image=data.on_bad_image,
        workers=data.workers,
    )


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrateOutcome:
    """What `calibrate` did: the result, where it is, and whether an existing cache was reused."""

    result: CalibrationResult
    cache_path: Path
    sidecar_path: Path
    reused: bool
    message: str
    seconds: float
    data_summary: dict[str, Any] = field(default_factory=dict)
    stats_path: Path | None = None


def _stale_reasons(loaded: LoadedCache, prepared: PreparedModel, data_fingerprint: str | None) -> list[str]:
    from quant.fingerprint import compare_fingerprints

    calib = (loaded.sidecar or {}).get("calibration") or {}
    return compare_fingerprints(calib, model=prepared.fingerprint, data=data_fingerprint)


def calibrate(
    model: str | Path | None,
    data: DataOptions,
    *,
    cache: str | Path,
    options: CalibrationOptions | None = None,
    force: bool = False,
    progress: bool = False,
    prepared: PreparedModel | None = None,
) -> CalibrateOutcome:
    """Calibrate ``model`` on ``data`` and write ``cache`` (TensorRT text) + ``cache.json``.

    An existing cache is reused when its sidecar records the same model (graph and weights),
    the same data (files, preprocessing, sample count, seed) and the same method and
    parameters; otherwise (or with ``force``) the model is run again and the files replaced.
    """
    from quant._io import check_output_not_input
    from quant.cache.io import write_cache
    from quant.cache.trt import DEFAULT_TRT_VERSION, encode_trt_version
    from quant.calibrators.calibrate import calibrate as run_calibration
    from quant.calibrators.methods import CalibConfig
    from quant.calibrators.stats_io import save_stats, stats_path
    from quant.graph.qdq import calibration_tensors

    options = options or CalibrationOptions()
    start = time.perf_counter()
    prepared = prepared or prepare_model(model)
    cache_path = Path(cache)
    check_output_not_input(cache_path, prepared.path)
    trt_version = encode_trt_version(options.trt_version) if options.trt_version else DEFAULT_TRT_VERSION
    dataset = open_data(prepared, data)
    data_fp = dataset.fingerprint()
    config = CalibConfig(method=options.method, percentile=options.percentile, num_bins=options.num_bins)

    if cache_path.exists() and not force:
        reuse, why = _can_reuse(cache_path, prepared, data_fp, config, options)
        if reuse is not None:
            return CalibrateOutcome(
                result=reuse,
                cache_path=cache_path,
                sidecar_path=Path(str(cache_path) + ".json"),
                reused=True,
                message=why,
                seconds=time.perf_counter() - start,
                data_summary=dataset.summary().to_dict(),
            )
        log.info("%s", why)

    tensors = calibration_tensors(prepared.clean, scope=options.scope)
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    result, collector = run_calibration(
        prepared.clean,
        dataset,
        tensors,
        config,
        batch_size=batch_size,
        progress=progress,
        model_fingerprint=prepared.fingerprint.to_dict(),
        data_fingerprint=data_fp,
        scope=options.scope,
    )
    cache_file, sidecar_file = write_cache(cache_path, result, trt_version=trt_version)
    stats_file = save_stats(
        stats_path(cache_path),
        collector.stats(),
        {
            "num_samples": result.num_samples,
            "model_fingerprint": prepared.fingerprint.to_dict(),
            "data_fingerprint": data_fp,
            "scope": options.scope,
            "quant_version": result.quant_version,
        },
    )
    seconds = time.perf_counter() - start
    summary = dataset.summary().to_dict()
    msg = f"calibrated {len(result.amax)} tensors on {result.num_samples} samples with {options.method}"
    if summary.get("num_skipped"):
        msg += f" ({summary['num_skipped']} bad images skipped)"
    return CalibrateOutcome(
        result=result,
        cache_path=cache_file,
        sidecar_path=sidecar_file,
        reused=False,
        message=msg,
        seconds=seconds,
        data_summary=summary,
        stats_path=stats_file,
    )


def _can_reuse(
    cache_path: Path,
    prepared: PreparedModel,
    data_fp: str,
    config: Any,
    options: CalibrationOptions,
) -> tuple[CalibrationResult | None, str]:
    """Return (result, message) when the cache can be reused, else (None, why not)."""
    from quant.cache.io import read_cache
    from quant.calibrators.result import CalibrationResult

    try:
        loaded = read_cache(cache_path)
    except CacheError as exc:
        return None, f"existing cache '{cache_path}' is unusable ({exc}); recalibrating"
    if loaded.sidecar is None:
        return None, f"existing cache '{cache_path}' has no sidecar; recalibrating"
    reasons = _stale_reasons(loaded, prepared, data_fp)
    calib = loaded.sidecar.get("calibration") or {}
    if calib.get("method") != config.method:
        reasons.append(f"method changed ({calib.get('method')} -> {config.method})")
    elif (calib.get("params") or {}) != config.params():
        reasons.append("method parameters changed")
    if calib.get("tensors_scope", "all") != options.scope:
        reasons.append(f"scope changed ({calib.get('tensors_scope')} -> {options.scope})")
    if reasons:
        return None, f"existing cache '{cache_path}' is stale: {'; '.join(reasons)}; recalibrating"
    result = CalibrationResult.from_dict(calib)
    return result, f"cache '{cache_path}' is up to date (same model, data and method); reusing it"


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildOutcome:
    """A built model and what went into it."""

    output: Path
    precision: str
    target: str
    quantized_tensors: tuple[str, ...] = ()
    quantized_weights: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    cache_missing: tuple[str, ...] = ()
    cache_unknown: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "precision": self.precision,
            "target": self.target,
            "quantized_tensors": len(self.quantized_tensors),
            "quantized_weights": len(self.quantized_weights),
            "skipped": dict(self.skipped),
            "cache_missing": list(self.cache_missing),
            "cache_unknown": list(self.cache_unknown),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _Int8Build:
    model: onnx.ModelProto
    outcome_fields: dict[str, Any]


def load_cache_for_model(
    cache: str | Path, prepared: PreparedModel, *, strict: bool = False
) -> tuple[LoadedCache, list[str]]:
    """Read a cache (quant's, TensorRT's or ONNX Runtime's), check it fits the model.

    Returns the cache and warnings. A cache for another model fails; a stale quant cache warns,
    or fails with ``strict``.
    """
    from quant.cache.io import check_cache_against_model, read_cache
    from quant.graph.qdq import calibration_tensors

    loaded = read_cache(cache)
    warnings: list[str] = []
    match = check_cache_against_model(loaded, calibration_tensors(prepared.clean, scope="all"))
    match.raise_if_foreign(model_name=prepared.name)
    if loaded.sidecar is not None:
        reasons = _stale_reasons(loaded, prepared, None)
        if reasons:
            msg = f"cache '{cache}' is stale: {'; '.join(reasons)}; recalibrate with 'quant calibrate --force'"
            if strict:
                raise CacheError(msg)
            warnings.append(msg)
    if match.unknown:
        warnings.append(
            f"{len(match.unknown)} cache entries are not tensors of the model (first: {match.unknown[0]!r}); ignored"
        )
    return loaded, warnings


def build_int8_model(
    prepared: PreparedModel,
    loaded: LoadedCache,
    *,
    target: str = "tensorrt",
    exclude: Sequence[str] = (),
    strict: bool = False,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Insert Q/DQ from the cache's ranges into the cleaned model (in memory)."""
    from quant.graph.qdq import insert_qdq, quantizable_inputs

    res = insert_qdq(prepared.clean, loaded.amax, target=target, exclude=tuple(exclude))
    wanted = set(quantizable_inputs(prepared.clean, exclude=tuple(exclude)))
    missing = tuple(sorted(t for t in wanted if t not in loaded.amax))
    if missing and strict:
        raise CacheError(
            f"cache '{loaded.path}' has no range for {len(missing)} tensors that INT8 needs "
            f"(first: {missing[0]!r}); recalibrate or drop --strict"
        )
    return res.model, {
        "quantized_tensors": tuple(res.quantized_tensors),
        "quantized_weights": tuple(res.quantized_weights),
        "skipped": dict(res.skipped),
        "cache_missing": missing,
    }


def build(
    model: str | Path | None,
    *,
    output: str | Path,
    cache: str | Path | None = None,
    options: BuildOptions | None = None,
    prepared: PreparedModel | None = None,
) -> BuildOutcome:
    """Build an INT8 Q/DQ model (from a cache), an FP16 model or the cleaned FP32 model."""
    from quant._io import check_output_not_input
    from quant.graph.load import save_model

    options = options or BuildOptions()
    prepared = prepared or prepare_model(model)
    out = Path(output)
    check_output_not_input(out, prepared.path, cache)
    warnings: list[str] = []
    fields: dict[str, Any] = {}
    if options.precision == "int8":
        if cache is None:
            raise UsageError("--precision int8 needs --cache (run 'quant calibrate' first)")
        loaded, warnings = load_cache_for_model(cache, prepared, strict=options.strict)
        built, fields = build_int8_model(
            prepared, loaded, target=options.target, exclude=options.exclude, strict=options.strict
        )
    elif options.precision == "fp16":
        from quant.graph.fp16 import to_fp16

        built = to_fp16(prepared.clean)
    else:
        built = prepared.clean
    save_model(built, out)
    return BuildOutcome(
        output=out,
        precision=options.precision,
        target=options.target,
        warnings=tuple(warnings),
        **fields,
    )


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def precision_models(
    prepared: PreparedModel,
    precisions: Sequence[str],
    *,
    cache: str | Path | None = None,
    int8_model: str | Path | None = None,
    exclude: Sequence[str] = (),
    strict: bool = False,
) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    """The ModelProto to evaluate for each precision, plus build info for the report."""
    from quant.graph.load import load_model

    models: dict[str, onnx.ModelProto] = {}
    build_info: dict[str, Any] = {}
    loaded = None
    for p in precisions:
        if p == "fp32":
            models[p] = prepared.clean
        elif p == "fp16":
            from quant.graph.fp16 import to_fp16

            models[p] = to_fp16(prepared.clean)
        elif p in ("int8", "int8-ort"):
            target = "tensorrt" if p == "int8" else "onnxruntime"
            if p == "int8" and int8_model is not None:
                models[p] = load_model(int8_model)
                build_info[p] = {"source": str(int8_model)}
                continue
            if cache is None:
                raise UsageError(f"precision {p} needs --cache (or --int8-model for int8)")
            if loaded is None:
                loaded, warnings = load_cache_for_model(cache, prepared, strict=strict)
                for w in warnings:
                    log.warning("%s", w)
            models[p], fields = build_int8_model(prepared, loaded, target=target, exclude=exclude, strict=strict)
            build_info[p] = {
                "target": target,
                "quantized_tensors": len(fields["quantized_tensors"]),
                "quantized_weights": len(fields["quantized_weights"]),
                "skipped": fields["skipped"],
                "cache_missing": list(fields["cache_missing"]),
                "excluded": list(exclude),
            }
    if "fp32" not in models:
        # Agreement and fidelity are measured against FP32: always run it as the reference.
        models = {"fp32": prepared.clean, **models}
    return models, build_info


def evaluate(
    model: str | Path | None,
    data: DataOptions,
    *,
    cache: str | Path | None = None,
    int8_model: str | Path | None = None,
    options: EvalOptions | None = None,
    exclude: Sequence[str] = (),
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
    prepared: PreparedModel | None = None,
    calibration: CalibrateOutcome | None = None,
    prebuilt: tuple[dict[str, onnx.ModelProto], dict[str, Any]] | None = None,
) -> Report:
    """Run the same samples through FP32 / FP16 / INT8 and return (and optionally save) a report."""
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    options = options or EvalOptions()
    prepared = prepared or prepare_model(model)
    dataset = open_data(prepared, data)
    if prebuilt is not None:
        models, build_info = prebuilt
    else:
        models, build_info = precision_models(
            prepared, options.precisions, cache=cache, int8_model=int8_model, exclude=exclude
        )
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    runner_factory = None
    if options.threads is not None:
        from quant.backends.onnxruntime import OrtRunner

        threads = options.threads

        def runner_factory(m: Any) -> Any:
            return OrtRunner(m, threads=threads)

    result = run_eval(
        models,
        dataset,
        batch_size=batch_size,
        warmup=options.warmup,
        progress=progress,
        classifier_output=options.classifier_output,
        runner_factory=runner_factory,
    )
    rep = make_report(
        prepared,
        dataset,
        result,
        cache=cache,
        build_info=build_info,
        command=command,
        calibration=calibration,
    )
    if report is not None:
        save_report(rep, report)
    return rep


def make_report(
    prepared: PreparedModel,
    dataset: Dataset,
    result: Any,
    *,
    cache: str | Path | None,
    build_info: dict[str, Any],
    command: Sequence[str] | None,
    calibration: CalibrateOutcome | None = None,
) -> Report:
    """Assemble a Report from result objects (the report never runs models)."""
    from quant import __version__
    from quant.graph.load import output_specs
    from quant.report.schema import SCHEMA_VERSION, Report, amax_summary, environment_info

    calib_section: dict[str, Any] | None = None
    if cache is not None:
        from quant.cache.io import read_cache
        loaded = read_cache(cache)
        side = (loaded.sidecar or {}).get("calibration") or {}
        parsed = loaded.parsed
        calib_section = {
            "cache": str(cache),
            "format": loaded.format,
            "trt_header": {
                "version": parsed.trt_version,
                "version_text": _version_text(parsed.trt_version),
                "algorithm": parsed.algorithm,
            },
            "method": side.get("method"),
            "params": side.get("params"),
            "num_samples": side.get("num_samples"),
            "tensors_scope": side.get("tensors_scope"),
            "amax": amax_summary(loaded.amax, tuple(side.get("no_range") or ())),
        }
        if calibration is not None:
            calib_section["seconds"] = round(calibration.seconds, 3)
            calib_section["reused"] = calibration.reused
            calib_section["data"] = calibration.data_summary
    summary = dataset.summary().to_dict()
    summary["fingerprint"] = dataset.fingerprint()
    return Report(
        schema="quant.report",
        schema_version=SCHEMA_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        quant_version=__version__,
        command=list(command) if command is not None else None,
        model={
            "path": str(prepared.path),
            "fingerprint": prepared.fingerprint.to_dict(),
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in prepared.inputs],
            "outputs": [
                {"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in output_specs(prepared.clean)
            ],
        },
        data=summary,
        calibration=calib_section,
        build=build_info or None,
        evaluation=result.to_dict(),
        environment=environment_info(),
        extra={},
    )


def _version_text(number: int | None) -> str | None:
    from quant.cache.trt import decode_trt_version

    if not number:
        return None
    try:
        return decode_trt_version(number)
    except UsageError:
        return f"unknown ({number})"


# --------------------------------------------------------------------------------------------
# run: everything
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    out_dir: Path
    calibration: CalibrateOutcome
    int8_model: Path
    fp16_model: Path | None
    report: Report
    report_path: Path
    files: tuple[Path, ...]


def run(
    model: str | Path | None = None,
    *,
    out: str | Path,
    calib_data: DataOptions | None = None,
    eval_data: DataOptions | None = None,
    calibration: CalibrationOptions | None = None,
    build_options: BuildOptions | None = None,
    eval_options: EvalOptions | None = None,
    force: bool = False,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> RunOutcome:
    """calibrate -> build INT8 and FP16 -> evaluate -> report, all files into ``out``.

    With no model and no data, runs the embedded demo (MNIST LeNet, its calibration and
    evaluation splits).
    """
    from quant._io import ensure_dir
    from quant.graph.load import save_model

    is_demo = model is None or str(model) == DEMO
    if calib_data is None:
        if not is_demo:
            raise UsageError("quant run MODEL needs --data (calibration images or .npy/.npz)")
        calib_data = DataOptions("demo:calib")
    if eval_data is None:
        if is_demo:
            eval_data = DataOptions("demo:eval", batch_size=32)
        else:
            log.warning(
                "no --eval-data given: evaluating on the calibration data, which overstates INT8 accuracy"
            )
            eval_data = calib_data
    calibration = calibration or CalibrationOptions()
    build_options = build_options or BuildOptions()
    eval_options = eval_options or EvalOptions()
    out_dir = ensure_dir(out)
    prepared = prepare_model(model)
    stem = prepared.path.stem
    cache_path = out_dir / f"{stem}.cache"
    cal = calibrate(
        None,
        calib_data,
        cache=cache_path,
        options=calibration,
        force=force,
        progress=progress,
        prepared=prepared,
    )
    models, build_info = precision_models(
        prepared, eval_options.precisions, cache=cache_path, exclude=build_options.exclude
    )
    if "int8" not in models:
        int8_only, int8_info = precision_models(prepared, ("int8",), cache=cache_path, exclude=build_options.exclude)
        models_to_save = {"int8": int8_only["int8"], **{k: v for k, v in models.items() if k == "fp16"}}
        build_info = {**build_info, "int8": int8_info["int8"]}
    else:
        models_to_save = {k: v for k, v in models.items() if k in ("int8", "fp16")}
    # The saved int8 model is always the TensorRT placement (what TensorRT 10/11 builds); the
    # ONNX Runtime CPU form is saved as <stem>.int8-ort.onnx when int8-ort is evaluated.
    int8_path = out_dir / f"{stem}.int8.onnx"
    save_model(models_to_save["int8"], int8_path)
    files = [cal.cache_path, cal.sidecar_path, *([cal.stats_path] if cal.stats_path else []), int8_path]
    fp16_path: Path | None = None
    if "fp16" in models_to_save:
        fp16_path = out_dir / f"{stem}.fp16.onnx"
        save_model(models_to_save["fp16"], fp16_path)
        files.append(fp16_path)
    if "int8-ort" in models:
        ort_path = out_dir / f"{stem}.int8-ort.onnx"
        save_model(models["int8-ort"], ort_path)
        files.append(ort_path)
    report_path = out_dir / "report.json"
    rep = evaluate(
        None,
        eval_data,
        cache=cache_path,
        options=eval_options,
        exclude=build_options.exclude,
        report=report_path,
        progress=progress,
        command=command,
        prepared=prepared,
        calibration=cal,
        prebuilt=(models, build_info),
    )
    files.append(report_path)
    return RunOutcome(
        out_dir=out_dir,
        calibration=cal,
        int8_model=int8_path,
        fp16_model=fp16_path,
        report=rep,
        report_path=report_path,
        files=tuple(files),
    )
