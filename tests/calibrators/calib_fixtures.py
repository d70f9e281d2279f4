"""Helpers for the calibrator tests: a tiny in-memory Dataset, small ONNX models, loop references."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.datasets.base import Batch, DataSummary


class ArrayDataset:
    """A re-iterable dataset over in-memory arrays (satisfies quant.datasets.base.Dataset)."""

    def __init__(self, feeds: dict[str, np.ndarray], source: str = "arrays") -> None:
        self._feeds = feeds
        self._source = source
        self._n = int(next(iter(feeds.values())).shape[0]) if feeds else 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._feeds)

    @property
    def has_labels(self) -> bool:
        return False

    def __len__(self) -> int:
        return self._n

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for start in range(0, self._n, batch_size):
            yield Batch({k: np.array(v[start : start + batch_size]) for k, v in self._feeds.items()})

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for k, v in self._feeds.items():
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes())
        return h.hexdigest()

    def summary(self) -> DataSummary:
        return DataSummary(source=self._source, kind="npz", num_samples=self._n)


def _model(nodes, inputs, outputs, inits=(), opset: int = 17, name: str = "test-model") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model)
    return model


def conv_relu_conv(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(4) -> conv1_out -> Relu -> relu_out -> Conv(2) -> y."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1_out"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["conv1_out"], ["relu_out"], name="relu"),
        helper.make_node("Conv", ["relu_out", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
        [w1, b1, w2],
    )


def matmul_model(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """x[N,6] -> MatMul(W) -> mm_out -> Mul(zero) -> zero_out -> Add(mm_out) -> y; returns (model, W)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["mm_out"]),
        helper.make_node("Mul", ["mm_out", "zero"], ["zero_out"]),
        helper.make_node("Add", ["mm_out", "zero_out"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        inits,
    )
    return model, w


def two_io_model() -> onnx.ModelProto:
    """a[N,4] float, b[N,4] float -> sum = a + b, prod = a * b (two outputs)."""
    nodes = [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["N", 4]),
        ],
    )


# ---- straightforward loop references (independent of the vectorised code under test) ----


def reference_kl(counts: np.ndarray, i: int, levels: int = 128) -> float:
    """KL(P||Q) for threshold bin i, written as a loop the way pytorch-quantization describes it."""
    bins = counts.astype(np.float64).copy()
    bins[0] = bins[1]
    space = np.linspace(0, i, num=levels + 1)
    digitized = np.digitize(np.arange(i), space) - 1
    digitized[bins[:i] == 0] = -1
    level_total = np.zeros(levels)
    for b, d in enumerate(digitized):
        if d != -1:
            level_total[d] += bins[b]
    members = Counter(int(d) for d in digitized)
    for key, val in members.items():
        if key != -1:
            level_total[key] /= val
    q = np.array([level_total[d] if d != -1 else 0.0 for d in digitized])
    p = bins[:i].copy()
    p[-1] += bins[i:].sum()
    p_sum, q_sum = p.sum(), q.sum()
    kl = 0.0
    for pb, qb in zip(p, q, strict=True):
        if pb == 0:
            continue
        if qb == 0:
            return float("inf")
        pn, qn = pb / p_sum, qb / q_sum
        kl += pn * np.log(pn / qn)
    return float(kl)


def reference_entropy_bin(counts: np.ndarray, start: int = 128) -> tuple[int, np.ndarray]:
    """(chosen i, KL per candidate) by looping over candidates; ties (1e-10 abs + 1e-9 rel) -> larger i."""
    kls = np.array([reference_kl(counts, i) for i in range(start, len(counts) + 1)])
    best = kls.min()
    chosen = max(
        i
        for i, kl in zip(range(start, len(counts) + 1), kls, strict=True)
        if kl <= best + 1e-10 + 1e-9 * abs(best)
    )
    return chosen, kls


def brute_force_mse(counts: np.ndarray, bin_width: float, start: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(amax candidates, mse) over a full candidates x bins evaluation with np.round (half to even)."""
    n = len(counts)
    centres = (np.arange(n) + 0.5) * bin_width
    amaxes, errs = [], []
    for i in range(start, n + 1):
        amax = i * bin_width
        step = amax / 127
        # level computed from exact integers so that ties are exact: (b + 0.5) * 127 / i
        level = np.clip(np.round((np.arange(n) + 0.5) * 127 / i), 0, 127)
        q = level * step
        errs.append(float(np.sum(counts * (centres - q) ** 2) / counts.sum()))
        amaxes.append(amax)
    return np.array(amaxes), np.array(errs)
