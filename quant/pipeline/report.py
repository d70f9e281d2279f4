"""Report assembly from result objects (the report never runs models)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quant.errors import UsageError
from quant.pipeline.prepare import PreparedModel, model_section

if TYPE_CHECKING:
    from quant.datasets.base import Dataset
    from quant.pipeline.calibrate import CalibrateOutcome
    from quant.report.schema import Report


def make_report(
    prepared: PreparedModel,
    dataset: Dataset,
    result: Any,
    *,
    cache: str | Path | None,
    build_info: dict[str, Any],
    command: Sequence[str] | None,
    calibration: CalibrateOutcome | None = None,
    int8_arithmetic: dict[str, str] | None = None,
) -> Report:
    """Assemble a Report from result objects (the report never runs models); ``int8_arithmetic``
    says per INT8 precision which arithmetic produced it (quant.pipeline.arithmetic.describe)."""
    from quant import __version__
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
        if loaded.auto is not None:  # --method auto: per tensor its method, every candidate's score
            calib_section["auto"] = loaded.auto
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
        model=model_section(prepared),
        data=summary,
        calibration=calib_section,
        build=build_info or None,
        evaluation=result.to_dict(),
        environment=environment_info(int8_arithmetic),
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
