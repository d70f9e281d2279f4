"""The calibrate stage: ``quant calibrate`` (reuse a cache, recompute from saved statistics, or run
the model, cheapest first), ``calibrate_from_stats`` and ``merge_stats``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import CalibrationOptions, DataOptions
from quant.errors import CacheError, CalibrationError, UsageError
from quant.pipeline.prepare import PreparedModel, data_file, effective_batch_size, open_data, prepare_model
from quant.pipeline.staleness import data_manifest, fingerprint_changes, stale_reasons

if TYPE_CHECKING:
    from quant.cache.io import LoadedCache
    from quant.calibrators.auto import AutoRecord
    from quant.calibrators.result import CalibrationResult
    from quant.calibrators.stats import StatsCollector
    from quant.datasets.base import Dataset


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
    auto: dict[str, Any] | None = None  # the --method auto record (quant.calibrators.auto.AutoRecord)

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
            **({"auto": self.auto} if self.auto is not None else {}),
        }


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
    auto = options.method == "auto"
    config: Any = (
        AutoConfig(num_bins=options.num_bins, budget=options.auto_budget, seed=options.auto_seed)
        if auto
        else CalibConfig(method=options.method, percentile=options.percentile, num_bins=options.num_bins)
    )
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

    def outcome(
        result: CalibrationResult, message: str, action: str, stats: Path | None, side: Path,
        auto_record: dict[str, Any] | None = None,
    ) -> CalibrateOutcome:
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
            auto=auto_record,
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
                record = loaded.auto if auto else None
                return outcome(
                    reused, message, "reused", stats_file if stats_file.exists() else None, side,
                    record if isinstance(record, dict) else None,
                )
            prefix = f"cache '{cache_path}' not reused ({'; '.join(reasons)}); "
        # auto scores on samples that did not make the statistics; the saved statistics hold every
        # sample, so auto collects again (the held-out split's statistics are kept apart)
        stats, meta, why = (
            (None, None, None) if auto else _usable_stats(stats_file, prepared, data_fp.result, manifest, tensors, config)
        )
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
    if auto:
        result, collector, auto_rec = _auto_calibration(
            prepared, dataset, tensors, config, batch_size=batch_size, progress=progress,
            data_fingerprint=data_fp.result, scope=options.scope,
        )
        extra: dict[str, Any] = {"data_manifest": manifest, "auto": auto_rec.to_dict()}
        total_samples = result.num_samples
    else:
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
        extra = {"data_manifest": manifest}
        total_samples = result.num_samples
        auto_rec = None
    # The three files are one set: all are replaced, or (error, Ctrl-C) none; see commit_together.
    with commit_together():
        saved_stats = save_stats(
            stats_file,
            collector.stats(),
            {
                "num_samples": total_samples,
                "model_fingerprint": prepared.fingerprint.to_dict(),
                "data_fingerprint": result.data_fingerprint,
                "data_manifest": manifest,
                "scope": options.scope,
                "quant_version": result.quant_version,
            },
        )
        _cache, side = write_cache(cache_path, {**result.to_dict(), **extra}, trt_version=trt_version)
    summary = dataset.summary().to_dict()
    msg = f"{prefix}calibrated {len(result.amax)} tensors on {result.num_samples} samples with {options.method}"
    if auto_rec is not None:
        msg += _auto_message(auto_rec)
    if summary.get("num_skipped"):
        msg += f" ({summary['num_skipped']} bad images skipped)"
    return outcome(result, msg, "calibrated", saved_stats, side, extra.get("auto"))


@dataclass(frozen=True)
class AutoConfig:
    """``--method auto``'s parameters, shaped like CalibConfig where the reuse check reads it."""

    num_bins: int = 2048
    budget: float = 2.5
    seed: int = 0
    method: str = "auto"

    def params(self) -> dict[str, Any]:
        from quant.calibrators.auto import auto_params

        return auto_params(num_bins=self.num_bins, budget=self.budget, seed=self.seed)


def _fixed_batch(prepared: PreparedModel) -> int | None:
    fixed = {s.shape[0] for s in prepared.inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    return next(iter(fixed)) if len(fixed) == 1 else None


def _auto_search(
    prepared: PreparedModel,
    stats: Mapping[str, Any],
    scoring: Dataset,
    config: AutoConfig,
    *,
    batch_size: int,
    calibration_samples: int,
    scoring_data: str,
) -> tuple[dict[str, float | None], AutoRecord]:
    """Score the candidates on ``scoring`` and search per tensor (quant.calibrators.auto)."""
    from quant.calibrators.auto import (
        CANDIDATES,
        candidate_ranges,
        choose_amax,
        collect_feeds,
        score_and_search,
    )

    record = score_and_search(
        prepared.clean, [stats], [collect_feeds(scoring, batch_size)], budget=config.budget, seed=config.seed,
        calibration_samples=calibration_samples, statistics_samples=calibration_samples, scoring_data=scoring_data,
    )
    return choose_amax(candidate_ranges(stats, CANDIDATES), record.choice, record.best_single), record


def _auto_calibration(
    prepared: PreparedModel,
    dataset: Dataset,
    tensors: Sequence[str],
    config: AutoConfig,
    *,
    batch_size: int,
    progress: bool,
    data_fingerprint: Callable[[], str],
    scope: str,
) -> tuple[CalibrationResult, StatsCollector, AutoRecord]:
    """``--method auto`` on ``dataset`` (:func:`quant.calibrators.auto.auto_calibrate`)."""
    from quant.calibrators.auto import auto_calibrate
    from quant.calibrators.result import CalibrationResult

    amax, collector, num_samples, record = auto_calibrate(
        prepared.clean, dataset, tensors, batch_size=batch_size, num_bins=config.num_bins, budget=config.budget,
        seed=config.seed, fixed_batch=_fixed_batch(prepared), progress=progress, model_name=prepared.name,
    )
    result = CalibrationResult.from_ranges(
        amax,
        method="auto",
        params=config.params(),
        num_samples=num_samples,
        model_fingerprint=prepared.fingerprint.to_dict(),
        data_fingerprint=data_fingerprint(),
        tensors_scope=scope,
    )
    return result, collector, record


def _auto_from_stats(
    prepared: PreparedModel,
    stats: Mapping[str, Any],
    config: AutoConfig,
    data: DataOptions | None,
    *,
    source: Path,
    stats_data: set[str],
    num_samples: int,
) -> tuple[dict[str, float | None], AutoRecord]:
    """``--from-stats --method auto``: score on ``data``, which must be other samples."""
    from quant.calibrators.auto import MAX_HELD_OUT, SubsetDataset, split_held_out

    if data is None:
        raise UsageError(
            "--method auto with --from-stats needs --data: samples to score the methods with, other than "
            "those that made the statistics (e.g. a shard left out of the merge)"
        )
    dataset = open_data(prepared, data)
    if dataset.fingerprint() in stats_data:
        raise UsageError(
            f"--data '{data.path}' made the statistics '{source}': --method auto must score on other samples; "
            "give a held-out set, or run 'quant calibrate MODEL --data ... --method auto', which holds samples aside itself"
        )
    scoring: Dataset = dataset
    if len(dataset) > MAX_HELD_OUT:
        _rest, chosen = split_held_out(len(dataset), MAX_HELD_OUT, seed=config.seed)
        scoring = SubsetDataset(dataset, chosen, tag="auto scoring")
    batch_size = effective_batch_size(prepared.inputs, data.batch_size)
    return _auto_search(
        prepared, stats, scoring, config, batch_size=batch_size, calibration_samples=num_samples,
        scoring_data="separate",
    )


def _folds_text(record: AutoRecord) -> str:
    folds = int(record.cost.get("folds") or 1)
    return f" in {folds} folds, each scored with the others' statistics" if folds > 1 else ""


def _auto_message(record: AutoRecord) -> str:
    counts = ", ".join(f"{lab} {n}" for lab, n in record.method_counts().items())
    best = record.scores[record.best_single]
    # which figure decided (quant.calibrators.auto.SCORE_RULE; pooled SQNR by default)
    by_samples = (record.rule or {}).get("rule") == "samples"
    mean = (
        f", mean of per-sample SQNR {record.score.sample_db:.2f} dB "
        f"({'what decides' if by_samples else 'recorded, pooled SQNR decides'}; best single {best.sample_db:.2f})"
        if record.score.sample_db is not None and best.sample_db is not None else ""
    )
    from quant.cache.inspect import best_share

    firm = ""
    if (got := best_share(record.firmness, record.best_single)) is not None:
        firm = (f", best in {100.0 * got[0]:.0f} % of bootstrap resamples of the scored samples"
                + (": uncertain, more calibration data would settle it" if got[1] else ""))
    return (
        f"; auto chose per tensor ({counts}): SQNR {record.score.sqnr_db:.2f} dB on {record.held_out} held-out "
        f"samples{_folds_text(record)} (best single method {record.best_single} {best.sqnr_db:.2f} dB{firm}){mean}, "
        f"{record.evaluations} evaluations, {record.cost.get('passes', 0):.2f}x a forward pass over the data"
    )


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
        reasons = stale_reasons(loaded, prepared, data_fp, manifest)
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
        changes = fingerprint_changes(meta, prepared, data_fp(), manifest)
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
    data: DataOptions | None = None,
) -> CalibrateOutcome:
    """Write ``cache`` (+ sidecar, + a copy of the statistics next to it) from a statistics file,
    e.g. one made by :func:`merge_stats`, without data and without running the model.

    ``method="auto"`` needs ``data``: samples to score the methods with, which must not be the
    samples that made the statistics (refused when the data's fingerprint is the statistics' or
    one of their shards'); at most 32 of them (a seeded choice) are used.

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
    changes = fingerprint_changes(meta, prepared, None)
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
    shards = meta.get("data_shards") or [meta["data_fingerprint"]]
    extra: dict[str, Any] = {"data_manifest": meta.get("data_manifest"), "data_shards": list(shards)}
    record: AutoRecord | None = None
    if options.method == "auto":
        auto_config = AutoConfig(num_bins=int(meta["num_bins"]), budget=options.auto_budget, seed=options.auto_seed)
        amax, record = _auto_from_stats(
            prepared, {t: all_stats[t] for t in tensors}, auto_config, data, source=source,
            stats_data={str(meta["data_fingerprint"]), *map(str, shards)}, num_samples=int(meta["num_samples"]),
        )
        extra["auto"] = record.to_dict()
        method, params = "auto", auto_config.params()
    else:
        if data is not None:
            raise UsageError(
                "--data with --from-stats is only for --method auto (its scoring samples); the statistics replace the data"
            )
        config = CalibConfig(method=options.method, percentile=options.percentile, num_bins=int(meta["num_bins"]))
        amax = compute_amax({t: all_stats[t] for t in tensors}, config)
        method, params = config.method, config.params()
    result = CalibrationResult.from_ranges(
        amax,
        method=method,
        params=params,
        num_samples=int(meta["num_samples"]),
        model_fingerprint=prepared.fingerprint.to_dict(),
        data_fingerprint=str(meta["data_fingerprint"]),
        tensors_scope=options.scope,
    )
    beside = stats_path(cache_path)
    with commit_together():  # cache, sidecar and the statistics beside them: all or none
        _cache, side = write_cache(cache_path, {**result.to_dict(), **extra}, trt_version=trt_version)
        if beside.resolve() != source.resolve():
            atomic_write(beside, source.read_bytes())
    shard_text = f", {len(shards)} data shards" if len(shards) > 1 else ""
    if record is None:
        message = (
            f"wrote {len(result.amax)} ranges with {method} from statistics '{source}' "
            f"({result.num_samples} samples{shard_text}); no data was read and the model was not run"
        )
    else:
        message = (
            f"wrote {len(result.amax)} ranges with auto from statistics '{source}' "
            f"({result.num_samples} samples{shard_text}), scored on {record.held_out} samples of --data"
            + _auto_message(record)
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
        auto=None if record is None else record.to_dict(),
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
