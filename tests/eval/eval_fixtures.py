"""Helpers for quant.eval tests: tiny ONNX models built in code, an in-memory Dataset and a
minimal ONNX Runtime runner (the project's OrtRunner is tested in tests/backends)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.backends.base import TensorSpec
from quant.datasets.base import Batch, DataSummary

N_FEATURES = 4
N_CLASSES = 6


def linear_model(weight: np.ndarray, bias: np.ndarray, *, logits_name: str = "logits") -> onnx.ModelProto:
    """x (N, 4) -> cls = ArgMax(logits) int64 (N,), logits = x @ W + b (N, 6), feat = Relu(x) (N, 4).

    ``cls`` comes first so that the default classifier detection has to skip a non-classifier.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])
    outputs = [
        helper.make_tensor_value_info("cls", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info(logits_name, TensorProto.FLOAT, ["N", N_CLASSES]),
        helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", N_FEATURES]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], [logits_name]),
        helper.make_node("ArgMax", [logits_name], ["cls"], axis=1, keepdims=0),
        helper.make_node("Relu", ["x"], ["feat"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [x],
        outputs,
        initializer=[
            numpy_helper.from_array(weight.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def vector_model() -> onnx.ModelProto:
    """x (N, 4) -> y = x * 3 reshaped to (N, 2, 2): no classifier output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", N_FEATURES])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 2])
    nodes = [
        helper.make_node("Mul", ["x", "three"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vector",
        [x],
        [y],
        initializer=[
            numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three"),
            numpy_helper.from_array(np.array([-1, 2, 2], dtype=np.int64), "shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class ArrayDataset:
    """A Dataset over in-memory arrays; every batch owns copies of its data."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None = None, *, input_name: str = "x") -> None:
        self.x = x
        self.labels = labels
        self._input = input_name

    @property
    def input_names(self) -> tuple[str, ...]:
        return (self._input,)

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            labels = None if self.labels is None else self.labels[start:stop].copy()
            yield Batch({self._input: self.x[start:stop].copy()}, labels)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.x.tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        return h.hexdigest()

    def summary(self) -> DataSummary:
        return DataSummary(source="in-test arrays", kind="npy", num_samples=len(self))


class SessionRunner:
    """Minimal Runner over onnxruntime.InferenceSession (one thread: tests share 2 cores)."""

    def __init__(self, model: onnx.ModelProto | str | Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

        for key, value in EXACT_INT8_SESSION_CONFIG.items():  # Q/DQ as TensorRT computes it, on every CPU
            options.add_session_config_entry(key, value)
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        self._sess: Any = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.closed = False
        self.feeds: list[dict[str, np.ndarray]] = []

    def __enter__(self) -> SessionRunner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec(i.name, tuple(i.shape), np.dtype(np.float32)) for i in self._sess.get_inputs()]

    def output_names(self) -> list[str]:
        return [o.name for o in self._sess.get_outputs()]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({k: v.copy() for k, v in feed.items()})
        values = self._sess.run(None, feed)
        return dict(zip(self.output_names(), values, strict=True))

    def close(self) -> None:
        self.closed = True
