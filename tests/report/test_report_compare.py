"""quant.report.compare: statuses, budgets (incl. the exact-budget edge), errors and rendering."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from report_fixtures import evaluation, make_report, precision

from quant.errors import ReportError, UsageError
from quant.report import Report
from quant.report.compare import (
    EPSILON,
    Comparison,
    ComparisonRow,
    Thresholds,
    compare_reports,
    render_comparison,
)


def _row(c: Comparison, prec: str, metric: str) -> ComparisonRow:
    matches = [r for r in c.rows if r.precision == prec and r.metric == metric]
    assert len(matches) == 1, (prec, metric, c.rows)
    return matches[0]


def _report(int8_top1: int = 757, **int8: Any) -> Report:
    return make_report(
        evaluation(
            precision("fp32", ref=True),
            precision("int8", top1=int8_top1, **int8),
        )
    )


def test_identical_reports_are_ok() -> None:
    report = make_report()
    c = compare_reports(report, report)
    assert c.ok and not c.regressions
    assert {r.status for r in c.rows} == {"ok"}
    assert [(r.precision, r.metric) for r in c.rows[:4]] == [
        ("fp32", "top1"),
        ("fp32", "top5"),
        ("fp32", "latency_ms"),
        ("fp16", "top1"),
    ]
    assert _row(c, "fp16", "sqnr:logits").baseline == math.inf
    assert _row(c, "fp16", "sqnr:logits").delta == 0.0


def test_drop_of_exactly_the_budget_is_ok() -> None:
    base = make_report(evaluation(precision("fp32", ref=True, top1=644)))
    cur = make_report(evaluation(precision("fp32", ref=True, top1=639)))
    c = compare_reports(base, cur, Thresholds(max_drop=0.5))
    row = _row(c, "fp32", "top1")
    # 64.4 - 63.9 computes as 0.5000000000000071, not 0.5: the epsilon is what makes this pass.
    assert row.baseline is not None and row.current is not None
    assert row.baseline - row.current > 0.5
    assert row.baseline - row.current - 0.5 < EPSILON
    assert row.status == "ok" and c.ok
    assert row.limit == pytest.approx(63.9)
    assert row.delta == pytest.approx(-0.5)


def test_drop_just_over_the_budget_is_a_regression() -> None:
    base = make_report(evaluation(precision("fp32", ref=True, top1=644)))
    cur = make_report(evaluation(precision("fp32", ref=True, top1=638)))
    c = compare_reports(base, cur, Thresholds(max_drop=0.5))
    assert _row(c, "fp32", "top1").status == "regression"
    assert not c.ok and c.regressions == (_row(c, "fp32", "top1"),)


def test_relative_drop_budget() -> None:
    base = make_report(evaluation(precision("fp32", ref=True, top1=800)))
    cur = make_report(evaluation(precision("fp32", ref=True, top1=792)))  # 1 % relative, 0.8 points
    th = Thresholds(max_drop=None, max_relative_drop=0.01)
    row = _row(compare_reports(base, cur, th), "fp32", "top1")
    assert row.status == "ok" and row.limit == pytest.approx(79.2)
    cur2 = make_report(evaluation(precision("fp32", ref=True, top1=791)))
    assert _row(compare_reports(base, cur2, th), "fp32", "top1").status == "regression"
    # both budgets set: the stricter one decides (0.5 points < 1 % of 80)
    both = Thresholds(max_drop=0.5, max_relative_drop=0.01)
    row = _row(compare_reports(base, cur, both), "fp32", "top1")
    assert row.status == "regression" and row.limit == pytest.approx(79.5)


def test_every_status() -> None:
    base = make_report(
        evaluation(
            precision("fp32", ref=True, top1=762),
            precision("int8", top1=750, agree=980, sqnr={"logits": 30.0, "aux": 20.0}),
            precision("fp16", agree=1000, sqnr={"logits": None}),
        )
    )
    cur = make_report(
        evaluation(
            precision("fp32", ref=True, top1=770),  # improved
            # top-1 regression, sqnr:emb new, sqnr:aux missing
            precision("int8", top1=740, agree=981, sqnr={"logits": 25.0, "emb": 40.0}),
            precision("int4", top1=700, agree=900, sqnr={"logits": 12.0}),  # new precision
        )
    )
    c = compare_reports(base, cur, Thresholds(max_drop=0.5, min_sqnr=20.0))
    assert _row(c, "fp32", "top1").status == "improved"
    assert _row(c, "int8", "top1").status == "regression"
    assert _row(c, "int8", "agreement").status == "improved"
    assert _row(c, "int8", "sqnr:logits").status == "ok"  # 25 dB >= 20 dB floor
    assert _row(c, "int8", "sqnr:aux").status == "missing"
    assert _row(c, "int8", "sqnr:emb").status == "new"
    assert {r.status for r in c.rows if r.precision == "fp16"} == {"missing"}
    assert {r.status for r in c.rows if r.precision == "int4"} == {"new"}
    assert c.rows[-1].precision == "int4"  # new precisions come last
    assert {r.status for r in c.rows} == {"ok", "regression", "improved", "new", "missing"}
    assert [r.metric for r in c.regressions] == ["top1"]
    assert not c.ok and c.count("missing") == 6 and len(c.missing) == 6
    missing = _row(c, "int8", "sqnr:aux")
    assert (missing.baseline, missing.current, missing.delta) == (20.0, None, None)


def test_missing_rows_do_not_fail() -> None:
    base = make_report()
    cur = make_report(evaluation(precision("fp32", ref=True)))
    c = compare_reports(base, cur)
    assert c.missing and c.ok


def test_min_sqnr_gate() -> None:
    base = _report(sqnr={"logits": 30.0})
    cur = _report(sqnr={"logits": 19.5})
    row = _row(compare_reports(base, cur, Thresholds(min_sqnr=20.0)), "int8", "sqnr:logits")
    assert row.status == "regression" and row.limit == 20.0 and row.delta == pytest.approx(-10.5)
    assert _row(compare_reports(base, cur, Thresholds()), "int8", "sqnr:logits").status == "ok"  # not gated
    exactly = _report(sqnr={"logits": 20.0})
    assert (
        _row(compare_reports(base, exactly, Thresholds(min_sqnr=20.0)), "int8", "sqnr:logits").status == "ok"
    )
    exact = _report(sqnr={"logits": None})
    row = _row(compare_reports(base, exact, Thresholds(min_sqnr=20.0)), "int8", "sqnr:logits")
    assert row.status == "improved" and row.current == math.inf and row.delta == math.inf


def test_latency_gate_and_batch_size() -> None:
    base = _report(latency_ms=10.0)
    slower = _report(latency_ms=12.0)
    assert _row(compare_reports(base, slower), "int8", "latency_ms").status == "ok"  # default: not gated
    row = _row(compare_reports(base, slower, Thresholds(max_latency_increase=0.1)), "int8", "latency_ms")
    assert row.status == "regression" and row.limit == pytest.approx(11.0)
    exactly = _report(latency_ms=11.0)
    assert (
        _row(
            compare_reports(base, exactly, Thresholds(max_latency_increase=0.1)), "int8", "latency_ms"
        ).status
        == "ok"
    )
    faster = _report(latency_ms=8.0)
    assert _row(compare_reports(base, faster), "int8", "latency_ms").status == "improved"
    other_batch = make_report(
        evaluation(
            precision("fp32", ref=True, batch_size=8),
            precision("int8", latency_ms=50.0, batch_size=8),
            batch_size=8,
        )
    )
    row = _row(compare_reports(base, other_batch, Thresholds(max_latency_increase=0.1)), "int8", "latency_ms")
    assert row.status == "ok" and row.note == "batch size 32 vs 8: latency not compared" and row.delta is None


def test_different_model_error() -> None:
    base = make_report(model_path="a/resnet.onnx")
    cur = make_report(model_path="b/resnet-v2.onnx", weights_fp="d" * 64)
    with pytest.raises(ReportError) as info:
        compare_reports(base, cur)
    msg = str(info.value)
    assert "are for different models" in msg
    assert "baseline model 'a/resnet.onnx'" in msg and "current model 'b/resnet-v2.onnx'" in msg
    assert "weights dddddddddddd" in msg and "compare reports of the same model" in msg


def test_different_data_error() -> None:
    base = make_report(data_source="val-a")
    cur = make_report(data_source="val-b", data_fp="e" * 64)
    with pytest.raises(
        ReportError,
        match=r"were evaluated on different data: baseline data 'val-a' \(cccccccccccc\) vs current data 'val-b' \(eeeeeeeeeeee\)",
    ):
        compare_reports(base, cur)


def test_different_schema_version_error() -> None:
    base = make_report()
    cur = dataclasses.replace(make_report(), schema_version=2, source="new.json")
    with pytest.raises(
        ReportError,
        match=r"baseline report of model 'models/resnet.onnx' has schema version 1 but current report 'new.json' has 2",
    ):
        compare_reports(base, cur)


def test_no_evaluation_error() -> None:
    base = make_report()
    cur = dataclasses.replace(make_report(), evaluation=None, source="cal.json")
    with pytest.raises(ReportError, match="current report 'cal.json' has no evaluation results"):
        compare_reports(base, cur)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_drop": -1.0}, "threshold max_drop must be a non-negative number or None, not -1.0"),
        ({"max_relative_drop": math.nan}, "threshold max_relative_drop must be"),
        ({"max_latency_increase": "10%"}, "threshold max_latency_increase must be"),
        ({"min_sqnr": math.inf}, "threshold min_sqnr must be a number of dB or None, not inf"),
    ],
)
def test_threshold_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Thresholds(**kwargs)


def test_thresholds_round_trip() -> None:
    th = Thresholds(max_drop=None, max_relative_drop=0.02, min_sqnr=15, max_latency_increase=0.25)
    assert Thresholds.from_dict(json.loads(json.dumps(th.to_dict()))) == th


def test_comparison_to_dict_is_json_valid() -> None:
    c = compare_reports(make_report(), make_report())
    d = json.loads(json.dumps(c.to_dict(), allow_nan=False))
    assert d["ok"] is True
    fp16_sqnr = next(r for r in d["rows"] if r["precision"] == "fp16" and r["metric"] == "sqnr:logits")
    assert fp16_sqnr["baseline"] is None and fp16_sqnr["delta"] == 0.0


def test_render_text() -> None:
    base = make_report()
    cur = make_report(
        evaluation(
            precision("fp32", ref=True),
            precision("int8", top1=750, top5=925, agree=980, sqnr={"logits": 31.5}, latency_ms=5.0),
        )
    )
    text = render_comparison(compare_reports(base, cur, Thresholds(min_sqnr=20)))
    lines = text.splitlines()
    assert lines[0].startswith("baseline:   report of model")
    assert (
        "thresholds: max drop 0.5 points, max relative drop off, min SQNR 20 dB, max latency increase off"
        in text
    )
    int8_top1 = next(line for line in lines if line.startswith("int8") and "top-1" in line).split()
    assert int8_top1 == ["int8", "top-1", "%", "75.70", "75.00", "-0.70", ">=", "75.20", "regression"]
    fp16_sqnr = next(line for line in lines if line.startswith("fp16") and "SQNR" in line).split()
    assert fp16_sqnr[-1] == "missing" and "exact" in fp16_sqnr
    assert lines[-1] == "FAILED: 1 regression (int8 top-1 %); 0 improved, 0 new, 5 missing"


def test_render_markdown() -> None:
    base = _report(sqnr={"out|a": 30.0})
    cur = _report(int8_top1=700, sqnr={"out|a": 30.0})
    md = render_comparison(compare_reports(base, cur), fmt="markdown")
    lines = md.splitlines()
    assert lines[0] == "### quant: comparison with baseline"
    assert lines[2].startswith("**FAILED: 1 regression")
    header = lines.index("| precision | metric | baseline | current | delta | limit | status |")
    assert lines[header + 1] == "|---|---|---:|---:|---:|---:|---|"
    rows = lines[header + 2 :]
    assert "| int8 | top-1 % | 75.70 | 70.00 | -5.70 | >= 75.20 | **regression** |" in rows
    assert any(r.startswith("| int8 | SQNR out\\|a dB |") for r in rows)  # pipe escaped
    assert all(r.count(" | ") == 6 for r in rows)  # 7 cells each
    ok = render_comparison(compare_reports(base, base), fmt="markdown")
    assert "**OK: no regressions (0 improved, 0 new, 0 missing)**" in ok


def test_render_unknown_format_error() -> None:
    c = compare_reports(make_report(), make_report())
    with pytest.raises(UsageError, match="unknown comparison format 'html'; use 'text' or 'markdown'"):
        render_comparison(c, fmt="html")


def test_extra_fingerprint_keys_do_not_block_comparison() -> None:
    base = make_report()
    cur = make_report()
    cur.model["fingerprint"]["combined"] = "f" * 64  # e.g. a derived digest written by a newer writer
    assert compare_reports(base, cur).ok
