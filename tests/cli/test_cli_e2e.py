"""End to end through the CLI: the embedded demo, and a two-input two-output model from .npz."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from quant.cache.trt import parse_trt_cache
from quant.cli.main import main
from quant.demo import demo_model_path
from tests.cli_helpers import run_main as cli
from tests.models import two_input_two_output


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `quant run` of the demo shared by the assertions below (it takes a few seconds)."""
    out = tmp_path_factory.mktemp("demo") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(out)])
    assert exc.value.code in (0, None)
    return out


def test_demo_run_meets_accuracy_bar(demo_run: Path) -> None:
    report = json.loads((demo_run / "report.json").read_text())
    assert report["schema"] == "quant.report"
    prec = {p["name"]: p for p in report["evaluation"]["precisions"]}
    fp32 = prec["fp32"]["classification"]["top1"]
    int8 = prec["int8"]["classification"]["top1"]
    assert fp32 >= 97.0
    assert abs(int8 - fp32) <= 1.0
    assert prec["int8"]["classification"]["agreement"] >= 98.0
    assert prec["fp16"]["classification"]["agreement"] >= 99.5
    assert report["data"]["num_samples"] == 1500
    assert report["calibration"]["num_samples"] == 300


def test_demo_run_writes_every_artifact(demo_run: Path) -> None:
    names = {p.name for p in demo_run.iterdir()}
    assert {"model.cache", "model.cache.json", "model.cache.stats.npz", "model.int8.onnx",
            "model.fp16.onnx", "report.json"} <= names
    assert not [n for n in names if n.startswith(".quant-tmp-")]
    for model in ("model.int8.onnx", "model.fp16.onnx"):
        onnx.checker.check_model(onnx.load(str(demo_run / model)))
    int8 = onnx.load(str(demo_run / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_demo_cache_is_tensorrt_format(demo_run: Path) -> None:
    text = (demo_run / "model.cache").read_text()
    assert text.startswith("TRT-101300-EntropyCalibration2\n")
    parsed = parse_trt_cache(text, source="model.cache")
    assert parsed.algorithm == "EntropyCalibration2"
    assert parsed.trt_version == 101300
    assert len(parsed.amax) >= 10
    sidecar = json.loads((demo_run / "model.cache.json").read_text())
    calib = sidecar["calibration"]
    # the sidecar's exact amax and the cache's float32 scales agree
    for name, amax in calib["amax"].items():
        assert parsed.amax[name] == pytest.approx(amax, rel=1e-6)


def test_demo_rerun_reuses_the_cache(demo_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (demo_run / "model.cache").read_bytes()
    code, out, _err = cli(["run", "--out", str(demo_run), "--precisions", "fp32,int8"], capsys)
    assert code == 0
    assert "up to date" in out
    assert (demo_run / "model.cache").read_bytes() == before


def test_sidecar_fingerprints_follow_model_and_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = onnx.load(str(demo_model_path()))
    m1 = tmp_path / "m1.onnx"
    onnx.save(model, str(m1))
    code, _, err = cli(["calibrate", str(m1), "--data", "demo:calib", "--max-samples", "64", "--cache", str(tmp_path / "a.cache")], capsys)
    assert code == 0, err
    # change one weight -> weights fingerprint changes, graph fingerprint does not
    init = model.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    m2 = tmp_path / "m2.onnx"
    onnx.save(model, str(m2))
    code, _, err = cli(["calibrate", str(m2), "--data", "demo:calib", "--max-samples", "64", "--cache", str(tmp_path / "b.cache")], capsys)
    assert code == 0, err
    # same model, other data selection -> data fingerprint changes
    code, _, err = cli(["calibrate", str(m1), "--data", "demo:calib", "--max-samples", "64", "--seed", "1", "--cache", str(tmp_path / "c.cache")], capsys)
    assert code == 0, err
    a, b, c = (json.loads((tmp_path / f"{x}.cache.json").read_text())["calibration"] for x in "abc")
    assert a["model_fingerprint"]["graph"] == b["model_fingerprint"]["graph"]
    assert a["model_fingerprint"]["weights"] != b["model_fingerprint"]["weights"]
    assert a["data_fingerprint"] == b["data_fingerprint"]
    assert a["model_fingerprint"] == c["model_fingerprint"]
    assert a["data_fingerprint"] != c["data_fingerprint"]


def test_two_input_two_output_model_from_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_path = tmp_path / "two.onnx"
    onnx.save(two_input_two_output(), str(model_path))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, input=rng.standard_normal((40, 8)).astype(np.float32),
             input2=rng.standard_normal((40, 8)).astype(np.float32))
    cache = tmp_path / "two.cache"
    code, out, err = cli(["calibrate", str(model_path), "--data", str(data), "--method", "minmax", "--cache", str(cache)], capsys)
    assert code == 0, err
    assert cache.read_text().startswith("TRT-101300-MinMaxCalibration\n")
    int8 = tmp_path / "two.int8.onnx"
    code, out, err = cli(["build", str(model_path), "--cache", str(cache), "-o", str(int8)], capsys)
    assert code == 0, err
    # input, input2 (MatMul inputs) and both inputs of the Add (two activations: a residual-style Add)
    assert "quantized activations: 4, weights: 2" in out
    report = tmp_path / "report.json"
    code, out, err = cli(["eval", str(model_path), "--data", str(data), "--int8-model", str(int8),
                          "--precisions", "fp32,fp16,int8", "--report", str(report), "--batch-size", "16"], capsys)
    assert code == 0, err
    rep = json.loads(report.read_text())
    prec = {p["name"]: p for p in rep["evaluation"]["precisions"]}
    for name in ("fp16", "int8"):
        outputs = {f["output"] for f in prec[name]["fidelity"]}
        assert outputs == {"sum_out", "prod_out"}
    fid = {f["output"]: f for f in prec["int8"]["fidelity"]}
    assert fid["sum_out"]["sqnr_db"] > 25
    # prod_out = input * input2 has no quantized op in its path: INT8 leaves it exact
    assert fid["prod_out"]["exact"] is True
    # no labels: no accuracy, only agreement on the class-score-like output
    assert prec["fp32"]["classification"] is None or prec["fp32"]["classification"]["top1"] is None
