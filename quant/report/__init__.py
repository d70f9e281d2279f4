"""quant.report: the versioned report (:mod:`~quant.report.schema`), its text table
(:mod:`~quant.report.table`) and baseline comparison (:mod:`~quant.report.compare`).
Importing this package does not import ONNX Runtime or matplotlib."""

from quant.report.compare import Comparison, ComparisonRow, Thresholds, compare_reports, render_comparison
from quant.report.schema import (
    SCHEMA_VERSION,
    Report,
    amax_summary,
    environment_info,
    load_report,
    save_report,
)
from quant.report.table import render_table

__all__ = [
    "SCHEMA_VERSION",
    "Comparison",
    "ComparisonRow",
    "Report",
    "Thresholds",
    "amax_summary",
    "compare_reports",
    "environment_info",
    "load_report",
    "render_comparison",
    "render_table",
    "save_report",
]
