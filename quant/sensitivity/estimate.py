"""First-order sensitivity: every layer's damage (and gain) from two passes and a few gradients.

The measured ranking (:mod:`.measure`) runs two configurations per layer, each a (partial)
forward pass. Quantization noise is small, so the model is close to linear in it: with
``delta_k`` the change of layer ``k``'s output when its inputs and weight go through Q/DQ, and
``J_k`` the Jacobian of an output ``y`` with respect to that layer's output,

- quantizing ``k`` alone adds ``J_k delta_k`` to ``y``: **damage** ``||J_k delta_k||^2 / ||y||^2``;
- with every layer in INT8 the output error is ``e``; keeping ``k`` in float removes
  ``J_k delta_k`` from it, so **gain** = ``(||e||^2 - ||e - J_k delta_k||^2) / ||y||^2``
  ``= (2 <J_k^T e, delta_k> - ||J_k delta_k||^2) / ||y||^2``; to first order, with independent
  noises, ``<e, J_k delta_k> = ||J_k delta_k||^2`` and the gain equals the damage (the default).

Both need only products ``<J_k^T v, delta_k>``, and one backward pass gives ``J_k^T v`` for every
layer at once. Per batch: the FP32 model runs with autograd on (each quantized node also runs in
its Q/DQ form on the same inputs, which gives ``delta_k`` at FP32's operating point, as the
measured "INT8 alone" configuration has it), and ``||J_k delta_k||^2`` comes from probes: exactly
from the ``m`` basis vectors when an output has ``m <= EXACT_OUTPUT_MAX`` values per sample (a
classifier's scores), otherwise as the mean of ``(v^T J_k delta_k)^2`` over ``probes`` random
sign vectors ``v`` (Hutchinson's estimator: unbiased, relative error about ``sqrt(2 / (samples x
probes))`` per layer). Then the all-INT8 model runs (Q/DQ as float maths, the arithmetic of ONNX
Runtime's exact mode) for ``e`` and the all-INT8 measurement; with ``gains`` it runs with
autograd (a straight-through gradient where values are not clipped) and one backward pass with
``v = e`` gives every gain's cross term at the all-INT8 point. Everything is a sum over samples,
so batches add up. The cost does not grow with the number of layers. The ranking it gives is
checked against the full measurement on real pretrained models (scripts/bench_sensitivity.py,
docs/SENSITIVITY.md).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from quant.errors import DataError, QuantError
from quant.eval.metrics import find_classifier_output
from quant.graph.qdq import quantize_weight
from quant.sensitivity.results import (
    Measurement,
    MeasurementAccumulator,
    SensitivityResult,
    rank_layers,
    resolve_metric,
)
from quant.sensitivity.switchable import LayerPlan

if TYPE_CHECKING:
    import torch

    from quant.datasets.base import Dataset

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROBES",
    "EXACT_OUTPUT_MAX",
    "EstimateUnavailable",
    "estimate_sensitivity",
    "torch_available",
]


class EstimateUnavailable(QuantError):
    """The first-order estimate does not apply to this model, metric or install; the message
    says why (``--ranking auto`` then measures instead)."""

#: Random sign probes per output and batch for ``||J delta||^2`` (outputs with more values).
DEFAULT_PROBES = 2
#: Outputs with at most this many values per sample get the exact squared norm from basis probes.
EXACT_OUTPUT_MAX = 16


def torch_available() -> bool:
    """Whether PyTorch imports (the ``qat`` extra); the estimate needs it."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _fake_quant(x: torch.Tensor, scale: float) -> torch.Tensor:
    """QuantizeLinear -> DequantizeLinear (symmetric INT8: x / scale rounded half to even, clipped
    to [-128, 127], times scale) in float. With autograd on, the gradient passes where the value
    was not clipped (straight-through), zero where it was: the derivative of the clipped model."""
    import torch

    if not x.requires_grad:
        return torch.div(x, scale).round_().clamp_(-128.0, 127.0).mul_(scale)
    return _straight_through().apply(x, scale)


_STE: Any = None


def _straight_through() -> Any:
    """The autograd Function of :func:`_fake_quant` (made on first use: torch is imported lazily)."""
    global _STE
    if _STE is None:
        import torch

        class FakeQuant(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
                q = torch.div(x, scale).round_()
                ctx.save_for_backward((q >= -128.0) & (q <= 127.0))
                return q.clamp_(-128.0, 127.0).mul_(scale)

            @staticmethod
            def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
                (inside,) = ctx.saved_tensors
                return grad * inside, None

        _STE = FakeQuant
    return _STE


class _Quantizer:
    """Computes each quantized node in its Q/DQ form, records its output and its ``delta``."""

    def __init__(self, graph: Any, lp: LayerPlan) -> None:
        import torch

        self.graph = graph
        self.layer_of = dict(lp.layer_of)
        self.slots: dict[int, tuple[tuple[tuple[int, float], ...], tuple[int, torch.Tensor] | None]] = {}
        inits = {t.name: t for t in lp.converted.graph.initializer}
        from onnx import numpy_helper

        for np_ in lp.plan.nodes:
            acts = tuple((slot, float(np.float32(lp.plan.activations[t] / 127.0))) for slot, t in np_.activation_slots)
            weight = None
            if np_.weight_slot is not None:
                slot, wp = np_.weight_slot
                w = numpy_helper.to_array(inits[wp.tensor])
                q, scale = quantize_weight(w, wp.axis)
                if wp.axis is None:
                    deq = q.astype(np.float32) * scale
                else:
                    shape = [1] * w.ndim
                    shape[wp.axis % w.ndim] = -1
                    deq = q.astype(np.float32) * scale.reshape(shape)
                wt = torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32))
                if graph.channels_last and wt.dim() == 4:
                    wt = wt.contiguous(memory_format=torch.channels_last)
                weight = (slot, wt)
            self.slots[np_.index] = (acts, weight)
        self.records: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        #: True: nodes output their Q/DQ form (the all-INT8 model); False: their float form (FP32),
        #: and in both cases ``delta`` = Q/DQ form - float form on the same inputs.
        self.int8 = True
        #: False: just the Q/DQ form, no float form, no record (a plain all-INT8 pass).
        self.side = True

    def overrides(self) -> dict[int, Any]:
        return {i: self._node(i) for i in self.slots}

    def _node(self, index: int) -> Any:
        import torch

        acts, weight = self.slots[index]

        def run(node: Any, inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
            def quantized(values: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
                q = list(values)
                for slot, scale in acts:
                    x = values[slot]
                    assert x is not None
                    q[slot] = _fake_quant(x, scale)
                if weight is not None:
                    q[weight[0]] = weight[1]
                return q

            if not self.side:
                return self.graph.run_node(index, quantized(inputs))
            detached = [t.detach() if t is not None else None for t in inputs]
            if self.int8:
                outs = self.graph.run_node(index, quantized(inputs))
                with torch.no_grad():
                    other = self.graph.run_node(index, detached)
                    delta = outs[0].detach() - other[0]
            else:
                outs = self.graph.run_node(index, inputs)
                with torch.no_grad():
                    other = self.graph.run_node(index, quantized(detached))
                    delta = other[0] - outs[0].detach()
            self.records.append((self.layer_of[index], outs[0], delta))
            return outs

        return run


def _dot_per_sample(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """sum(a * b) over every axis but the first (the batch), as float64."""
    import torch

    if a.dim() == 0:
        return np.array([float(a * b)])
    p = a * b
    out = p.sum(dim=tuple(range(1, p.dim()))) if p.dim() > 1 else p
    return out.to(torch.float64).numpy()


def _forward(
    graph: Any, quantizer: _Quantizer, overrides: Mapping[int, Any], feeds: Mapping[str, torch.Tensor], *, int8: bool
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], np.ndarray, list[torch.Tensor]]:
    """The model's outputs in FP32 or all INT8 (autograd on), with each quantized node's output,
    layer index and delta."""
    quantizer.int8 = int8
    quantizer.records.clear()
    grad_feeds = {k: (v.clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in feeds.items()}
    out = graph.run(grad_feeds, override=overrides)
    records = [r for r in quantizer.records if r[1].requires_grad]
    quantizer.records.clear()
    ks = np.array([r[0] for r in records], dtype=np.int64)
    return out, [r[1] for r in records], ks, [r[2] for r in records]


def _products(
    y: torch.Tensor, v: torch.Tensor, ys: list[torch.Tensor], ks: np.ndarray, deltas: list[torch.Tensor],
    n_layers: int,
) -> np.ndarray:
    """(layers, samples): <J_k^T v, delta_k> from one backward pass, summed over each layer's nodes."""
    import torch

    grads = torch.autograd.grad(y, ys, grad_outputs=v, retain_graph=True, allow_unused=True)
    total = np.zeros((n_layers, y.shape[0] if y.dim() else 1))
    for k, g, d in zip(ks, grads, deltas, strict=True):
        if g is not None:
            total[k] += _dot_per_sample(g, d)
    return total


def _squared_norms(
    y: torch.Tensor, ys: list[torch.Tensor], ks: np.ndarray, deltas: list[torch.Tensor], n_layers: int,
    probes: int, generator: torch.Generator,
) -> tuple[np.ndarray, bool, int]:
    """(per layer: sum over samples of ||J_k delta_k||^2, exact?, backward passes): from the basis
    vectors when ``y`` has at most EXACT_OUTPUT_MAX values per sample, else sign probes."""
    import torch

    width = int(np.prod(y.shape[1:])) if y.dim() > 1 else 1
    total = np.zeros(n_layers)
    if width <= EXACT_OUTPUT_MAX:
        for j in range(width):
            v = torch.zeros_like(y).reshape(y.shape[0], -1)
            v[:, j] = 1.0
            total += (_products(y, v.reshape(y.shape), ys, ks, deltas, n_layers) ** 2).sum(axis=1)
        return total, True, width
    for _ in range(probes):
        v = (torch.randint(0, 2, y.shape, generator=generator) * 2 - 1).to(y.dtype)
        total += (_products(y, v, ys, ks, deltas, n_layers) ** 2).sum(axis=1) / probes
    return total, False, probes


def _linearity(error: Mapping[str, float], cross: Mapping[str, np.ndarray]) -> float | None:
    """min over outputs of <e, sum_k J_k delta_k> / ||e||^2 (None when no output has an error)."""
    values = [float(np.sum(cross[o])) / error[o] for o in error if error[o] > 0.0]
    return min(values) if values else None


def estimate_sensitivity(
    lp: LayerPlan,
    dataset: Dataset,
    *,
    batch_size: int,
    metric: str = "sqnr",
    classifier_output: str | None = None,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = False,
    gains: bool = False,
) -> SensitivityResult:
    """Rank ``lp``'s layers by first-order damage and gain (module docstring) on ``dataset``.

    The metric must resolve to ``sqnr`` (the estimate is of noise power; top-1 flips are not
    linear): DataError otherwise, and the caller measures instead. ``probes``: random probes per
    output and batch where an output has more than :data:`EXACT_OUTPUT_MAX` values per sample.

    ``gains`` False: no INT8 autograd pass; each gain is taken equal to its damage (what both
    are to first order when the layers' noises are independent), for about two thirds of the cost.

    *Linearity* checks the premise on the data: the all-INT8 error ``e`` is measured, and its
    first-order prediction is ``sum_k J_k delta_k``; ``linearity`` = ``<e, sum_k J_k delta_k> /
    ||e||^2`` (the weakest output) is 1 for a model that is linear in its quantization noise and
    falls towards 0 as INT8 pushes it into a non-linear regime (saturated softmax, flipped
    activations). It is recorded (``estimate.linearity``), not acted on: it speaks for the
    gains, which live at the all-INT8 point; the damages are single-layer perturbations of FP32,
    which stay small, and on real models their ranking held even where linearity was near 0
    (docs/SENSITIVITY.md).
    """
    if not torch_available():
        raise EstimateUnavailable(
            "the first-order estimate needs PyTorch (pip install 'quant[qat]'); or use --ranking measured"
        )
    import torch
    from tqdm import tqdm

    from quant.sensitivity.torch_graph import TorchGraph, UnsupportedOp

    try:
        graph = TorchGraph(lp.converted)
    except UnsupportedOp as exc:
        raise EstimateUnavailable(f"{exc}; use --ranking measured") from exc
    if threads is not None:
        torch.set_num_threads(threads)
    missing = [n for n in graph.input_names if n not in dataset.input_names]
    if missing:
        raise DataError(f"the data has no input named {', '.join(missing)} (it has {', '.join(dataset.input_names)})")
    outputs = list(graph.output_names)
    layers = lp.layers
    n_layers = len(layers)
    quantizer = _Quantizer(graph, lp)
    overrides = quantizer.overrides()
    generator = torch.Generator().manual_seed(seed)

    signal = {o: 0.0 for o in outputs}
    error = {o: 0.0 for o in outputs}
    cross = {o: np.zeros(n_layers) for o in outputs}  # sum <J_k^T e, delta_k>
    damage = {o: np.zeros(n_layers) for o in outputs}  # sum ||J_k delta_k||^2 (FP32 point)
    exact_outputs: set[str] = set()
    backward = 0
    samples = 0
    resolved = ""
    cls_name: str | None = None
    ref_acc: MeasurementAccumulator | None = None
    int8_acc: MeasurementAccumulator | None = None
    start = time.perf_counter()
    for index, batch in enumerate(
        tqdm(dataset.batches(batch_size), desc="sensitivity (first-order)", unit="batch", file=sys.stderr,
             disable=not progress)
    ):
        feeds = {k: torch.from_numpy(np.ascontiguousarray(batch.feed[k])) for k in graph.input_names}

        # FP32, autograd on: the reference, and every layer's damage ||J_k delta_k||^2 (J and
        # delta at FP32's operating point, as the measured "alone in INT8" configuration has them).
        ref, ys, ks, deltas = _forward(graph, quantizer, overrides, feeds, int8=False)
        ref_np = {o: ref[o].detach().numpy() for o in outputs}
        if index == 0:
            cls_name = find_classifier_output(ref_np, classifier_output)
            resolved = resolve_metric(metric, classifier_output=cls_name, has_labels=dataset.has_labels)
            if resolved != "sqnr":
                raise EstimateUnavailable(
                    f"the first-order estimate ranks by SQNR, and the metric here is '{resolved}'; "
                    "use --metric sqnr or --ranking measured"
                )
            ref_acc = MeasurementAccumulator(outputs, cls_name)
            int8_acc = MeasurementAccumulator(outputs, cls_name)
        assert ref_acc is not None and int8_acc is not None
        ref_acc.update(ref_np, ref_np, batch.labels)
        for o in outputs:
            y = ref[o]
            if not y.is_floating_point() or not y.requires_grad:
                continue
            r = y.detach().to(torch.float64)
            signal[o] += float((r * r).sum())
            norms, exact, count = _squared_norms(y, ys, ks, deltas, n_layers, probes, generator)
            damage[o] += norms
            backward += count
            if exact:
                exact_outputs.add(o)
        del ref, ys, deltas
        # All INT8: the output error e, and <J_k^T e, delta_k> for every gain. Without ``gains``,
        # a plain INT8 pass (no autograd, no float forms) for e and the all-INT8 measurement.
        if gains:
            out, ys, ks, deltas = _forward(graph, quantizer, overrides, feeds, int8=True)
        else:
            quantizer.side = False
            with torch.no_grad():
                out = graph.run(feeds, override=overrides)
            quantizer.side = True
            ys, ks, deltas = [], np.zeros(0, dtype=np.int64), []
        out_np = {o: out[o].detach().numpy() for o in outputs}
        int8_acc.update(out_np, ref_np, batch.labels)
        for o in outputs:
            y = out[o]
            if not y.is_floating_point():
                continue
            e = y.detach().to(torch.float64) - torch.from_numpy(ref_np[o]).to(torch.float64)
            error[o] += float((e * e).sum())
            if gains and y.requires_grad:
                cross[o] += _products(y, e.to(y.dtype), ys, ks, deltas, n_layers).sum(axis=1)
                backward += 1
        del out, ys, deltas
        quantizer.records.clear()
        samples += batch.size
    if ref_acc is None or int8_acc is None:
        raise DataError(
            f"data set '{dataset.summary().source}' yielded no samples; check the data path and --max-samples"
        )
    reference = ref_acc.result()
    all_int8 = int8_acc.result()

    def measurement(noise: float) -> Measurement:
        noise = max(float(noise), 0.0)
        return Measurement(
            num_samples=samples, top1=None, agreement=None,
            sqnr_db=None if noise == 0.0 else -10.0 * math.log10(noise), exact=noise == 0.0,
        )

    scored = [o for o in outputs if signal[o] > 0.0]
    alone, allbut = [], []
    for k in range(n_layers):
        d = [float(damage[o][k]) / signal[o] for o in scored]
        # Without gains: to first order with independent noises, <e, J_k delta_k> = ||J_k delta_k||^2,
        # so the gain equals the damage.
        c = [float(cross[o][k] if gains else damage[o][k]) for o in scored]
        rest = [max(error[o] - 2.0 * ck + float(damage[o][k]), 0.0) / signal[o] for o, ck in zip(scored, c, strict=True)]
        alone.append(measurement(max(d, default=0.0)))
        allbut.append(measurement(max(rest, default=0.0)))
    # The all-INT8 loss the ranking subtracts from is the same pass's, so gains are consistent.
    ranked = rank_layers(layers, alone, allbut, metric=resolved, reference=reference, all_int8=all_int8)
    seconds = time.perf_counter() - start
    log.info(
        "sensitivity (first-order): %d layers from %d samples, 2 forward + %d backward passes per batch "
        "on average, %.1f s", n_layers, samples, backward // max(1, index + 1), seconds,
    )
    return SensitivityResult(
        metric=resolved,
        classifier_output=cls_name,
        outputs=tuple(outputs),
        num_samples=samples,
        batch_size=batch_size,
        has_labels=reference.top1 is not None,
        reference=reference,
        all_int8=all_int8,
        layers=ranked,
        configurations=2,
        forward_passes=2 * samples,
        seconds=seconds,
        base_exclude=lp.base_exclude,
        segments=0,
        work_fraction=1.0,
        sampling="first-order",
        samples_available=len(dataset),
        confidence=None,
        estimate={
            "method": "first-order",
            "probes": probes,
            "exact_outputs": sorted(exact_outputs),
            "backward_passes": backward,
            "seed": seed,
            "gains": "first-order cross term at the all-INT8 point" if gains else "equal to the damage (first order)",
            "linearity": _linearity(error, cross) if gains else None,
        },
    )
