"""quant.report.schema: round trip, JSON hygiene, schema versions and load errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_fixtures import default_evaluation, make_report

from quant.errors import ReportError
from quant.report.schema import (
    SCHEMA_VERSION,
    Report,
    amax_summary,
    build_section,
    environment_info,
    load_report,
    report_json,
    save_report,
    upgrade_report_dict,
)


def test_round_trip(tmp_path: Path) -> None:
    report = make_report()
    path = save_report(report, tmp_path / "r.json")
    loaded = load_report(path)
    assert loaded == report
    assert loaded.source == str(path) and loaded.name == f"report '{path}'"
    assert loaded.evaluation == default_evaluation()
    assert loaded.to_dict() == json.loads(path.read_text())


def test_create_stamps_time_version_environment() -> None:
    report = make_report()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", report.created)
    assert (
        report.quant_version and report.schema == "quant.report" and report.schema_version == SCHEMA_VERSION
    )
    assert report.command == ("quant", "eval", "models/resnet.onnx")
    assert report.model["fingerprint"] == {"graph": "a" * 64, "weights": "b" * 64}
    assert report.model["inputs"] == [{"name": "input", "shape": ["N", 3, 224, 224], "dtype": "float32"}]
    assert report.data["fingerprint"] == "c" * 64 and report.data["num_samples"] == 1000
    assert report.calibration is not None and report.calibration["trt_header"] == {
        "version": 100300,
        "version_text": "10.3.0",
        "algorithm": "EntropyCalibration2",
    }


def test_json_sorted_indented_and_never_nan(tmp_path: Path) -> None:
    report = dataclasses.replace(
        make_report(),
        extra={
            "sensitivity": {
                "z": float("nan"),
                "a": [float("inf"), np.float32(1.5), np.int64(3)],
                "p": Path("x"),
            }
        },
    )
    text = report_json(report)
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["extra"]["sensitivity"] == {"a": [None, 1.5, 3], "p": "x", "z": None}
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    save_report(report, tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == text


def test_unstorable_value_error() -> None:
    report = dataclasses.replace(make_report(), extra={"bad": {1, 2}})
    with pytest.raises(
        ReportError, match="report field 'report.extra.bad' holds a set, which JSON cannot store"
    ):
        report_json(report)


def test_report_without_evaluation_and_calibration(tmp_path: Path) -> None:
    report = dataclasses.replace(make_report(with_calibration=False), evaluation=None, command=None)
    loaded = load_report(save_report(report, tmp_path / "r.json"))
    assert loaded.evaluation is None and loaded.calibration is None and loaded.command is None


def test_build_section_round_trip(tmp_path: Path) -> None:
    entry = build_section(
        target="tensorrt",
        quantized_tensors=12,
        quantized_weights=5,
        excluded=["fc"],
        skipped={"shape": "int"},
    )
    assert entry == {
        "target": "tensorrt",
        "quantized_tensors": 12,
        "quantized_weights": 5,
        "excluded": ["fc"],
        "skipped": {"shape": "int"},
        "cache_missing": [],
    }
    build = {"int8": entry, "int8-given": {"source": "m.int8.onnx"}}
    report = dataclasses.replace(make_report(), build=build)
    assert load_report(save_report(report, tmp_path / "r.json")).build == build


def test_build_entry_must_be_object(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d.update(build={"int8": "tensorrt"}))
    with pytest.raises(ReportError, match="field 'build.int8' should be an object but is string"):
        load_report(path)


def test_report_accepts_json_forms() -> None:
    # api-style construction: evaluation as its dict, command as a list
    report = make_report()
    built = Report(
        created=report.created,
        quant_version=report.quant_version,
        model=report.model,
        data=report.data,
        evaluation=report.to_dict()["evaluation"],
        command=["quant", "eval", "models/resnet.onnx"],
    )
    assert built.evaluation == report.evaluation
    assert built.command == report.command


def _saved(tmp_path: Path, mutate: Any) -> Path:
    data = make_report().to_dict()
    mutate(data)
    path = tmp_path / "x.json"
    path.write_text(json.dumps(data))
    return path


def test_newer_schema_version_error(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d.update(schema_version=3))
    with pytest.raises(ReportError) as info:
        load_report(path)
    assert str(info.value) == f"report '{path}' has schema version 3; this quant reads up to 1; upgrade quant"


def test_older_schema_version_without_upgrade_error(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d.update(schema_version=0))
    with pytest.raises(
        ReportError, match=r"has schema version 0, which this quant cannot read \(it reads versions 1 to 1\)"
    ):
        load_report(path)


def test_schema_version_not_integer(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d.update(schema_version="1"))
    with pytest.raises(ReportError, match="field 'schema_version' = '1', expected an integer"):
        load_report(path)


def test_upgrade_table_is_applied_step_by_step() -> None:
    calls: list[int] = []

    def v1_to_v2(d: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        d["renamed"] = d.pop("old")
        return d

    def v2_to_v3(d: dict[str, Any]) -> dict[str, Any]:
        calls.append(2)
        d["added"] = True
        return d

    out = upgrade_report_dict(
        {"old": 5, "schema_version": 1}, 1, upgrades={1: v1_to_v2, 2: v2_to_v3}, target=3
    )
    assert out == {"renamed": 5, "added": True, "schema_version": 3}
    assert calls == [1, 2]
    with pytest.raises(
        ReportError,
        match=r"report 'r.json' has schema version 2, which this quant cannot read \(it reads versions 1 to 3\)",
    ):
        upgrade_report_dict({}, 2, source="r.json", upgrades={1: v1_to_v2}, target=3)


def test_wrong_schema_error(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d.update(schema="polygraphy.results"))
    with pytest.raises(
        ReportError,
        match=rf"report '{re.escape(str(path))}' has field 'schema' = 'polygraphy.results', expected 'quant.report'",
    ):
        load_report(path)
    path = _saved(tmp_path, lambda d: d.pop("schema"))
    with pytest.raises(ReportError, match="has no field 'schema'; it is not a quant report"):
        load_report(path)


def test_missing_file_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"report '.*nope.json' does not exist; check the path"):
        load_report(tmp_path / "nope.json")
    with pytest.raises(ReportError, match="is a directory"):
        load_report(tmp_path)


def test_not_json_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"schema": "quant.report",\n  oops}')
    with pytest.raises(
        ReportError,
        match=r"report '.*broken.json' is not valid JSON \(.* at line 2 column 3\); is it a quant report\?",
    ):
        load_report(path)
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ReportError, match="is not UTF-8 text"):
        load_report(path)
    path.write_text("[1, 2]")
    with pytest.raises(ReportError, match="is not a JSON object"):
        load_report(path)


def test_damaged_field_error_names_file_and_field(tmp_path: Path) -> None:
    path = _saved(tmp_path, lambda d: d["evaluation"]["precisions"][2]["classification"].pop("top1_correct"))
    with pytest.raises(ReportError) as info:
        load_report(path)
    assert str(info.value).startswith(
        f"report '{path}': field 'evaluation.precisions[2].classification.top1_correct' is missing"
    )

    path = _saved(tmp_path, lambda d: d["model"]["fingerprint"].update(graph=7))
    with pytest.raises(
        ReportError, match=r"field 'model.fingerprint.graph' should be a string but is number"
    ):
        load_report(path)
    path = _saved(tmp_path, lambda d: d.update(command=["quant", 3]))
    with pytest.raises(ReportError, match="'report.command' should be a list of strings"):
        load_report(path)


def test_from_dict_without_source() -> None:
    with pytest.raises(ReportError, match="^report has no field 'schema'"):
        Report.from_dict({})


def test_amax_summary_by_hand() -> None:
    amax = {f"t{i}": float(i) for i in range(1, 13)}  # 1..12
    s = amax_summary(amax, ["z", "a"])
    assert (s["count"], s["min"], s["median"], s["max"]) == (12, 1.0, 6.5, 12.0)
    assert [e["name"] for e in s["largest"]] == [f"t{i}" for i in range(12, 2, -1)]
    assert s["largest"][0] == {"name": "t12", "amax": 12.0}
    assert s["no_range"] == ["a", "z"]


def test_amax_summary_empty_and_nonfinite() -> None:
    assert amax_summary({}) == {
        "count": 0,
        "min": None,
        "median": None,
        "max": None,
        "largest": [],
        "no_range": [],
    }
    s = amax_summary({"a": 1.0, "b": math.inf, "c": 2.0})
    assert s["max"] == 2.0 and s["largest"][0] == {"name": "b", "amax": None}
    json.dumps(s, allow_nan=False)


def test_environment_info() -> None:
    env = environment_info()
    assert set(env) >= {"quant", "onnx", "onnxruntime", "numpy", "python", "platform", "cpu", "cores"}
    assert env["numpy"] == np.__version__ and env["cpu"]
    assert isinstance(env["cores"], int) and env["cores"] >= 1
