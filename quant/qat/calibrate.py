"""Initialise the activation ranges of a quantized PyTorch model.

Two sources, which can be combined (cache first, calibration for what the cache lacks):

- :func:`calibrate_model` runs calibration batches through the model *unquantized*, feeds the
  input of every wrapper to quant's streaming :class:`~quant.calibrators.stats.StatsCollector`
  (one histogram per quantizer, nothing kept across batches) and reduces the histograms with
  :func:`~quant.calibrators.methods.compute_amax`: the same code, methods and parameters as
  post-training calibration (entropy, minmax, percentile, mse).
- :func:`load_amax` takes amax values keyed by ONNX tensor names (from a quant / TensorRT
  calibration cache) and a map from quantizer name to ONNX tensor name
  (:func:`quant.qat.export.onnx_tensor_names` derives it for any model; models rebuilt from ONNX
  by :mod:`quant.qat.onnx_loader` carry it).

Weights need no calibration: their per-channel amax is the channel's max |w| (see modules.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from quant.errors import CacheError, CalibrationError, UsageError
from quant.qat.modules import ActQuantizer, QuantModule, quantizer_inputs
from quant.qat.swap import quant_modules, quantizers

log = logging.getLogger(__name__)

ModelInputs = torch.Tensor | tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class AmaxInit:
    """What initialised the activation ranges: per quantizer its amax and where it came from."""

    amax: dict[str, float | None]
    source: dict[str, str]  # quantizer -> "calibration:<method>" | "cache:<tensor>" | "none"
    num_samples: int = 0
    unmatched: tuple[str, ...] = ()
    disabled: tuple[str, ...] = field(default=())
    auto: dict[str, Any] | None = None  # method="auto": quant.calibrators.auto.AutoRecord.to_dict()

    def to_dict(self) -> dict[str, object]:
        return {
            "amax": dict(self.amax),
            "source": dict(self.source),
            "num_samples": self.num_samples,
            "unmatched": list(self.unmatched),
            "disabled": list(self.disabled),
            **({"auto": self.auto} if self.auto is not None else {}),
        }


@contextlib.contextmanager
def quantization_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as the float model: activation and weight fake quantization switched off."""
    saved_q = {q: q.enabled for q in quantizers(model).values()}
    saved_w = {m: m.weight_quant_enabled for m in model.modules() if isinstance(m, QuantModule)}
    try:
        for q in saved_q:
            q.enabled = False
        for m in saved_w:
            m.weight_quant_enabled = False
        yield
    finally:
        for q, enabled in saved_q.items():
            q.enabled = enabled
        for m, enabled in saved_w.items():
            m.weight_quant_enabled = enabled


def _as_args(inputs: ModelInputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def calibrate_model(
    model: nn.Module,
    batches: Iterable[ModelInputs],
    *,
    method: str = "entropy",
    percentile: float = 99.99,
    num_bins: int = 2048,
    max_batches: int | None = None,
    only: Iterable[str] | None = None,
    progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
    auto_budget: float = 2.5,
    seed: int = 0,
) -> AmaxInit:
    """Calibrate the activation quantizers of a quantized ``model`` and set their amax.

    ``method="auto"`` picks each quantizer's method as ``quant calibrate --method auto`` does
    (:mod:`quant.calibrators.auto`): a seeded 1/8 of the samples (8 to 32) is held aside, the
    candidates' ranges from the other samples' statistics are scored by the SQNR of the model's
    outputs with fake quantization (Q/DQ as float maths, TensorRT's arithmetic up to float
    rounding) against the float model on the held-out samples, and each quantizer's chosen method is
    refitted on every sample's statistics; the record is :attr:`AmaxInit.auto`.

    ``batches`` yields model inputs (a tensor, or a tuple of tensors passed positionally), on
    any device (moved to the model's). ``only`` restricts calibration to those quantizer names
    (the others keep their amax). A quantizer whose method gives no range (its input was
    always zero) is disabled, with a warning: its module then reads float input. Raises
    CalibrationError for no data or non-finite activations, UsageError for an unknown method.
    """
    from quant.calibrators.methods import CalibConfig, compute_amax
    from quant.calibrators.stats import StatsCollector

    auto = method == "auto"
    try:
        config = CalibConfig(method="entropy" if auto else method, percentile=percentile, num_bins=num_bins)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"calibration method {method!r}: {exc}") from exc
    all_q = quantizers(model)
    if not all_q:
        raise UsageError("model has no quantizers; call quant.qat.quantize_model() first")
    targets = set(all_q) if only is None else set(only)
    unknown = sorted(targets - set(all_q))
    if unknown:
        raise UsageError(f"no quantizer named {unknown[0]!r}; known: {', '.join(sorted(all_q)[:8])} ...")
    collector = StatsCollector(num_bins=num_bins)
    held_collector = StatsCollector(num_bins=num_bins)
    sink = [collector]  # where the hooks put statistics: the held-out samples' go apart for auto
    held_inputs: list[tuple[torch.Tensor, ...]] = []
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x51A7])
    device = _model_device(model)

    def make_hook(module_name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            for qname, value in quantizer_inputs(module, args).items():
                full = f"{module_name}.{qname}"
                if full not in targets or not isinstance(value, torch.Tensor):
                    continue
                array = value.detach().float().cpu().numpy()
                if not torch.isfinite(value).all():
                    raise CalibrationError(
                        f"calibration: input of quantizer '{full}' has NaN or inf values; "
                        "check the model's weights and the calibration data's preprocessing"
                    )
                sink[0].collect(full, array)

        return hook

    handles = [mod.register_forward_pre_hook(make_hook(name)) for name, mod in quant_modules(model)]
    was_training = model.training
    num_samples = 0
    try:
        model.eval()
        iterable: Iterable[Any] = batches if progress is None else progress(batches)
        with torch.no_grad(), quantization_disabled(model):
            for i, inputs in enumerate(iterable):
                if max_batches is not None and i >= max_batches:
                    break
                args = tuple(t.to(device) for t in _as_args(inputs))
                n = int(args[0].shape[0]) if args[0].dim() else 1
                num_samples += n
                if auto and args[0].dim():
                    held = torch.from_numpy(rng.random(n) < _HELD_OUT_SHARE).to(device)
                    room = _MAX_HELD_OUT - sum(int(h[0].shape[0]) for h in held_inputs)
                    held &= torch.cumsum(held.long(), 0) <= room
                    if bool(held.any()):
                        aside = tuple(t[held] for t in args)
                        held_inputs.append(tuple(t.detach().clone() for t in aside))
                        sink[0] = held_collector
                        model(*aside)
                        sink[0] = collector
                        args = tuple(t[~held] for t in args)
                        if int(args[0].shape[0]) == 0:
                            continue
                model(*args)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if num_samples == 0:
        raise CalibrationError("calibration got no batches; give calibration data with at least one sample")
    stats = collector.stats()
    missing = sorted(targets - set(stats))
    if missing:
        raise CalibrationError(
            f"quantizer '{missing[0]}' never saw an input during calibration ({len(missing)} such); "
            "is that module unused in forward()? exclude it from quantization"
        )
    record: dict[str, Any] | None = None
    if auto:
        computed, record = _auto_amax(
            model, all_q, sorted(targets, key=list(all_q).index), collector, held_collector, held_inputs,
            num_samples=num_samples, budget=auto_budget, seed=seed,
        )
    else:
        computed = compute_amax({k: stats[k] for k in targets}, config)
    amax: dict[str, float | None] = {}
    source: dict[str, str] = {}
    disabled: list[str] = []
    for name in sorted(targets):
        value = computed.get(name)
        q = all_q[name]
        if value is None or value <= 0:
            log.warning("quantizer '%s': calibration found no range (input always zero); leaving it unquantized", name)
            q.enabled = False
            disabled.append(name)
            amax[name] = None
            source[name] = "none"
            continue
        q.set_amax(float(value))
        q.enabled = True
        amax[name] = float(q.amax.item())
        source[name] = f"calibration:{method}" if record is None else f"calibration:auto:{record['choice'][name]}"
    if disabled:
        _float_modules_with_disabled(model, disabled)
    log.info("calibrated %d quantizers on %d samples (%s)", len(amax), num_samples, method)
    return AmaxInit(amax=amax, source=source, num_samples=num_samples, disabled=tuple(disabled), auto=record)


_HELD_OUT_SHARE = 0.125
_MAX_HELD_OUT = 32


def _per_sample_parts(
    reference: Sequence[Sequence[torch.Tensor]], outs: Sequence[Sequence[torch.Tensor]],
    held_inputs: Sequence[tuple[torch.Tensor, ...]],
) -> tuple[np.ndarray, np.ndarray] | None:
    """Per held-out sample (rows) and output (columns): sum(ref^2) and sum(err^2), as the ONNX
    scorer records them (for auto's bootstrap firmness); None where an output has no per-sample
    first dimension."""
    sig_rows: list[list[float]] = []
    err_rows: list[list[float]] = []
    for ref, out, args in zip(reference, outs, held_inputs, strict=True):
        b = int(args[0].shape[0])
        if any(r.dim() == 0 or int(r.shape[0]) != b for r in ref):
            return None
        sig = torch.stack([(r.double() ** 2).reshape(b, -1).sum(1) for r in ref], dim=1)
        err = torch.stack([((o.double() - r.double()) ** 2).reshape(b, -1).sum(1) for o, r in zip(out, ref, strict=True)],
                          dim=1)
        sig_rows.extend(sig.tolist())
        err_rows.extend(err.tolist())
    return np.asarray(sig_rows, dtype=np.float64), np.asarray(err_rows, dtype=np.float64)


def _auto_amax(
    model: nn.Module,
    all_q: Mapping[str, ActQuantizer],
    targets: Sequence[str],
    collector: Any,
    held_collector: Any,
    held_inputs: Sequence[tuple[torch.Tensor, ...]],
    *,
    num_samples: int,
    budget: float,
    seed: int,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """The auto search over the quantizers (see :func:`calibrate_model`)."""
    import time

    from quant.calibrators.auto import (
        CANDIDATES,
        MIN_HELD_OUT,
        AutoRecord,
        Score,
        candidate_ranges,
        choose_amax,
        plan_search,
        search,
    )

    held = sum(int(h[0].shape[0]) for h in held_inputs)
    if held < 1 or held >= num_samples:
        raise CalibrationError(
            f"calibration method 'auto' holds each sample aside with probability 1/8 (at most {_MAX_HELD_OUT}) to "
            f"score the methods and held {held} of {num_samples}; give more calibration samples (at least "
            f"{8 * MIN_HELD_OUT} recommended) or pick a method"
        )
    start = time.perf_counter()
    stats = collector.stats()
    table = candidate_ranges({k: stats[k] for k in targets}, CANDIDATES)
    with torch.no_grad(), quantization_disabled(model):
        reference = [_flat_outputs(model(*args)) for args in held_inputs]
    forwards = held

    def score(amax: Mapping[str, float]) -> Score:
        nonlocal forwards
        for name, value in amax.items():
            all_q[name].set_amax(float(value))
            all_q[name].enabled = True
        signal = noise = 0.0
        worst = math.inf
        with torch.no_grad():
            outs = [_flat_outputs(model(*args)) for args in held_inputs]
        forwards += held
        for k in range(len(reference[0])):
            signal = sum(float(torch.sum(r[k].double() ** 2)) for r in reference)
            noise = sum(float(torch.sum((o[k].double() - r[k].double()) ** 2)) for o, r in zip(outs, reference, strict=True))
            worst = min(worst, math.inf if noise == 0 else -math.inf if signal == 0 else 10 * math.log10(signal / noise))
        r0 = torch.cat([r[0].reshape(r[0].shape[0], -1) for r in reference])
        o0 = torch.cat([o[0].reshape(o[0].shape[0], -1) for o in outs])
        agree = 100.0 * float((r0.argmax(1) == o0.argmax(1)).double().mean()) if r0.shape[1] > 1 else None
        return Score(sqnr_db=worst, agreement=agree, parts=_per_sample_parts(reference, outs, held_inputs))

    was_training = model.training
    model.eval()
    try:
        plan = plan_search(num_tensors=len(targets), num_candidates=len(CANDIDATES),
                           calibration_samples=num_samples, held_out=held, budget=budget)
        found = search(table, targets, score, plan=plan)
    finally:
        model.train(was_training)
    collector.merge(held_collector)
    full = collector.stats()
    choice = {t: found.choice.get(t, found.best_single) for t in targets}
    amax = choose_amax(candidate_ranges({k: full[k] for k in targets}, CANDIDATES), choice, found.best_single)
    record = AutoRecord.from_search(
        found, targets, plan=plan, held_out=held, statistics_samples=num_samples - held, seed=seed,
        seconds=time.perf_counter() - start,
        cost={"sample_forwards": forwards, "calibration_samples": num_samples,
              "passes": round(forwards / num_samples, 3)},
    )
    log.info("auto: %s; best single %s", ", ".join(f"{k} {v}" for k, v in record.method_counts().items()), found.best_single)
    return amax, record.to_dict()


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    """A model's output(s) as a list of float tensors (a tensor, or a tuple / list / dict of them)."""
    if isinstance(out, torch.Tensor):
        return [out.detach().float()]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _float_modules_with_disabled(model: nn.Module, disabled: Iterable[str]) -> None:
    """A wrapper with a disabled input quantizer runs entirely in float: its weight and its other
    inputs are not quantized either (otherwise the export has Q/DQ pairs that no INT8 layer uses)."""
    gone = set(disabled)
    for name, mod in quant_modules(model):
        qs = mod.quantizers()  # type: ignore[operator]
        if not any(f"{name}.{q}" in gone for q in qs):
            continue
        for q in qs.values():
            q.enabled = False
        if isinstance(mod, QuantModule):
            mod.weight_quant_enabled = False
        log.warning("module '%s' stays in float: a quantizer of its inputs has no range", name)


def load_amax(
    model: nn.Module,
    cache_amax: Mapping[str, float],
    tensor_names: Mapping[str, str | Sequence[str]],
    *,
    cache_name: str = "cache",
) -> AmaxInit:
    """Set quantizer amax from ``cache_amax`` (ONNX tensor name -> amax) through ``tensor_names``
    (quantizer name -> ONNX tensor name, or candidate names tried in order). Quantizers without
    a usable entry are listed in ``unmatched`` and keep their current amax; raises CacheError
    when nothing matches at all.
    """
    all_q: dict[str, ActQuantizer] = quantizers(model)
    amax: dict[str, float | None] = {}
    source: dict[str, str] = {}
    unmatched: list[str] = []
    for name, q in sorted(all_q.items()):
        candidates = tensor_names.get(name, ())
        if isinstance(candidates, str):
            candidates = (candidates,)
        tensor = next((t for t in candidates if t in cache_amax), None)
        value = cache_amax.get(tensor) if tensor is not None else None
        if tensor is None or value is None:
            unmatched.append(name)
            continue
        if not value > 0:
            unmatched.append(name)
            log.warning("%s: tensor '%s' has amax %r; calibrating quantizer '%s' instead", cache_name, tensor, value, name)
            continue
        q.set_amax(float(value))
        q.enabled = True
        amax[name] = float(q.amax.item())
        source[name] = f"cache:{tensor}"
    if not amax:
        first = next(iter(tensor_names.values()), None)
        example = first if isinstance(first, str) or first is None else (first[0] if first else None)
        raise CacheError(
            f"{cache_name}: none of the model's {len(all_q)} quantizer inputs is in the cache "
            f"(first expected tensor: {example!r}); was it made for another model or another ONNX export? "
            "calibrate instead (omit the cache)"
        )
    return AmaxInit(amax=amax, source=source, unmatched=tuple(unmatched))


def merge_init(first: AmaxInit, second: AmaxInit) -> AmaxInit:
    """Combine a cache initialisation with a calibration of its unmatched quantizers."""
    amax = {**first.amax, **second.amax}
    source = {**first.source, **second.source}
    return AmaxInit(
        amax=amax,
        source=source,
        num_samples=first.num_samples + second.num_samples,
        unmatched=first.unmatched,
        disabled=tuple(sorted(set(first.disabled) | set(second.disabled))),
    )


def check_calibrated(model: nn.Module) -> None:
    """Raise CalibrationError naming the first enabled quantizer that has no amax."""
    for name, q in quantizers(model).items():
        if q.enabled and not q.is_calibrated:
            raise CalibrationError(
                f"quantizer '{name}' has no amax; calibrate the model or load a cache covering it"
            )
