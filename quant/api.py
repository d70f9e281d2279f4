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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import BuildOptions, CalibrationOptions, DataOptions, EvalOptions, FallbackOptions
from quant.errors import CacheError, CalibrationError, DataError, UsageError

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
    """A user's model loaded once: its cleaned form and the fingerprint of the original.

    The original ModelProto is not kept: nothing reads it after fingerprinting and clean-up, and
    for a ResNet-50 it is 100 MB of peak memory during calibration."""

    path: Path
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
    fingerprint = model_fingerprint(original)
    clean = cleanup(original, in_place=True)  # returns a compact copy; the original is garbage
    del original
    return PreparedModel(
        path=path,
        clean=clean,
        fingerprint=fingerprint,
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


def _sidecar_of(cache: str | Path | None) -> Path | None:
    """The sidecar next to ``cache`` (an input too: ``read_cache`` reads it), or None."""
    from quant.cache.io import sidecar_path

    return None if cache is None else sidecar_path(cache)


def data_file(data: DataOptions | None) -> Path | None:
    """The data path when it is a file (.npy / .npz) that an output must never overwrite."""
    if data is None or data.path.startswith("demo:"):
        return None
    p = Path(data.path)
    return p if p.is_file() else None


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrateOutcome:
    """What `calibrate` did: the result, where it is, and how it was obtained.

    ``action``: ``"reused"`` (the cache matched model, data, method and parameters; nothing was
    recomputed, at most its header was rewritten for another ``trt_version``), ``"recomputed"``
    (amax recomputed from the saved statistics file; the model was not run), ``"calibrated"``
    (the model ran over the data) or ``"from-stats"`` (cache written from a statistics file given
    by the user, without data). ``stale_reasons`` says why an existing cache was not reused.
    """

    result: CalibrationResult
    cache_path: Path
    sidecar_path: Path
    reused: bool
    message: str
    seconds: float
    data_summary: dict[str, Any] = field(default_factory=dict)
    stats_path: Path | None = None
    action: str = "calibrated"
    stale_reasons: tuple[str, ...] = ()

    @property
    def ran_model(self) -> bool:
        """True when the model was run over the data (a fresh collection of statistics)."""
        return self.action == "calibrated"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reused": self.reused,
            "message": self.message,
            "cache": str(self.cache_path),
            "sidecar": str(self.sidecar_path),
            "stats": None if self.stats_path is None else str(self.stats_path),
            "seconds": self.seconds,
            "stale_reasons": list(self.stale_reasons),
            "data": dict(self.data_summary),
            "method": self.result.method,
            "num_samples": self.result.num_samples,
            "tensors": len(self.result.amax),
        }


def data_manifest(dataset: Dataset, data: DataOptions) -> dict[str, Any]:
    """The parts the data fingerprint covers, recorded so that a change can be named.

    The dataset's own ``fingerprint()`` stays the authority on *whether* the data changed (it also
    covers file sizes and mtimes, or file bytes); this manifest only explains *what* changed: the
    file list (as a count and a digest, not the names: calibration sets can be large), the
    preprocessing spec, ``--max-samples``, ``--seed`` and the sample count.
    """
    from quant.fingerprint import hash_bytes

    summary = dataset.summary()
    files = getattr(dataset, "files", None)
    names = [str(f) for f in files] if files is not None else [Path(summary.source).name]
    spec = getattr(dataset, "preprocess", None)
    return {
        "kind": summary.kind,
        "source": summary.source,
        "num_files": len(names),
        "files_sha256": hash_bytes("\n".join(names).encode("utf-8")),
        "preprocess": spec.to_dict() if spec is not None and hasattr(spec, "to_dict") else None,
        "max_samples": data.max_samples,
        "seed": data.seed,
        "num_samples": len(dataset),
    }


def _explain_data_change(old: Any, new: Mapping[str, Any]) -> list[str]:
    """Which part of the data changed, from two manifests (see :func:`data_manifest`)."""
    if not isinstance(old, Mapping):
        return ["calibration data changed"]
    reasons: list[str] = []
    if old.get("kind") != new.get("kind"):
        reasons.append(f"data kind changed ({old.get('kind')} -> {new.get('kind')})")

    def samples(m: Mapping[str, Any]) -> str:
        return "all" if m.get("max_samples") is None else str(m.get("max_samples"))

    selection_changed = False
    if old.get("max_samples") != new.get("max_samples"):
        reasons.append(f"--max-samples changed ({samples(old)} -> {samples(new)})")
        selection_changed = True
    if old.get("seed") != new.get("seed"):
        reasons.append(f"--seed changed ({old.get('seed')} -> {new.get('seed')})")
        selection_changed = True
    old_pre, new_pre = old.get("preprocess"), new.get("preprocess")
    if old_pre != new_pre:
        if isinstance(old_pre, Mapping) and isinstance(new_pre, Mapping):
            keys = sorted(k for k in set(old_pre) | set(new_pre) if old_pre.get(k) != new_pre.get(k))
            reasons.append(f"preprocessing changed ({', '.join(keys)})")
        else:
            reasons.append("preprocessing changed")
    if not selection_changed and old.get("files_sha256") != new.get("files_sha256"):
        n_old, n_new = old.get("num_files"), new.get("num_files")
        if n_old != n_new:
            reasons.append(f"data files added or removed ({n_old} -> {n_new} files)")
        else:
            reasons.append(f"data file list changed (same number of files, {n_new}, other names)")
    if not reasons:
        reasons.append("data file contents changed (size, modification time or bytes of the same files)")
    return reasons


def _fingerprint_changes(
    stored: Mapping[str, Any],
    prepared: PreparedModel,
    data_fingerprint: str | None,
    manifest: Mapping[str, Any] | None = None,
) -> list[str]:
    """What changed since ``stored`` (a sidecar's calibration or a statistics file's metadata)
    was made: model graph / weights, and the data part by part when a manifest is given."""
    from quant.fingerprint import compare_fingerprints

    reasons = compare_fingerprints(stored, model=prepared.fingerprint, data=data_fingerprint)
    if "calibration data changed" in reasons and manifest is not None:
        i = reasons.index("calibration data changed")
        reasons[i : i + 1] = _explain_data_change(stored.get("data_manifest"), manifest)
    return reasons


def _stale_reasons(
    loaded: LoadedCache,
    prepared: PreparedModel,
    data_fingerprint: str | None,
    manifest: Mapping[str, Any] | None = None,
) -> list[str]:
    """Why a quant cache no longer fits the model (and the data, when its fingerprint is given)."""
    calib = (loaded.sidecar or {}).get("calibration") or {}
    return _fingerprint_changes(calib, prepared, data_fingerprint, manifest)


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
    """Calibrate ``model`` on ``data``; write ``cache`` (TensorRT text), ``cache.json`` (sidecar)
    and ``cache.stats.npz`` (the collected histograms).

    Decision, cheapest first (``force`` skips the first two and always runs the model):

    1. the existing cache's sidecar records the same model (graph and weights), the same data
       (files, sizes and mtimes or bytes, preprocessing, sample count, seed), method, parameters
       and scope: it is reused (only its header is rewritten when ``options.trt_version`` names
       another TensorRT version);
    2. the statistics file next to the cache has the same model and data fingerprints, the same
       bin count and every tensor to calibrate: amax is recomputed from it with the requested
       method, without running the model;
    3. otherwise the model runs over the data and all three files are replaced.

    The outcome's message says which happened and, for a cache that was not reused, what changed.
    """
    from quant._io import check_output_not_input, commit_together
    from quant.cache.io import sidecar_path, write_cache
    from quant.cache.trt import DEFAULT_TRT_VERSION, encode_trt_version
    from quant.calibrators.calibrate import calibrate as run_calibration
    from quant.calibrators.methods import CalibConfig, compute_amax
    from quant.calibrators.result import CalibrationResult
    from quant.calibrators.stats_io import save_stats, stats_path
    from quant.graph.qdq import calibration_tensors

    options = options or CalibrationOptions()
    start = time.perf_counter()
    prepared = prepared or prepare_model(model)
    cache_path = Path(cache)
    stats_file = stats_path(cache_path)
    for written in (cache_path, sidecar_path(cache_path), stats_file):
        check_output_not_input(written, prepared.path, data_file(data))
    trt_version = encode_trt_version(options.trt_version) if options.trt_version else DEFAULT_TRT_VERSION
    config = CalibConfig(method=options.method, percentile=options.percentile, num_bins=options.num_bins)
    dataset = open_data(prepared, data)
    # Hashing the data (77 MB of .npz for 128 ImageNet samples: 0.2 s) runs while the stage
    # sessions are built (ORT's session set-up leaves the other cores idle); only a cache or
    # statistics file to check needs it before that.
    data_fp = _Background(dataset.fingerprint, name="quant-data-fingerprint")
    manifest = data_manifest(dataset, data)
    tensors = calibration_tensors(prepared.clean, scope=options.scope)
    if not tensors:
        raise CalibrationError(
            f"model '{prepared.name}' has no float activations to calibrate (scope {options.scope}); "
            "INT8 calibration needs float tensors: is the model integer-only or already quantized?"
        )

    def outcome(result: CalibrationResult, message: str, action: str, stats: Path | None, side: Path) -> CalibrateOutcome:
        return CalibrateOutcome(
            result=result,
            cache_path=cache_path,
            sidecar_path=side,
            reused=action == "reused",
            message=message,
            seconds=time.perf_counter() - start,
            data_summary=dataset.summary().to_dict(),
            stats_path=stats,
            action=action,
            stale_reasons=tuple(reasons),
        )

    reasons: list[str] = []
    prefix = ""
    if force:
        prefix = "recalibrating as asked (--force/--recollect): "
    else:
        if cache_path.exists():
            reused, reasons, loaded = _can_reuse(
                cache_path, prepared, data_fp.result(), config, options, manifest=manifest
            )
            if reused is not None and loaded is not None:
                message = f"cache '{cache_path}' is up to date (same model, data, method and parameters); reused it"
                side = Path(str(cache_path) + ".json")
                if options.trt_version and loaded.parsed.trt_version != trt_version:
                    from quant.cache.trt import decode_trt_version

                    _cache, side = write_cache(cache_path, dict(loaded.calibration or {}), trt_version=trt_version)
                    message += f"; rewrote its header for TensorRT {decode_trt_version(trt_version)}"
                return outcome(reused, message, "reused", stats_file if stats_file.exists() else None, side)
            prefix = f"cache '{cache_path}' not reused ({'; '.join(reasons)}); "
        stats, meta, why = _usable_stats(stats_file, prepared, data_fp.result, manifest, tensors, config)
        if stats is not None and meta is not None:
            result = CalibrationResult.from_ranges(
                compute_amax(stats, config),
                method=config.method,
                params=config.params(),
                num_samples=int(meta["num_samples"]),
                model_fingerprint=prepared.fingerprint.to_dict(),
                data_fingerprint=data_fp.result(),
                tensors_scope=options.scope,
            )
            _cache, side = write_cache(
                cache_path, {**result.to_dict(), "data_manifest": manifest}, trt_version=trt_version
            )
            message = (
                f"{prefix}recomputed {len(result.amax)} ranges with {config.method} from saved statistics "
                f"'{stats_file}' ({result.num_samples} samples); the model was not run"
            )
            return outcome(result, message, "recomputed", stats_file, side)
        if why and not prefix:
            reasons.append(why)
            prefix = f"{why}; "

    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    result, collector = run_calibration(
        prepared.clean,
        dataset,
        tensors,
        config,
        batch_size=batch_size,
        progress=progress,
        model_fingerprint=prepared.fingerprint.to_dict(),
        data_fingerprint=data_fp.result,
        scope=options.scope,
        model_name=prepared.name,
    )
    # The three files are one set: all are replaced, or (error, Ctrl-C) none; see commit_together.
    with commit_together():
        saved_stats = save_stats(
            stats_file,
            collector.stats(),
            {
                "num_samples": result.num_samples,
                "model_fingerprint": prepared.fingerprint.to_dict(),
                "data_fingerprint": result.data_fingerprint,
                "data_manifest": manifest,
                "scope": options.scope,
                "quant_version": result.quant_version,
            },
        )
        _cache, side = write_cache(
            cache_path, {**result.to_dict(), "data_manifest": manifest}, trt_version=trt_version
        )
    summary = dataset.summary().to_dict()
    msg = f"{prefix}calibrated {len(result.amax)} tensors on {result.num_samples} samples with {options.method}"
    if summary.get("num_skipped"):
        msg += f" ({summary['num_skipped']} bad images skipped)"
    return outcome(result, msg, "calibrated", saved_stats, side)


class _Background:
    """``fn()`` on a thread, started now; :meth:`result` waits for it and returns its value or
    raises its error (a missing data file, say) in the caller's thread."""

    def __init__(self, fn: Callable[[], Any], *, name: str) -> None:
        import threading

        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = fn()
            except BaseException as exc:  # re-raised by result()
                self._error = exc

        self._thread = threading.Thread(target=target, name=name, daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


def _can_reuse(
    cache_path: Path,
    prepared: PreparedModel,
    data_fp: str,
    config: Any,
    options: CalibrationOptions,
    *,
    manifest: Mapping[str, Any] | None = None,
) -> tuple[CalibrationResult | None, list[str], LoadedCache | None]:
    """(result, [], loaded) when the cache can be reused as is, else (None, reasons, loaded or None).

    Reasons name what changed: the model graph or weights, the data part by part (see
    :func:`data_manifest`), the method, its parameters or the scope; or why the cache cannot be
    judged (unreadable, no sidecar: not written by quant).
    """
    from quant.cache.io import read_cache
    from quant.calibrators.result import CalibrationResult

    try:
        loaded = read_cache(cache_path)
    except CacheError as exc:
        return None, [f"it is unusable: {exc}"], None
    calib = loaded.calibration
    if calib is None:
        return None, ["it has no quant sidecar, so its model and data are unknown"], loaded
    try:
        reasons = _stale_reasons(loaded, prepared, data_fp, manifest)
    except CacheError as exc:
        return None, [f"its sidecar is unusable: {exc}"], loaded
    if calib.get("method") != config.method:
        reasons.append(f"method changed ({calib.get('method')} -> {config.method})")
    elif (calib.get("params") or {}) != config.params():
        old = calib.get("params") or {}
        keys = sorted(k for k in set(old) | set(config.params()) if old.get(k) != config.params().get(k))
        reasons.append(f"method parameters changed ({', '.join(keys)})")
    if calib.get("tensors_scope", "all") != options.scope:
        reasons.append(f"scope changed ({calib.get('tensors_scope')} -> {options.scope})")
    if reasons:
        return None, reasons, loaded
    try:
        result = CalibrationResult.from_dict(calib, source=f"sidecar of cache '{cache_path}'")
    except CacheError as exc:
        return None, [f"its sidecar is unusable: {exc}"], loaded
    return result, [], loaded


def _usable_stats(
    path: Path,
    prepared: PreparedModel,
    data_fp: Callable[[], str],
    manifest: Mapping[str, Any],
    tensors: Sequence[str],
    config: Any,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """The saved statistics of ``tensors`` when they fit the model and data, else (None, meta, why).
    ``data_fp`` gives the data fingerprint; it is asked for only when the file exists."""
    from quant.calibrators.stats_io import load_stats

    if not path.exists():
        return None, None, None
    try:
        stats, meta = load_stats(path)
        changes = _fingerprint_changes(meta, prepared, data_fp(), manifest)
    except CacheError as exc:
        return None, None, f"statistics '{path}' not used: {exc}"
    if meta.get("num_bins") != config.num_bins:
        changes.append(f"--num-bins changed ({meta.get('num_bins')} -> {config.num_bins})")
    missing = [t for t in tensors if t not in stats]
    if missing:
        changes.append(f"{len(missing)} tensors to calibrate are not in them (first: '{missing[0]}')")
    if changes:
        return None, meta, f"statistics '{path}' not used ({'; '.join(changes)})"
    return {t: stats[t] for t in tensors}, meta, None


def calibrate_from_stats(
    model: str | Path | None,
    stats: str | Path,
    *,
    cache: str | Path,
    options: CalibrationOptions | None = None,
    prepared: PreparedModel | None = None,
) -> CalibrateOutcome:
    """Write ``cache`` (+ sidecar, + a copy of the statistics next to it) from a statistics file,
    e.g. one made by :func:`merge_stats`, without data and without running the model.

    The statistics must have been collected on this model (same graph and weights) and hold every
    tensor of ``options.scope``; the histogram resolution is the file's. The sidecar records the
    file's data fingerprint (for merged files: the order-independent fingerprint of the shards).
    """
    from quant._io import atomic_write, check_output_not_input, commit_together
    from quant.cache.io import sidecar_path, write_cache
    from quant.cache.trt import DEFAULT_TRT_VERSION, encode_trt_version
    from quant.calibrators.methods import CalibConfig, compute_amax
    from quant.calibrators.result import CalibrationResult
    from quant.calibrators.stats_io import load_stats, stats_path
    from quant.graph.qdq import calibration_tensors

    options = options or CalibrationOptions()
    start = time.perf_counter()
    prepared = prepared or prepare_model(model)
    source = Path(stats)
    cache_path = Path(cache)
    for out in (cache_path, sidecar_path(cache_path)):
        check_output_not_input(out, prepared.path, source)
    trt_version = encode_trt_version(options.trt_version) if options.trt_version else DEFAULT_TRT_VERSION
    all_stats, meta = load_stats(source)
    changes = _fingerprint_changes(meta, prepared, None)
    if changes:
        raise CacheError(
            f"statistics '{source}' were not collected on model '{prepared.name}' ({'; '.join(changes)}); "
            f"collect them again with 'quant calibrate {prepared.name} --data ...'"
        )
    tensors = calibration_tensors(prepared.clean, scope=options.scope)
    missing = [t for t in tensors if t not in all_stats]
    if missing:
        raise CacheError(
            f"statistics '{source}' have no histogram for {len(missing)} tensors of model '{prepared.name}' "
            f"(first: '{missing[0]}'); they were collected with another --scope: pass --scope "
            f"{meta.get('scope') or 'qdq'} or collect them again"
        )
    config = CalibConfig(method=options.method, percentile=options.percentile, num_bins=int(meta["num_bins"]))
    result = CalibrationResult.from_ranges(
        compute_amax({t: all_stats[t] for t in tensors}, config),
        method=config.method,
        params=config.params(),
        num_samples=int(meta["num_samples"]),
        model_fingerprint=prepared.fingerprint.to_dict(),
        data_fingerprint=str(meta["data_fingerprint"]),
        tensors_scope=options.scope,
    )
    shards = meta.get("data_shards") or [meta["data_fingerprint"]]
    extra = {"data_manifest": meta.get("data_manifest"), "data_shards": list(shards)}
    beside = stats_path(cache_path)
    with commit_together():  # cache, sidecar and the statistics beside them: all or none
        _cache, side = write_cache(cache_path, {**result.to_dict(), **extra}, trt_version=trt_version)
        if beside.resolve() != source.resolve():
            atomic_write(beside, source.read_bytes())
    shard_text = f", {len(shards)} data shards" if len(shards) > 1 else ""
    message = (
        f"wrote {len(result.amax)} ranges with {config.method} from statistics '{source}' "
        f"({result.num_samples} samples{shard_text}); no data was read and the model was not run"
    )
    return CalibrateOutcome(
        result=result,
        cache_path=cache_path,
        sidecar_path=side,
        reused=False,
        message=message,
        seconds=time.perf_counter() - start,
        data_summary={},
        stats_path=beside,
        action="from-stats",
    )


@dataclass(frozen=True)
class MergeStatsOutcome:
    """What `merge_stats` wrote."""

    output: Path
    inputs: tuple[Path, ...]
    num_tensors: int
    num_samples: int
    num_shards: int
    data_fingerprint: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "inputs": [str(p) for p in self.inputs],
            "num_tensors": self.num_tensors,
            "num_samples": self.num_samples,
            "num_shards": self.num_shards,
            "data_fingerprint": self.data_fingerprint,
            "message": self.message,
        }


def merge_stats(inputs: Sequence[str | Path], *, output: str | Path) -> MergeStatsOutcome:
    """Merge statistics files of data shards of one model into ``output``.

    The merged histograms equal those of one calibration over all shards (exactly, so every
    method gives the same amax); the merged data fingerprint does not depend on the order of
    ``inputs``. Write a cache from the result with :func:`calibrate_from_stats`.
    """
    from quant.calibrators.stats_io import merge_stats_files

    out, meta, merged = merge_stats_files(inputs, output)
    shards = list(meta.get("data_shards") or [])
    message = (
        f"merged {len(inputs)} statistics files ({len(shards)} data shards, {meta['num_samples']} samples, "
        f"{len(merged)} tensors) into '{out}'"
    )
    return MergeStatsOutcome(
        output=out,
        inputs=tuple(Path(p) for p in inputs),
        num_tensors=len(merged),
        num_samples=int(meta["num_samples"]),
        num_shards=len(shards),
        data_fingerprint=str(meta["data_fingerprint"]),
        message=message,
    )


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
    cache_internal: tuple[str, ...] = ()  # TensorRT-internal cache entries (never in an ONNX model)
    fallback: Any = None  # quant.sensitivity.FallbackResult when built with an accuracy budget
    fallback_path: Path | None = None  # the fallback file (--exclude-from reads it)

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
            "cache_internal": list(self.cache_internal),
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
            msg = f"cache '{cache}' is stale: {'; '.join(reasons)}; recalibrate with 'quant calibrate' (it notices the change)"
            if strict:
                raise CacheError(msg)
            warnings.append(msg)
    if match.unknown or match.internal:
        names = [*match.unknown, *match.internal]
        listed = ", ".join(repr(n) for n in names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
        warnings.append(
            f"{len(names)} cache entries are not tensors of model '{prepared.name}' "
            f"({len(match.internal)} TensorRT-internal, {len(match.unknown)} unknown); ignored: {listed}"
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
    from quant.cache.io import check_cache_against_model
    from quant.graph.qdq import calibration_tensors, insert_qdq, quantizable_inputs

    res = insert_qdq(prepared.clean, loaded.amax, target=target, exclude=tuple(exclude))
    match = check_cache_against_model(loaded, calibration_tensors(prepared.clean, scope="all"))
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
        "cache_unknown": match.unknown,
        "cache_internal": match.internal,
    }


def build(
    model: str | Path | None,
    *,
    output: str | Path,
    cache: str | Path | None = None,
    options: BuildOptions | None = None,
    prepared: PreparedModel | None = None,
    data: DataOptions | None = None,
    fallback: FallbackOptions | None = None,
    exclude_from: str | Path | None = None,
    progress: bool = False,
) -> BuildOutcome:
    """Build an INT8 Q/DQ model (from a cache), an FP16 model or the cleaned FP32 model.

    ``exclude_from``: a fallback file (or JSON list) whose exclusions are added to
    ``options.exclude``. With ``fallback`` holding a budget, the INT8 build measures ``data`` and
    keeps the most sensitive layers in float (:func:`build_with_fallback`).
    """
    from quant._io import check_output_not_input
    from quant.graph.load import save_model

    options = options or BuildOptions()
    prepared = prepared or prepare_model(model)
    if exclude_from is not None:
        options = _with_exclude_file(options, exclude_from, prepared)
    if fallback is not None and fallback.active:
        return build_with_fallback(
            None, output=output, cache=cache, data=data, options=options, fallback=fallback,
            prepared=prepared, progress=progress,
        )
    out = Path(output)
    check_output_not_input(out, prepared.path, cache, _sidecar_of(cache))
    warnings: list[str] = []
    fields: dict[str, Any] = {}
    if options.precision == "int8":
        if cache is None:
            raise UsageError("--precision int8 needs --cache (run 'quant calibrate' first)")
        if options.exclude or exclude_from is not None:
            prepared = _with_node_names(prepared)  # exclusions match names: see build_with_fallback
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
# sensitivity and fallback (docs/SENSITIVITY.md)
# --------------------------------------------------------------------------------------------


def _with_node_names(prepared: PreparedModel) -> PreparedModel:
    """``prepared`` whose cleaned model has every node named (``<op_type>_<index>`` for unnamed
    ones, the label ``quant inspect`` shows), so that exclusions by node name can reach them."""
    from dataclasses import replace

    from quant.sensitivity.switchable import name_unnamed_nodes

    named = name_unnamed_nodes(prepared.clean)
    return prepared if named is prepared.clean else replace(prepared, clean=named)


def _with_exclude_file(options: BuildOptions, path: str | Path, prepared: PreparedModel) -> BuildOptions:
    """``options`` with the exclusions of a fallback file (``--exclude-from``) appended."""
    from dataclasses import replace

    from quant.sensitivity.io import read_exclude_file

    loaded = read_exclude_file(path)
    fp = loaded.model_fingerprint
    mine = prepared.fingerprint.to_dict()
    if fp is not None and any(fp.get(k) != mine.get(k) for k in ("graph", "weights")):
        log.warning(
            "--exclude-from '%s' was made for another version of model '%s'; its exclusions may not match",
            path,
            prepared.name,
        )
    extra = tuple(p for p in loaded.exclude if p not in options.exclude)
    return replace(options, exclude=options.exclude + extra)


def _capped(data: DataOptions, default: int) -> DataOptions:
    """``data`` with ``max_samples`` set to ``default`` when the user gave none."""
    from dataclasses import replace

    if data.max_samples is not None:
        return data
    log.info("using at most %d samples (--max-samples)", default)
    return replace(data, max_samples=default)


def _model_section(prepared: PreparedModel) -> dict[str, Any]:
    from quant.graph.load import output_specs

    return {
        "path": str(prepared.path),
        "fingerprint": prepared.fingerprint.to_dict(),
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in prepared.inputs],
        "outputs": [
            {"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in output_specs(prepared.clean)
        ],
    }


@dataclass(frozen=True)
class SensitivityOutcome:
    """What :func:`sensitivity` measured, the data it used and where the report went (if anywhere)."""

    result: Any  # quant.sensitivity.SensitivityResult
    section: dict[str, Any]  # what went into report.extra["sensitivity"]
    report_path: Path | None = None
    warnings: tuple[str, ...] = ()


def sensitivity(
    model: str | Path | None,
    data: DataOptions,
    *,
    cache: str | Path,
    options: Any = None,
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
    prepared: PreparedModel | None = None,
) -> SensitivityOutcome:
    """Rank the quantized layers of ``model`` by how much INT8 hurts the output metric.

    For each layer: the loss with it alone in INT8 (damage) and the loss saved with it alone in
    float (gain), against FP32 on ``data`` (at most ``DEFAULT_MAX_SAMPLES`` samples unless
    ``data.max_samples`` says otherwise). ``options`` is a
    :class:`quant.sensitivity.SensitivityOptions`. With ``report``, the result is added as
    ``extra["sensitivity"]`` to that report (created when it does not exist).
    """
    from quant.sensitivity import DEFAULT_MAX_SAMPLES, SensitivityOptions, build_switchable_model
    from quant.sensitivity.measure import SwitchableRunner, measure_sensitivity

    opts: SensitivityOptions = options or SensitivityOptions()
    prepared = _with_node_names(prepared or prepare_model(model))
    loaded, warnings = load_cache_for_model(cache, prepared)
    for w in warnings:
        log.warning("%s", w)
    data = _capped(data, DEFAULT_MAX_SAMPLES)
    dataset = open_data(prepared, data)
    if opts.metric == "accuracy" and not dataset.has_labels:
        raise DataError(
            f"--metric accuracy needs labelled data and '{data.path}' has no labels (class subfolders or an "
            "npz 'labels' key); use --metric agreement"
        )
    switchable = build_switchable_model(prepared.clean, loaded.amax, exclude=opts.exclude)
    with SwitchableRunner(switchable, threads=opts.threads, segments=opts.segments) as runner:
        result = measure_sensitivity(
            runner,
            dataset,
            batch_size=effective_batch_size(prepared.inputs, data.batch_size),
            metric=opts.metric,
            classifier_output=opts.classifier_output,
            progress=progress,
        )
    summary = dataset.summary().to_dict()
    summary["fingerprint"] = dataset.fingerprint()
    section = {"cache": str(cache), "data": summary, **result.to_dict()}
    report_path = None
    if report is not None:
        report_path = _save_sensitivity_report(report, prepared, summary, section, command)
    return SensitivityOutcome(result=result, section=section, report_path=report_path, warnings=tuple(warnings))


def _save_sensitivity_report(
    path: str | Path,
    prepared: PreparedModel,
    data_summary: dict[str, Any],
    section: dict[str, Any],
    command: Sequence[str] | None,
) -> Path:
    """Add ``section`` as ``extra["sensitivity"]`` to the report at ``path``, or write a new one."""
    from dataclasses import replace

    from quant.errors import ReportError
    from quant.report.schema import Report, load_report, save_report

    p = Path(path)
    if p.exists():
        existing = load_report(p)
        theirs = (existing.model or {}).get("fingerprint") or {}
        mine = prepared.fingerprint.to_dict()
        if any(theirs.get(k) != mine.get(k) for k in ("graph", "weights")):
            raise ReportError(
                f"report '{p}' is for another model ({(existing.model or {}).get('path')}), not "
                f"'{prepared.path}'; give another --report path"
            )
        rep = replace(existing, extra={**existing.extra, "sensitivity": section})
    else:
        rep = Report.create(
            model=_model_section(prepared),
            data=data_summary,
            command=command,
            extra={"sensitivity": section},
        )
    return save_report(rep, p)


def build_with_fallback(
    model: str | Path | None,
    *,
    output: str | Path,
    cache: str | Path | None,
    data: DataOptions | None,
    fallback: FallbackOptions,
    options: BuildOptions | None = None,
    prepared: PreparedModel | None = None,
    progress: bool = False,
) -> BuildOutcome:
    """Build the INT8 Q/DQ model, keeping the most sensitive layers in float until the budget holds.

    1. run FP32 once over ``data`` (at most ``DEFAULT_BUDGET_SAMPLES`` unless
       ``data.max_samples`` says otherwise), keeping inputs and outputs in memory;
    2. rank the layers with :func:`sensitivity`'s measurements on the first
       ``fallback.rank_samples`` (default ``DEFAULT_MAX_SAMPLES``) of them (metric: top-1 accuracy
       with labels, else top-1 agreement, for an accuracy budget; SQNR for ``min_sqnr`` alone);
    3. measure all INT8 on every sample, then keep layers in float one at a time in ranking
       order, re-measuring, until the budget holds (checked on the real Q/DQ model too) or every
       layer is float;
    4. save the model and the fallback file (exclusions, every step, the ranking), which
       ``build(..., exclude_from=...)`` reads to rebuild the same model.

    Node names are what exclusions match: unnamed nodes are named first (see
    :func:`_with_node_names`).
    """
    from quant._io import check_output_not_input
    from quant.backends.onnxruntime import OrtRunner
    from quant.graph.load import save_model
    from quant.sensitivity import DEFAULT_BUDGET_SAMPLES, DEFAULT_MAX_SAMPLES, Budget, build_switchable_model
    from quant.sensitivity.io import fallback_path, save_fallback
    from quant.sensitivity.measure import (
        BatchStore,
        StoredDataset,
        SwitchableRunner,
        fill_store,
        greedy_fallback,
        measure_sensitivity,
        measure_stored,
    )
    from quant.sensitivity.results import Measurement

    options = options or BuildOptions()
    budget = Budget(accuracy_points=fallback.accuracy_budget, min_sqnr_db=fallback.min_sqnr)
    if options.precision != "int8":
        raise UsageError(f"--accuracy-budget / --min-sqnr need --precision int8, not {options.precision}")
    if options.target != "tensorrt":
        raise UsageError("--accuracy-budget / --min-sqnr support --target tensorrt only")
    if cache is None:
        raise UsageError("--accuracy-budget / --min-sqnr need --cache (run 'quant calibrate' first)")
    if data is None:
        raise UsageError("--accuracy-budget / --min-sqnr need --data: the samples the budget is measured on")
    prepared = _with_node_names(prepared or prepare_model(model))
    out = Path(output)
    fb_path = Path(fallback.report) if fallback.report else fallback_path(out)
    if fb_path.resolve() == out.resolve():
        raise UsageError(f"--fallback-report '{fb_path}' is the output model; choose another path")
    for written in (out, fb_path):
        check_output_not_input(written, prepared.path, cache, _sidecar_of(cache), data_file(data))
    loaded, warnings = load_cache_for_model(cache, prepared, strict=options.strict)
    for w in warnings:
        log.warning("%s", w)
    data = _capped(data, DEFAULT_BUDGET_SAMPLES)
    dataset = open_data(prepared, data)
    switchable = build_switchable_model(prepared.clean, loaded.amax, exclude=options.exclude)
    # The ranking uses the budget's own metric (SQNR when only --min-sqnr is given).
    metric = "agreement" if budget.accuracy_points is not None and not dataset.has_labels else "accuracy"
    if budget.accuracy_points is None:
        metric = "sqnr"

    built: dict[tuple[str, ...], tuple[onnx.ModelProto, dict[str, Any]]] = {}

    def int8(exclude: tuple[str, ...]) -> tuple[onnx.ModelProto, dict[str, Any]]:
        if exclude not in built:
            built.clear()  # keep one model in memory
            built[exclude] = build_int8_model(
                prepared, loaded, target=options.target, exclude=exclude, strict=options.strict
            )
        return built[exclude]

    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    rank_samples = fallback.rank_samples or DEFAULT_MAX_SAMPLES
    with BatchStore() as store, SwitchableRunner(switchable, threads=fallback.threads) as runner:
        # FP32 once over every sample (the budget's samples), then the ranking on the first ones.
        fill_store(runner, dataset, store, batch_size=batch_size, progress=progress)
        sens = measure_sensitivity(
            runner,
            StoredDataset(store, limit=rank_samples, source=data.path),
            batch_size=batch_size,
            metric=metric,
            classifier_output=fallback.classifier_output,
            progress=progress,
        )
        runner.release_segments()  # the greedy steps change several layers: full passes only

        def verify(exclude: tuple[str, ...]) -> Measurement:
            candidate, _fields = int8(exclude)
            with OrtRunner(candidate, threads=fallback.threads, name=f"{out.name} (candidate)") as r:
                return measure_stored(
                    r.infer, store, outputs=runner.outputs, classifier_output=sens.classifier_output
                )

        result = greedy_fallback(runner, sens, store, budget, verify=verify)
    final, fields = int8(result.exclude)
    save_model(final, out)
    summary = dataset.summary().to_dict()
    summary["fingerprint"] = dataset.fingerprint()
    save_fallback(
        fb_path,
        {
            "model": {"path": str(prepared.path), "fingerprint": prepared.fingerprint.to_dict()},
            "cache": str(cache),
            "output": str(out),
            "target": options.target,
            "data": summary,
            "exclude": list(result.exclude),
            "fallback": result.to_dict(),
            "sensitivity": sens.to_dict(),
        },
    )
    return BuildOutcome(
        output=out,
        precision="int8",
        target=options.target,
        warnings=tuple(warnings),
        fallback=result,
        fallback_path=fb_path,
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
    layers: bool = False,
) -> Report:
    """Run the same samples through FP32 / FP16 / INT8 and return (and optionally save) a report.

    ``layers`` adds the per-layer errors and activation histograms (:func:`analyze_layers`) to
    ``report.extra``; it needs ``cache`` or ``int8_model``.
    """
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    options = options or EvalOptions()
    if layers and cache is None and int8_model is None and not (prebuilt and "int8" in prebuilt[0]):
        raise UsageError("--layers needs --cache (or --int8-model): the per-layer errors compare the INT8 model with FP32")
    prepared = prepared or prepare_model(model)
    if report is not None:
        from quant._io import check_output_not_input

        check_output_not_input(report, prepared.path, data_file(data), cache, _sidecar_of(cache), int8_model)
    dataset = open_data(prepared, data)
    if prebuilt is not None:
        models, build_info = prebuilt
    else:
        models, build_info = precision_models(
            prepared, options.precisions, cache=cache, int8_model=int8_model, exclude=exclude
        )
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    from quant.backends.onnxruntime import OrtRunner

    threads = options.threads
    # Errors name the user's model file (and the precision), not the ONNX graph's internal name.
    runner_names = {id(m): f"{prepared.name} ({p})" if p != "fp32" else prepared.name for p, m in models.items()}

    def runner_factory(m: Any) -> Any:
        return OrtRunner(m, threads=threads, name=runner_names.get(id(m), prepared.name))

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
    if layers:
        rep = _with_layer_sections(
            rep, prepared, dataset, models, cache=cache, exclude=exclude, batch_size=data.batch_size,
            progress=progress, threads=options.threads,
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
# per-layer analysis (report.extra["layers"] / ["histograms"])
# --------------------------------------------------------------------------------------------


def analyze_layers(
    prepared: PreparedModel,
    data: DataOptions | Dataset,
    int8_model: onnx.ModelProto,
    *,
    cache: str | Path | None = None,
    max_samples: int | None = None,
    batch_size: int | None = None,
    worst: int | None = None,
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, Any]:
    """Per-layer quantization error of ``int8_model`` against the FP32 model, plus histograms.

    Runs both models on the first ``max_samples`` samples of ``data`` (default 64; see
    :mod:`quant.eval.layers`), and takes the |x| histograms of the worst layers' quantized inputs
    from the statistics file next to ``cache`` (``<cache>.stats.npz``). Returns
    ``{"layers": ..., "histograms": ...}`` for ``report.extra`` (:mod:`quant.report.sections`).
    A model without INT8 layers, or a cache without statistics, gives sections that say so.
    """
    from quant.eval.layers import DEFAULT_BATCH_SIZE, DEFAULT_MAX_SAMPLES, layer_errors, quantized_layers
    from quant.report.sections import WORST_LAYERS, layer_report_sections

    max_samples = DEFAULT_MAX_SAMPLES if max_samples is None else max_samples
    worst = WORST_LAYERS if worst is None else worst
    if isinstance(data, DataOptions):
        requested = min(batch_size or data.batch_size, DEFAULT_BATCH_SIZE)
        dataset = open_data(prepared, data)
    else:
        requested = batch_size or DEFAULT_BATCH_SIZE
        dataset = data
    bs = effective_batch_size(prepared.inputs, requested)
    source = dataset.summary().source
    amax: dict[str, float] = {}
    method: str | None = None
    stats = None
    stats_note: str | None = "no calibration cache given: histograms come from its statistics file"
    if cache is not None:
        amax, method, stats, stats_note = _cache_stats(cache, prepared)
    if not quantized_layers(int8_model):
        why = "no layer of the INT8 model runs in INT8 (everything excluded or skipped)"
        return layer_report_sections(
            [], amax=amax, stats=None, method=method, batch_size=bs, max_samples=max_samples,
            data=source, layers_unavailable=why,
        )
    errors = layer_errors(
        prepared.clean,
        int8_model,
        dataset,
        batch_size=bs,
        max_samples=max_samples,
        progress=progress,
        threads=threads,
        reference_name=prepared.name,
        quantized_name=f"{prepared.path.stem} (int8)",
    )
    return layer_report_sections(
        errors, amax=amax, stats=stats, method=method, batch_size=bs, max_samples=max_samples,
        data=source, worst=worst, stats_unavailable=stats_note,
    )


def _cache_stats(cache: str | Path, prepared: PreparedModel) -> tuple[dict[str, float], str | None, Any, str | None]:
    """(amax, method, statistics or None, why no statistics) of a cache."""
    from quant.cache.io import read_cache
    from quant.calibrators.stats_io import load_stats, stats_path

    loaded = read_cache(cache)
    amax = {k: float(v) for k, v in loaded.amax.items() if v is not None}
    method = loaded.method or loaded.parsed.algorithm
    path = stats_path(cache)
    if not path.exists():
        return amax, method, None, f"no statistics file '{path}' next to the cache (quant calibrate writes one)"
    try:
        stats, meta = load_stats(path)
    except CacheError as exc:
        return amax, method, None, str(exc)
    recorded = meta.get("model_fingerprint")
    if isinstance(recorded, dict) and recorded.get("graph") not in (None, prepared.fingerprint.graph):
        return amax, method, None, f"statistics file '{path}' was made for another model; recalibrate"
    return amax, method, stats, None


def _with_layer_sections(
    rep: Report,
    prepared: PreparedModel,
    dataset: Dataset,
    models: dict[str, onnx.ModelProto],
    *,
    cache: str | Path | None,
    exclude: Sequence[str],
    batch_size: int,
    progress: bool,
    threads: int | None,
) -> Report:
    """``rep`` with the per-layer sections added to ``extra`` (the INT8 model built from the cache
    when it was not evaluated)."""
    from dataclasses import replace

    from quant.eval.layers import DEFAULT_BATCH_SIZE

    int8 = models.get("int8")
    if int8 is None:
        built, _ = precision_models(prepared, ("int8",), cache=cache, exclude=exclude)
        int8 = built["int8"]
    sections = analyze_layers(
        prepared, dataset, int8, cache=cache, batch_size=min(batch_size, DEFAULT_BATCH_SIZE), progress=progress,
        threads=threads,
    )
    return replace(rep, extra={**rep.extra, **sections})


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
    from quant._io import check_output_not_input

    for name in (f"{stem}.int8.onnx", f"{stem}.fp16.onnx", f"{stem}.int8-ort.onnx", "report.json", "report.html"):
        check_output_not_input(out_dir / name, prepared.path, data_file(calib_data), data_file(eval_data))
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
        layers=True,
    )
    files.append(report_path)
    from quant.report.html import write_html_report

    files.append(write_html_report(rep, out_dir / "report.html"))
    return RunOutcome(
        out_dir=out_dir,
        calibration=cal,
        int8_model=int8_path,
        fp16_model=fp16_path,
        report=rep,
        report_path=report_path,
        files=tuple(files),
    )


# --------------------------------------------------------------------------------------------
# TensorRT backend (TensorRT and cuda-python are imported only here, lazily)
# --------------------------------------------------------------------------------------------


def build_tensorrt_engine(
    model: str | Path | None,
    *,
    output: str | Path,
    trt_options: Any,
    cache: str | Path | None = None,
    data: DataOptions | None = None,
) -> Any:
    """Build a TensorRT engine (``quant build --backend tensorrt``) and its ``.json`` sidecar.

    ``trt_options`` is an ``EngineBuildOptions``. INT8 on TensorRT 8.6-10.x uses the cache through
    TensorRT's calibrator (``data`` lets TensorRT calibrate when the cache is missing); on 11.x the
    Q/DQ model is built from the cache first. Without TensorRT this raises
    BackendUnavailableError naming the extra to install.
    """
    from quant._io import check_output_not_input
    from quant.backends.tensorrt import import_tensorrt
    from quant.backends.tensorrt.builder import build_engine

    import_tensorrt()  # fail first, with the install hint, before any work
    path = resolve_model_path(model)
    check_output_not_input(output, path, cache)
    dataset = open_data(prepare_model(path), data) if data is not None else None
    return build_engine(path, output=output, options=trt_options, cache=cache, calib_dataset=dataset)


def evaluate_tensorrt(
    model: str | Path | None,
    data: DataOptions,
    *,
    trt_options: Any,
    engine_dir: str | Path,
    cache: str | Path | None = None,
    options: EvalOptions | None = None,
    warmup: int = 3,
    report: str | Path | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> Report:
    """``quant eval --backend tensorrt``: build one engine per precision into ``engine_dir`` and
    evaluate them with the TensorRT runner on the same samples (latency from CUDA events)."""
    from dataclasses import replace

    from quant.backends.tensorrt import import_tensorrt
    from quant.backends.tensorrt.builder import build_engine
    from quant.backends.tensorrt.runner import TrtRunner
    from quant.eval.evaluate import evaluate as run_eval
    from quant.report.schema import save_report

    import_tensorrt()
    options = options or EvalOptions()
    prepared = prepare_model(model)
    dataset = open_data(prepared, data)
    out_dir = Path(engine_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engines: dict[str, Any] = {}
    build_info: dict[str, Any] = {}
    for p in dict.fromkeys(("fp32", *options.precisions)):
        if p == "int8-ort":
            raise UsageError("precision int8-ort is an ONNX Runtime form; it has no TensorRT engine")
        if p == "int8" and cache is None:
            raise UsageError("precision int8 with --backend tensorrt needs --cache")
        engine = out_dir / f"{prepared.path.stem}.{p}.engine"
        res = build_engine(
            prepared.path,
            output=engine,
            options=replace(trt_options, precision=p),
            cache=cache if p == "int8" else None,
        )
        engines[p] = res.engine
        build_info[p] = {"backend": "tensorrt", "engine": str(res.engine), "mode": res.mode, "trt_version": res.trt_version}
    result = run_eval(
        engines,
        dataset,
        batch_size=effective_batch_size(prepared.inputs, data.batch_size),
        warmup=options.warmup,
        progress=progress,
        classifier_output=options.classifier_output,
        runner_factory=lambda path: TrtRunner(path, warmup=warmup),
    )
    rep = make_report(prepared, dataset, result, cache=cache, build_info=build_info, command=command)
    if report is not None:
        save_report(rep, report)
    return rep
