"""quant.fingerprint: model fingerprints (graph / weights), stability and sensitivity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.errors import CacheError
from quant.fingerprint import (
    ModelFingerprint,
    combine,
    compare_fingerprints,
    hash_bytes,
    model_fingerprint,
)


def build(
    *,
    weight: np.ndarray | None = None,
    kernel: int = 3,
    bias_as_float_data: bool = False,
    const_value: float = 2.0,
    batch: int | str = "N",
    opset: int = 17,
) -> onnx.ModelProto:
    """Conv(weights, bias) -> Mul by a Constant node -> Relu, with names and docs to vary."""
    rng = np.random.default_rng(0)
    w = weight if weight is not None else rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32)
    b = np.arange(4, dtype=np.float32)
    bias = (
        helper.make_tensor("b", TensorProto.FLOAT, [4], b.tolist())  # float_data field
        if bias_as_float_data
        else numpy_helper.from_array(b, "b")  # raw_data field
    )
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], name="conv0", kernel_shape=[kernel, kernel], pads=[1] * 4
        ),
        helper.make_node(
            "Constant",
            [],
            ["k"],
            name="const0",
            value=numpy_helper.from_array(np.array(const_value, np.float32)),
        ),
        helper.make_node("Mul", ["c", "k"], ["m"], name="mul0"),
        helper.make_node("Relu", ["m"], ["y"], name="relu0"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [numpy_helper.from_array(w, "w"), bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def test_deterministic_and_hex() -> None:
    a, b = model_fingerprint(build()), model_fingerprint(build())
    assert a == b
    assert len(a.graph) == len(a.weights) == len(a.combined) == 64
    assert a.graph != a.weights


def test_stable_across_save_and_load(tmp_path: Path) -> None:
    model = build()
    onnx.save(model, tmp_path / "m.onnx")
    loaded = onnx.load(tmp_path / "m.onnx")
    assert model_fingerprint(loaded) == model_fingerprint(model)
    # onnx.save moves the weights of the model it saves out to the external file: save a copy
    onnx.save(build(), tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0)
    assert model_fingerprint(onnx.load(tmp_path / "ext.onnx")) == model_fingerprint(model)


def test_insensitive_to_metadata_names_and_docs() -> None:
    base = model_fingerprint(build())
    model = build()
    model.producer_name = "pytorch"
    model.producer_version = "9.9"
    model.doc_string = "a doc"
    model.model_version = 7
    helper.set_model_props(model, {"author": "someone"})
    model.graph.name = "renamed"
    model.graph.doc_string = "graph doc"
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        node.doc_string = "node doc"
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, ["N", 4, 8, 8]))
    assert model_fingerprint(model) == base


def test_raw_and_typed_fields_hash_the_same() -> None:
    assert model_fingerprint(build(bias_as_float_data=True)) == model_fingerprint(build())


def test_weight_change_changes_weights_only() -> None:
    base = model_fingerprint(build())
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = np.nextafter(w[0, 0, 0, 0], np.float32(10))
    changed = model_fingerprint(build(weight=w))
    assert changed.weights != base.weights
    assert changed.graph == base.graph
    assert changed.combined != base.combined


def test_constant_node_value_is_a_weight() -> None:
    base = model_fingerprint(build())
    changed = model_fingerprint(build(const_value=3.0))
    assert changed.weights != base.weights and changed.graph == base.graph


def test_attribute_change_changes_graph() -> None:
    base = build()
    model = build()
    conv = model.graph.node[0]
    for attr in conv.attribute:
        if attr.name == "pads":
            attr.ints[:] = [0, 0, 0, 0]
    fp = model_fingerprint(model)
    assert fp.graph != model_fingerprint(base).graph
    assert fp.weights == model_fingerprint(base).weights


@pytest.mark.parametrize(
    "variant",
    [
        {"batch": 1},  # input shape
        {"opset": 13},  # opset import
    ],
)
def test_structure_changes_change_graph(variant: dict[str, object]) -> None:
    base = model_fingerprint(build())
    fp = model_fingerprint(build(**variant))  # type: ignore[arg-type]
    assert fp.graph != base.graph and fp.weights == base.weights


def test_rewiring_and_op_change_change_graph() -> None:
    base = model_fingerprint(build())
    model = build()
    model.graph.node[3].op_type = "Sigmoid"
    assert model_fingerprint(model).graph != base.graph
    model = build()
    model.graph.node[2].input[:] = ["k", "c"]
    assert model_fingerprint(model).graph != base.graph


def test_subgraph_is_hashed() -> None:
    def with_branch(value: float) -> onnx.ModelProto:
        then = helper.make_graph(
            [
                helper.make_node(
                    "Constant", [], ["t"], value=numpy_helper.from_array(np.array([value], np.float32))
                )
            ],
            "then",
            [],
            [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
        )
        other = helper.make_graph(
            [helper.make_node("Neg", ["x"], ["e"])],
            "else",
            [],
            [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])],
        )
        node = helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)
        graph = helper.make_graph(
            [node],
            "g",
            [
                helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    a, b = model_fingerprint(with_branch(1.0)), model_fingerprint(with_branch(2.0))
    assert a.graph == b.graph and a.weights != b.weights


def test_unloaded_external_data_hashes_reference(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    onnx.save(build(), tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0)
    stub = onnx.load(tmp_path / "ext.onnx", load_external_data=False)
    fp = model_fingerprint(stub)
    assert fp.graph == model_fingerprint(build()).graph
    assert fp.weights != model_fingerprint(build()).weights
    assert "external data that was not loaded" in caplog.text


# --------------------------------------------------------------------------------------------
# Value object and comparison
# --------------------------------------------------------------------------------------------


def test_to_dict_from_dict() -> None:
    fp = model_fingerprint(build())
    d = fp.to_dict()
    assert d == {"graph": fp.graph, "weights": fp.weights, "combined": fp.combined}
    assert ModelFingerprint.from_dict(d) == fp
    assert ModelFingerprint.from_dict({"graph": fp.graph, "weights": fp.weights}) == fp


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({"graph": "a"}, "lacks the 'graph' and 'weights'"),
        ({"graph": "a", "weights": 3}, "lacks the 'graph' and 'weights'"),
        ({"graph": "a", "weights": "b", "combined": "c"}, "'combined' digest does not match"),
        ("abc", "not an object"),
    ],
)
def test_from_dict_errors(d: object, match: str) -> None:
    with pytest.raises(CacheError, match=match):
        ModelFingerprint.from_dict(d)  # type: ignore[arg-type]


def test_compare_fingerprints() -> None:
    fp = model_fingerprint(build())
    stored = {"model_fingerprint": fp.to_dict(), "data_fingerprint": "d1"}
    assert compare_fingerprints(stored, model=fp, data="d1") == []
    assert compare_fingerprints(stored, model=fp, data=None) == []
    assert compare_fingerprints(stored, model=fp, data="d2") == ["calibration data changed"]
    new_w = model_fingerprint(build(const_value=5.0))
    assert compare_fingerprints(stored, model=new_w, data="d1") == ["model weights changed"]
    both = model_fingerprint(build(const_value=5.0, kernel=1))
    assert compare_fingerprints(stored, model=both, data="d2") == [
        "model weights changed",
        "model graph changed",
        "calibration data changed",
    ]
    as_string = {"model_fingerprint": fp.combined}
    assert compare_fingerprints(as_string, model=fp, data="x") == []
    assert compare_fingerprints(as_string, model=new_w, data=None) == ["model changed"]
    assert compare_fingerprints({}, model=fp, data="x") == []
    with pytest.raises(CacheError, match="malformed"):
        compare_fingerprints({"model_fingerprint": 42}, model=fp, data=None)


def test_hash_helpers() -> None:
    assert hash_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert combine("ab", "c") != combine("a", "bc")
    assert combine("a", "b") != combine("b", "a")
    assert len(combine()) == 64
