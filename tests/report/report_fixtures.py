"""Builders of hand-made eval results and reports for quant.report tests (no model runs)."""

from __future__ import annotations

from collections.abc import Mapping

from quant.datasets.base import DataSummary
from quant.eval.evaluate import EvalResult, PrecisionResult
from quant.eval.metrics import ClassificationMetrics, FidelityMetrics, LatencyStats
from quant.report.schema import Report, calibration_section, data_section, model_section

N = 1000


def precision(
    name: str,
    *,
    ref: bool = False,
    top1: int | None = 762,
    top5: int | None = 930,
    agree: int | None = 990,
    sqnr: Mapping[str, float | None] | None = None,
    latency_ms: float | None = 10.0,
    batch_size: int = 32,
    classes: int = 1000,
) -> PrecisionResult:
    """A precision with ``top1``/``top5`` correct out of N labeled samples (None: no labels) and
    ``agree`` agreeing samples; ``sqnr`` maps outputs to dB (None = exact)."""
    labeled = 0 if top1 is None else N
    cls = ClassificationMetrics(
        output="logits",
        num_samples=N,
        num_classes=classes,
        num_labeled=labeled,
        top1_correct=top1 or 0,
        top5_correct=(top5 if labeled else 0) if classes >= 5 else None,
        num_compared=0 if ref or agree is None else N,
        agree_count=0 if ref or agree is None else agree,
    )
    fidelity: tuple[FidelityMetrics, ...] = ()
    if not ref:
        fidelity = tuple(
            FidelityMetrics(
                output=out,
                num_samples=N,
                num_elements=N * classes,
                cosine=1.0 if db is None else 0.999,
                mean_sample_cosine=1.0 if db is None else 0.998,
                min_sample_cosine=1.0 if db is None else 0.9,
                sqnr_db=db,
                exact=db is None,
                mean_rel_error=0.0 if db is None else 0.01,
                max_abs_error=0.0 if db is None else 0.2,
            )
            for out, db in (sqnr if sqnr is not None else {"logits": 30.0}).items()
        )
    latency = None
    if latency_ms is not None:
        latency = LatencyStats(
            batch_size=batch_size,
            num_batches=30,
            num_samples=30 * batch_size,
            mean_ms=latency_ms,
            median_ms=latency_ms,
            min_ms=latency_ms * 0.9,
            max_ms=latency_ms * 1.2,
            throughput=batch_size / latency_ms * 1e3,
        )
    return PrecisionResult(
        name=name, is_reference=ref, classification=cls, fidelity=fidelity, latency=latency
    )


def evaluation(*precisions: PrecisionResult, batch_size: int = 32, has_labels: bool = True) -> EvalResult:
    outputs: tuple[str, ...] = ("logits",)
    for p in precisions:
        outputs = tuple(dict.fromkeys(outputs + tuple(f.output for f in p.fidelity)))
    return EvalResult(
        reference=next(p.name for p in precisions if p.is_reference),
        precisions=tuple(precisions),
        num_samples=N,
        num_batches=32,
        batch_size=batch_size,
        warmup=1,
        has_labels=has_labels,
        classifier_output="logits",
        outputs=outputs,
    )


def default_evaluation() -> EvalResult:
    return evaluation(
        precision("fp32", ref=True),
        precision("fp16", top1=762, agree=1000, sqnr={"logits": None}, latency_ms=7.0),
        precision("int8", top1=757, top5=925, agree=980, sqnr={"logits": 31.5}, latency_ms=5.0),
    )


def make_report(
    ev: EvalResult | None = None,
    *,
    model_path: str = "models/resnet.onnx",
    graph_fp: str = "a" * 64,
    weights_fp: str = "b" * 64,
    data_source: str = "data/val",
    data_fp: str = "c" * 64,
    with_calibration: bool = True,
) -> Report:
    import numpy as np

    from quant.backends.base import TensorSpec

    calibration = None
    if with_calibration:
        calibration = calibration_section(
            method="entropy",
            params={"num_bins": 2048},
            num_samples=500,
            amax={"input": 2.64, "conv1": 11.5, "fc": 30.25},
            no_range=["shape_out"],
            cache="models/resnet.cache",
            trt_version=100300,
            trt_version_text="10.3.0",
            algorithm="EntropyCalibration2",
        )
    return Report.create(
        model=model_section(
            model_path,
            graph_fingerprint=graph_fp,
            weights_fingerprint=weights_fp,
            inputs=[TensorSpec("input", ("N", 3, 224, 224), np.dtype(np.float32))],
            outputs=[TensorSpec("logits", ("N", 1000), np.dtype(np.float32))],
        ),
        data=data_section(DataSummary(source=data_source, kind="image-folder", num_samples=N), data_fp),
        evaluation=ev if ev is not None else default_evaluation(),
        calibration=calibration,
        command=["quant", "eval", model_path],
    )
