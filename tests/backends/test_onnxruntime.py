from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.backends import onnxruntime as ort_backend
from quant.backends.base import TensorSpec
from quant.backends.onnxruntime import OrtRunner, check_feed, ort_version
from quant.errors import BackendUnavailableError, DataError, ModelError, UsageError


def _model(
    nodes, inputs, outputs, inits=(), opset: int = 17, name: str = "tiny", domains=()
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def matmul_relu(seed: int = 0, cols: int = 3) -> tuple[onnx.ModelProto, np.ndarray]:
    """x[N,4] -> MatMul(W[4,cols]) -> mm -> Relu -> y; also a Shape node (int64 tensor 'shp')."""
    w = np.random.default_rng(seed).standard_normal((4, cols)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Relu", ["mm"], ["y"]),
        helper.make_node("Shape", ["mm"], ["shp"]),
        helper.make_node("Cast", ["shp"], ["shp_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["shp_f"], ["shp_sum"], keepdims=0),
    ]
    model = _model(
        nodes,
        [_vi("x", ["N", 4])],
        [_vi("y", ["N", cols]), _vi("shp_sum", [])],
        [numpy_helper.from_array(w, "W")],
    )
    return model, w


def two_in_two_out() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    return _model(nodes, [_vi("a", [2, 3]), _vi("b", [2, 3])], [_vi("sum", [2, 3]), _vi("prod", [2, 3])])


def _x(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32)


def test_model_proto_runner_basics() -> None:
    model, w = matmul_relu()
    x = _x()
    with OrtRunner(model) as runner:
        assert runner.name == "tiny"
        assert runner.input_specs() == [TensorSpec("x", ("N", 4), np.dtype("float32"))]
        assert runner.output_names() == ["y", "shp_sum"]
        out = runner.infer({"x": x})
        np.testing.assert_allclose(out["y"], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
        assert out["shp_sum"] == 8.0
    with pytest.raises(
        ModelError, match="the ONNX Runtime session of model 'tiny' is closed; create a new runner"
    ):
        runner.infer({"x": x})
    runner.close()  # idempotent


def test_path_runner_with_extra_outputs(tmp_path: Path) -> None:
    model, w = matmul_relu()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = _x(3)
    with OrtRunner(path, threads=1) as plain:
        assert plain.name == str(path) and plain.output_names() == ["y", "shp_sum"]
    with OrtRunner(str(path), extra_outputs=["mm", "shp", "y"], threads=1, name="net.onnx") as runner:
        assert runner.output_names() == ["y", "shp_sum", "mm", "shp"]
        out = runner.infer({"x": x}, outputs=["mm", "shp"])
        assert list(out) == ["mm", "shp"]
        np.testing.assert_allclose(out["mm"], x @ w, rtol=1e-5, atol=1e-6)
        assert out["shp"].dtype == np.int64 and list(out["shp"]) == [3, 3]  # type from shape inference
        with pytest.raises(
            ModelError, match="model 'net.onnx' has no output 'nope' \\(outputs: y, shp_sum, mm, shp\\)"
        ):
            runner.infer({"x": x}, outputs=["nope"])


def test_extra_outputs_leave_caller_model_unchanged() -> None:
    model, _ = matmul_relu()
    before = model.SerializeToString()
    with OrtRunner(model, extra_outputs=["mm"]) as runner:
        assert "mm" in runner.output_names()
    assert model.SerializeToString() == before


def test_extra_output_not_in_model() -> None:
    model, _ = matmul_relu()
    with pytest.raises(
        ModelError, match="model 'tiny' has no tensor 'ghost' in its main graph \\(and 1 more\\)"
    ):
        OrtRunner(model, extra_outputs=["mm", "ghost", "ghost2"])


def test_two_inputs_two_outputs() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.full((2, 3), 2.0, np.float32)
    with OrtRunner(two_in_two_out()) as runner:
        assert [s.name for s in runner.input_specs()] == ["a", "b"]
        out = runner.infer({"b": b, "a": a})
        np.testing.assert_array_equal(out["sum"], a + b)
        np.testing.assert_array_equal(out["prod"], a * b)
        assert list(runner.infer({"a": a, "b": b}, outputs=["prod"])) == ["prod"]


@pytest.mark.parametrize("level", ["all", "basic", "none"])
def test_optimization_levels_agree(level: str) -> None:
    model, w = matmul_relu()
    x = _x()
    with OrtRunner(model, optimization=level) as runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)


def test_bad_options() -> None:
    model, _ = matmul_relu()
    with pytest.raises(UsageError, match="optimization must be one of all, extended, basic, none \\(got .max.\\)"):
        OrtRunner(model, optimization="max")
    with pytest.raises(UsageError, match="--threads must be a positive integer \\(got 0\\)"):
        OrtRunner(model, threads=0)
    with pytest.raises(UsageError, match="OrtRunner needs an onnx.ModelProto or a path, got int"):
        OrtRunner(3)  # type: ignore[arg-type]
    with pytest.raises(
        BackendUnavailableError, match="execution provider 'NoSuchExecutionProvider' is not available"
    ):
        OrtRunner(model, providers=["NoSuchExecutionProvider"])


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file '.*absent.onnx' does not exist; check the path"):
        OrtRunner(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01not a model at all")
    with pytest.raises(ModelError) as err:
        OrtRunner(junk)
    assert str(err.value).startswith(f"ONNX Runtime cannot load model '{junk}': ")
    assert "\n" not in str(err.value) and "[ONNXRuntimeError]" not in str(err.value)
    with pytest.raises(ModelError, match="cannot read model '.*junk.onnx' as ONNX"):
        OrtRunner(junk, extra_outputs=["y"])


def test_custom_op_not_registered() -> None:
    model = _model(
        [helper.make_node("Foo", ["x"], ["y"], domain="custom")],
        [_vi("x", [1, 4])],
        [_vi("y", None)],
        domains=["custom"],
    )
    with pytest.raises(ModelError) as err:
        OrtRunner(model, name="x.onnx")
    assert str(err.value) == (
        "model 'x.onnx' uses op 'Foo' (domain 'custom') that ONNX Runtime does not know; register its "
        "custom-op library or remove it"
    )


def test_unknown_standard_op() -> None:
    model = _model([helper.make_node("Frobnicate", ["x"], ["y"])], [_vi("x", [1, 4])], [_vi("y", None)])
    with pytest.raises(ModelError) as err:
        OrtRunner(model, name="m.onnx")
    msg = str(err.value)
    assert msg.startswith(
        "model 'm.onnx' uses op 'Frobnicate' (domain 'ai.onnx', opset 17) that ONNX Runtime"
    )
    assert msg.endswith("check the op name and the model's opset, or re-export the model with supported ops")


def test_unsupported_opset_and_ir_version() -> None:
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelError) as err:
        OrtRunner(_model(relu, [_vi("x", [1])], [_vi("y", None)], opset=99), name="new.onnx")
    assert str(err.value).startswith("model 'new.onnx' uses opset 99 of domain 'ai.onnx', but ONNX Runtime")
    assert "export the model with opset <=" in str(err.value)
    future_ir = _model(relu, [_vi("x", [1])], [_vi("y", None)])
    future_ir.ir_version = 99
    with pytest.raises(
        ModelError, match="model 'tiny' has ONNX IR version 99, but ONNX Runtime .* supports up to"
    ):
        OrtRunner(future_ir)


def test_invalid_graph_keeps_first_line() -> None:
    model = _model([helper.make_node("Add", ["x", "z"], ["y"])], [_vi("x", [1, 4])], [_vi("y", None)])
    with pytest.raises(ModelError) as err:
        OrtRunner(model)
    assert str(err.value) == (
        "ONNX Runtime cannot load model 'tiny': Invalid model. Node input 'z' is not a graph input, "
        "initializer, or output of a previous node."
    )


def test_non_tensor_input_rejected() -> None:
    model = _model(
        [helper.make_node("SequenceAt", ["s", "i"], ["y"])],
        [
            helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None),
            _vi("i", [], TensorProto.INT64),
        ],
        [_vi("y", None)],
    )
    with pytest.raises(
        ModelError, match="model 'tiny' input 's' has type seq\\(tensor\\(float\\)\\); only tensor inputs"
    ):
        OrtRunner(model)


def test_runtime_error_is_one_line_model_error(capfd: pytest.CaptureFixture[str]) -> None:
    model = _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"])],
        [_vi("x", [1, 4]), _vi("s", [2], TensorProto.INT64)],
        [_vi("y", None)],
    )
    with OrtRunner(model, name="r.onnx") as runner, pytest.raises(ModelError) as err:
        runner.infer({"x": np.ones((1, 4), np.float32), "s": np.array([3, 3], np.int64)})
    msg = str(err.value)
    assert msg.startswith(
        "model 'r.onnx' failed in ONNX Runtime: Non-zero status code returned while running Reshape"
    )
    assert "\n" not in msg
    assert "onnxruntime" not in capfd.readouterr().err  # ORT's own log is silenced


@pytest.mark.parametrize(
    ("feed", "message"),
    [
        (
            {"a": np.zeros((2, 3), np.float32)},
            "the data has no input 'b' that model 'tiny' needs (data inputs: a)",
        ),
        (
            {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 3), np.float32), "c": np.zeros(1)},
            "the data has input 'c' that model 'tiny' does not have (model inputs: a, b); rename or drop it",
        ),
        (
            {"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 3), np.float32)},
            "input 'a' has shape (2, 4) but model 'tiny' expects (2, 3); check the preprocessing",
        ),
        (
            {"a": np.zeros((6,), np.float32), "b": np.zeros((2, 3), np.float32)},
            "input 'a' has shape (6,) but model 'tiny' expects (2, 3)",
        ),
        (
            {"a": np.zeros((2, 3), np.int32), "b": np.zeros((2, 3), np.float32)},
            "input 'a' has dtype int32 but model 'tiny' expects float32; convert the data",
        ),
        (
            {"a": [[0.0] * 3] * 2, "b": np.zeros((2, 3), np.float32)},
            "input 'a' for model 'tiny' is a list, not a numpy array",
        ),
    ],
)
def test_feed_checked_before_running(feed: dict[str, object], message: str) -> None:
    with OrtRunner(two_in_two_out()) as runner, pytest.raises(DataError) as err:
        runner.infer(feed)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_check_feed_dynamic_dims_accept_any_size() -> None:
    specs = [TensorSpec("x", ("N", None, 3), np.dtype("float32"))]
    check_feed({"x": np.zeros((7, 11, 3), np.float32)}, specs, model="m")
    with pytest.raises(
        DataError, match=r"input 'x' has shape \(7, 11, 4\) but model 'm' expects \(N, \?, 3\)"
    ):
        check_feed({"x": np.zeros((7, 11, 4), np.float32)}, specs, model="m")


def test_large_model_goes_through_temp_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ort_backend, "_MAX_INLINE_BYTES", 0)
    model, w = matmul_relu(cols=200)  # a 3.2 kB weight: stored as external data
    before = model.SerializeToString()
    x = _x()
    for extra in ((), ("mm",)):
        runner = OrtRunner(model, extra_outputs=extra)
        tmpdir = runner._tmpdir
        assert tmpdir is not None and (Path(tmpdir.name) / "model.onnx.data").stat().st_size >= w.nbytes
        np.testing.assert_allclose(runner.infer({"x": x})["y"], np.maximum(x @ w, 0), rtol=1e-5, atol=1e-6)
        runner.close()
        assert not Path(tmpdir.name).exists()
    assert model.SerializeToString() == before  # external-data saving never touched the caller's model


def test_ort_version() -> None:
    assert ort_version() == onnxruntime.__version__


def test_import_is_cheap() -> None:
    code = "import sys, quant.backends.onnxruntime, quant.calibrators; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
