"""quant sensitivity and quant build --accuracy-budget / --min-sqnr / --exclude-from, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from quant.backends.onnxruntime import OrtRunner
from quant.cli.main import cli
from tests.cli_helpers import run_main
from tests.test_sensitivity import DESTRUCTIVE, write_outlier_files

BUDGET = "2.0"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_outlier_files(tmp_path_factory.mktemp("cli_sensitivity"))


def invoke(args: list[str]) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr




def top1(model: Path, data: Path) -> float:
    z = np.load(data)
    with OrtRunner(model) as r:
        pred = r.infer({"input": z["input"]})["logits"].argmax(axis=1)
    return 100.0 * float(np.mean(pred == z["labels"]))


def test_help_lists_the_command_with_examples() -> None:
    code, out, _ = invoke(["sensitivity", "--help"])
    assert code == 0 and "Examples:" in out and "quant sensitivity model.onnx" in out
    code, out, _ = invoke(["--help"])
    assert "sensitivity" in out
    code, out, _ = invoke(["build", "--help"])
    assert "--accuracy-budget" in out and "--exclude-from" in out and "--min-sqnr" in out


def test_sensitivity_table_json_and_report(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = files
    code, out, err = invoke(["sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--max-samples",
                             "128", "--exact"])
    assert code == 0, err
    rows = [line for line in out.splitlines() if line[:1].isdigit()]
    assert rows[0].split()[:3] == ["1", DESTRUCTIVE, "Gemm"]
    assert "metric accuracy" in out and "128 samples" in out and "forward passes" in out
    assert "samples: 128 of 128 (every sample)" in out
    # Without --exact the pass stops once the ranking is steady and says how steady.
    code, out, err = invoke(["sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--max-samples",
                             "128"])
    assert code == 0, err
    assert [line for line in out.splitlines() if line[:1].isdigit()][0].split()[1] == DESTRUCTIVE
    assert "(stopped once steady); ranking confidence" in out

    report = tmp_path / "report.json"
    code, out, err = invoke([
        "sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--max-samples", "64",
        "--metric", "sqnr", "--json", "--report", str(report), "--exact",
    ])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["metric"] == "sqnr" and doc["layers"][0]["name"] == DESTRUCTIVE and doc["num_samples"] == 64
    saved = json.loads(report.read_text())
    assert saved["schema"] == "quant.report" and saved["extra"]["sensitivity"]["layers"] == doc["layers"]
    assert f"report: {report}" in err


def test_sensitivity_errors_are_one_line(files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data, cache = files
    unlabelled = tmp_path / "x.npz"
    np.savez(unlabelled, input=np.load(data)["input"][:16])
    code, _out, err = run_main(
        ["-q", "sensitivity", str(model), "--cache", str(cache), "--data", str(unlabelled), "--metric", "accuracy"],
        capsys,
    )
    assert code == 1 and len(err.strip().splitlines()) == 1 and "needs labelled data" in err
    code, _out, err = run_main(["sensitivity", str(model), "--data", str(data)], capsys)
    assert code == 2 and "--cache" in err
    code, _out, err = run_main(
        ["sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--metric", "f1"], capsys
    )
    assert code == 2 and "f1" in err


def test_build_meets_a_budget_that_plain_int8_misses(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = files
    plain = tmp_path / "plain.int8.onnx"
    code, _out, err = invoke(["build", str(model), "--cache", str(cache), "-o", str(plain)])
    assert code == 0, err
    fp32 = top1(model, data)
    assert fp32 - top1(plain, data) > float(BUDGET)  # plain INT8 misses the budget

    out_model = tmp_path / "m.int8.onnx"
    code, out, err = invoke([
        "build", str(model), "--cache", str(cache), "--data", str(data),
        "--accuracy-budget", BUDGET, "-o", str(out_model),
    ])
    assert code == 0, err
    assert f"step 1: {DESTRUCTIVE} (Gemm) -> float" in out and "budget met" in out
    assert "rebuild with --exclude-from" in out
    assert fp32 - top1(out_model, data) <= float(BUDGET)  # the saved model meets it
    fb = Path(str(out_model) + ".fallback.json")
    doc = json.loads(fb.read_text())
    assert doc["exclude"] == [DESTRUCTIVE] and doc["fallback"]["fell_back"] == [DESTRUCTIVE]
    assert doc["fallback"]["steps"][0]["drop"] <= float(BUDGET)
    assert doc["fallback"]["verified"]["top1"] == pytest.approx(top1(out_model, data))

    # --exclude-from rebuilds the very same model.
    again = tmp_path / "again.int8.onnx"
    code, out, err = invoke(["build", str(model), "--cache", str(cache), "--exclude-from", str(fb), "-o", str(again)])
    assert code == 0, err
    assert again.read_bytes() == out_model.read_bytes()

    # And quant inspect shows the fallen-back layer in float.
    code, out, err = invoke(["inspect", str(again), "--json"])
    assert code == 0, err
    precisions = {layer["name"]: layer["precision"] for layer in json.loads(out)["layers"]}
    assert precisions["fc1"] == "int8" and precisions[DESTRUCTIVE] == "float" and precisions["fc3"] == "int8"


def test_build_min_sqnr_and_custom_fallback_report(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = files
    out_model = tmp_path / "s.int8.onnx"
    report = tmp_path / "steps.json"
    code, out, err = invoke([
        "build", str(model), "--cache", str(cache), "--data", str(data), "--max-samples", "64",
        "--min-sqnr", "20", "--fallback-report", str(report), "-o", str(out_model),
    ])
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert doc["fallback"]["budget"] == {"accuracy_points": None, "min_sqnr_db": 20.0}
    assert doc["exclude"][0] == DESTRUCTIVE and doc["fallback"]["met"]
    assert doc["fallback"]["verified"]["sqnr_db"] is None or doc["fallback"]["verified"]["sqnr_db"] >= 20.0
    assert onnx.load(str(out_model)).graph.node


def test_build_budget_usage_errors(files: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, data, cache = files
    out_model = tmp_path / "x.onnx"
    code, _out, err = run_main(
        ["build", str(model), "--cache", str(cache), "--accuracy-budget", "1", "-o", str(out_model)], capsys
    )
    assert code == 2 and "need --data" in err and len(err.strip().splitlines()) == 1
    code, _out, err = run_main(
        ["build", str(model), "--cache", str(cache), "--data", str(data), "--accuracy-budget", "150", "-o", str(out_model)],
        capsys,
    )
    assert code == 2 and "--accuracy-budget" in err
    code, _out, err = run_main(
        ["-q", "build", str(model), "--cache", str(cache), "--exclude-from", str(tmp_path / "nope.json"), "-o",
         str(out_model)],
        capsys,
    )
    assert code == 2 and "nope.json" in err and "does not exist" in err
    code, _out, err = run_main(
        ["build", str(model), "--precision", "fp16", "--data", str(data), "--min-sqnr", "20", "-o", str(out_model)],
        capsys,
    )
    assert code == 2 and "--precision int8" in err
    assert not out_model.exists()
    # --data without a budget is ignored with a warning.
    code, _out, err = run_main(["build", str(model), "--cache", str(cache), "--data", str(data), "-o", str(out_model)], capsys)
    assert code == 0 and "--data is only used with --accuracy-budget" in err


def test_build_exits_1_when_the_destructive_layer_cannot_be_excluded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """fc2 named 'Gemm' matches every Gemm by op type: it cannot be excluded alone."""
    from quant import api
    from quant.config import CalibrationOptions, DataOptions
    from tests.test_sensitivity import outlier_classifier, outlier_data

    model = outlier_classifier()
    next(n for n in model.graph.node if n.name == DESTRUCTIVE).name = "Gemm"
    path = tmp_path / "ambiguous.onnx"
    onnx.save(model, str(path))
    data = tmp_path / "d.npz"
    d = outlier_data(model, n=64)
    np.savez(data, input=d["input"], labels=d["labels"])
    cache = tmp_path / "c.cache"
    api.calibrate(path, DataOptions(str(data)), cache=cache, options=CalibrationOptions(method="minmax"))
    out_model = tmp_path / "m.onnx"
    code, out, err = run_main(
        ["-q", "build", str(path), "--cache", str(cache), "--data", str(data), "--accuracy-budget", "2",
         "-o", str(out_model)],
        capsys,
    )
    assert code == 1 and "budget not met" in err and "cannot be excluded by name" in err
    assert "layer 'Gemm' cannot be excluded by name; skipped" in err  # the fallback's warning
    assert "budget NOT met" in out
    doc = json.loads(Path(str(out_model) + ".fallback.json").read_text())
    assert doc["fallback"]["met"] is False and "Gemm" not in doc["exclude"]
    assert out_model.exists()  # written anyway, for inspection
