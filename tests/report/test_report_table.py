"""quant.report.table: the fixed-width text rendering."""

from __future__ import annotations

import dataclasses

import pytest
from report_fixtures import evaluation, make_report, precision

from quant.report.table import fmt_number, format_columns, render_table


def _table_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("precision"))
    end = start
    while end < len(lines) and lines[end]:
        end += 1
    return lines[start:end]


def test_render_table_rows_and_header() -> None:
    text = render_table(make_report())
    assert "model:        models/resnet.onnx  [aaaaaaaaaaaa]" in text
    assert "data:         data/val  1000 samples" in text
    assert (
        "calibration:  entropy on 500 samples, 3 tensor ranges, 1 without range; "
        "cache models/resnet.cache (TRT-100300-EntropyCalibration2)"
    ) in text
    assert "batch size 32, reference fp32, classifier output logits" in text
    table = _table_lines(text)
    assert table[0].split() == [
        "precision",
        "top-1",
        "%",
        "top-5",
        "%",
        "agree",
        "%",
        "min",
        "SQNR",
        "dB",
        "min",
        "cos",
        "ms/batch",
        "samples/s",
    ]
    rows = {line.split()[0]: line.split() for line in table[2:]}
    assert rows["fp32"] == ["fp32", "(ref)", "76.20", "93.00", "-", "-", "-", "10.00", "3200.0"]
    assert rows["fp16"] == ["fp16", "76.20", "93.00", "100.00", "exact", "1.0000", "7.00", "4571.4"]
    assert rows["int8"] == ["int8", "75.70", "92.50", "98.00", "31.50", "0.9990", "5.00", "6400.0"]
    # fixed width: every column starts at the same offset in every row
    header = table[0]
    for line in table[2:]:
        assert line.rstrip().endswith(line.split()[-1]) and len(line) == len(header)
    assert "fp16 - fp32: top-1 +0.00 points, top-5 +0.00 points" in text
    assert "int8 - fp32: top-1 -0.50 points, top-5 -0.50 points" in text


def test_render_table_build_lines() -> None:
    build = {
        "int8": {"target": "tensorrt", "quantized_tensors": 9, "quantized_weights": 4, "excluded": ["fc"]},
        "int8-given": {"source": "m.int8.onnx"},
    }
    text = render_table(dataclasses.replace(make_report(), build=build))
    assert (
        "build:        int8: target tensorrt, 9 quantized activations, 4 quantized weights, 1 excluded"
        in text
    )
    assert "build:        int8-given: given model m.int8.onnx" in text


def test_render_table_without_labels_has_no_delta() -> None:
    ev = evaluation(
        precision("fp32", ref=True, top1=None),
        precision("int8", top1=None, sqnr={"a": 12.0, "b": 25.0}, latency_ms=None),
        has_labels=False,
    )
    text = render_table(make_report(ev))
    assert "points" not in text
    int8 = next(line for line in _table_lines(text) if line.startswith("int8")).split()
    assert int8 == ["int8", "-", "-", "99.00", "12.00", "0.9990", "-", "-"]


def test_render_table_without_evaluation_or_calibration() -> None:
    report = dataclasses.replace(make_report(with_calibration=False), evaluation=None)
    text = render_table(report)
    assert "calibration:  none" in text and "evaluation:   none" in text


def test_format_helpers() -> None:
    assert (
        fmt_number(None) == "-"
        and fmt_number(float("inf")) == "exact"
        and fmt_number(float("-inf")) == "-inf"
    )
    assert fmt_number(1.23456, 3) == "1.235"
    out = format_columns(["a", "bb"], [["xyz", "1"], ["q", "100"]])
    assert out.splitlines() == ["a     bb", "---  ---", "xyz    1", "q    100"]
    assert format_columns(["a", "b"], [["x", "yy"]], align="ll").splitlines()[2] == "x  yy"
    with pytest.raises(ValueError, match="one letter per column"):
        format_columns(["a", "b"], [], align="l")
