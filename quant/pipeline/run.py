"""``quant run``: calibrate -> build INT8 and FP16 -> evaluate -> report, all files into one
directory. The top of the pipeline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.config import BuildOptions, CalibrationOptions, DataOptions, EvalOptions
from quant.errors import UsageError
from quant.pipeline.calibrate import CalibrateOutcome, calibrate
from quant.pipeline.evaluate import evaluate
from quant.pipeline.prepare import DEMO, data_file, prepare_model
from quant.pipeline.quantize import precision_models

if TYPE_CHECKING:
    from quant.report.schema import Report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    out_dir: Path
    calibration: CalibrateOutcome
    int8_model: Path
    fp16_model: Path | None
    report: Report
    report_path: Path
    files: tuple[Path, ...]
    # TensorRT's view of the INT8 model when the TensorRT check ran (a NetworkView), else None.
    trt_check: Any = None


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
    check_trt: bool | None = None,
) -> RunOutcome:
    """calibrate -> build INT8 and FP16 -> evaluate -> report, all files into ``out``.

    With no model and no data, runs the embedded demo (MNIST LeNet, its calibration and
    evaluation splits). Without ``calibration`` the method is ``auto``. ``check_trt``: verify the INT8 model with NVIDIA's real ONNX parser and
    builder right after it is written (:func:`quant.backends.tensorrt.check.check_with_tensorrt`;
    TensorRT refusing it stops the run with TensorRT's message). None (default): when TensorRT-RTX
    is installed (it needs no GPU), skipping with a warning a model whose dynamic H/W has no size.
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
    # quant run picks the method per tensor by measured fidelity (docs/CALIBRATION.md); quant
    # calibrate keeps TensorRT's entropy default, which a TensorRT user expects their cache to match
    calibration = calibration or CalibrationOptions(method="auto")
    build_options = build_options or BuildOptions()
    eval_options = eval_options or EvalOptions()
    out_dir = ensure_dir(out)
    prepared = prepare_model(model)
    stem = prepared.path.stem
    cache_path = out_dir / f"{stem}.cache"
    from quant._io import check_output_not_input

    for name in (f"{stem}.int8.onnx", f"{stem}.fp16.onnx", f"{stem}.int8-ort.onnx", "report.json", "report.html"):
        check_output_not_input(out_dir / name, prepared.path, data_file(calib_data), data_file(eval_data))
    if calibration.method == "auto":
        from dataclasses import replace

        from quant.calibrators.auto import MIN_SAMPLES
        from quant.pipeline.prepare import open_data

        available = len(open_data(prepared, calib_data))
        if available < MIN_SAMPLES:  # quant calibrate --method auto refuses; the whole pipeline goes on
            log.warning(
                "--method auto needs at least %d calibration samples to hold some aside for scoring (got %d); "
                "calibrating with entropy",
                MIN_SAMPLES,
                available,
            )
            calibration = replace(calibration, method="entropy")
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
    trt_check = _check_with_tensorrt(int8_path, check_trt)
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
        trt_check=trt_check,
    )


def _check_with_tensorrt(int8_path: Path, check_trt: bool | None) -> Any:
    """The TensorRT acceptance check of ``quant run`` (see :func:`run`); None when it did not run."""
    from quant.backends.tensorrt import tensorrt_rtx_available
    from quant.backends.tensorrt.check import check_with_tensorrt

    if check_trt is False or (check_trt is None and not tensorrt_rtx_available()):
        return None
    try:
        return check_with_tensorrt(int8_path, flavor="tensorrt-rtx" if check_trt is None else None)
    except UsageError as exc:  # e.g. dynamic H/W without a size: not the model's fault
        if check_trt:
            raise
        log.warning("TensorRT check skipped: %s (run 'quant build ... --check-trt --shapes ...')", exc)
        return None
