"""The public Python API: every CLI command is one function here.

    from quant import api
    from quant.config import DataOptions, CalibrationOptions

    outcome = api.calibrate("model.onnx", DataOptions("calib_images/"), cache="model.cache")
    api.build("model.onnx", cache="model.cache", output="model.int8.onnx")
    report = api.evaluate("model.onnx", DataOptions("val_images/", batch_size=32), cache="model.cache")

The functions orchestrate the pure core (graph rewrites, statistics maths) and the I/O layer;
they never print. Progress bars go to stderr when ``progress=True``; messages for the user are
logged through ``logging`` and returned in the outcome objects.

This module is the import surface only: each stage lives in its own module of
:mod:`quant.pipeline` (docs/DESIGN.md, "Pipeline module map"), and the names below are those
modules' functions and outcome classes, re-exported unchanged (same objects, so the same
signatures and docstrings). A new public function goes into its stage module and is listed here.
"""

from __future__ import annotations

from quant.pipeline.build import BuildOutcome, build, build_with_fallback
from quant.pipeline.calibrate import (
    CalibrateOutcome,
    MergeStatsOutcome,
    calibrate,
    calibrate_from_stats,
    merge_stats,
)
from quant.pipeline.distributed import calibrate_sharded, evaluate_sharded, sensitivity_sharded
from quant.pipeline.distributed import merge_report_files as merge_reports
from quant.pipeline.evaluate import evaluate
from quant.pipeline.layers import analyze_layers
from quant.pipeline.prepare import (
    DEMO,
    PreparedModel,
    data_file,
    effective_batch_size,
    open_data,
    prepare_model,
    resolve_model_path,
)
from quant.pipeline.quantize import build_int8_model, load_cache_for_model, precision_models
from quant.pipeline.report import make_report
from quant.pipeline.run import RunOutcome, run
from quant.pipeline.sensitivity import SensitivityOutcome, sensitivity
from quant.pipeline.staleness import data_manifest
from quant.pipeline.tensorrt import (
    build_tensorrt_engine,
    check_tensorrt,
    evaluate_tensorrt,
    inspect_tensorrt_network,
)

__all__ = [
    # models and data (quant.pipeline.prepare, .staleness)
    "DEMO",
    "PreparedModel",
    "resolve_model_path",
    "prepare_model",
    "effective_batch_size",
    "open_data",
    "data_file",
    "data_manifest",
    # calibrate (quant.pipeline.calibrate)
    "CalibrateOutcome",
    "calibrate",
    "calibrate_from_stats",
    "MergeStatsOutcome",
    "merge_stats",
    # models per precision (quant.pipeline.quantize)
    "load_cache_for_model",
    "build_int8_model",
    "precision_models",
    # build and the accuracy-budget fallback (quant.pipeline.build)
    "BuildOutcome",
    "build",
    "build_with_fallback",
    # sensitivity (quant.pipeline.sensitivity)
    "SensitivityOutcome",
    "sensitivity",
    # shards on an executor, merged exactly (quant.pipeline.distributed)
    "calibrate_sharded",
    "evaluate_sharded",
    "sensitivity_sharded",
    "merge_reports",
    # evaluate, report, per-layer analysis (quant.pipeline.evaluate, .report, .layers)
    "evaluate",
    "make_report",
    "analyze_layers",
    # everything (quant.pipeline.run)
    "RunOutcome",
    "run",
    # TensorRT (quant.pipeline.tensorrt)
    "build_tensorrt_engine",
    "check_tensorrt",
    "evaluate_tensorrt",
    "inspect_tensorrt_network",
]

