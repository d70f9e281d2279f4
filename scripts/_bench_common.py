"""Shared pieces of the benchmark scripts: benchmark models built with onnx.helper, data, timing.

The models have random (seeded) weights; what the benchmarks measure (time, memory, kernel fusion)
depends on the architecture and the tensor sizes, not on trained values. Every model has a
dynamic batch dimension "N" so one model serves every batch size.

- ``resnet50``: torchvision's ResNet-50 v1.5 layout (Conv-BN-Relu, bottlenecks [3, 4, 6, 3], stride
  in the 3x3 conv, 1x1 downsample, residual Add then Relu, global average pool, Gemm 2048->1000),
  224x224 input.
- ``mobilenetv2``: MobileNetV2's inverted residuals (1x1 expand, 3x3 depthwise, 1x1 project,
  Clip(0, 6) as ReLU6, residual Add where shapes allow), 224x224 input.
- ``transformer``: a BERT-base-like encoder layer stack (MatMul Q/K/V, per-head attention with
  Softmax, LayerNormalization, Gelu FFN, residual Adds), input (N, 128, 768).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
MODELS = ("resnet50", "mobilenetv2", "transformer")


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def init(self, prefix: str, array: np.ndarray) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def shape(self, prefix: str, dims: Sequence[int]) -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: Sequence[str], prefix: str | None = None, **attrs: Any) -> str:
        out = self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs))
        return out

    def conv_bn(
        self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1, gamma: float = 1.0
    ) -> str:
        fan_in = cin // group * k * k
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        pad = k // 2
        y = self.node(
            "Conv",
            [x, self.init("w", w)],
            "conv",
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )
        scale = gamma * (1.0 + 0.1 * self.rng.standard_normal(cout))
        bias = 0.1 * self.rng.standard_normal(cout)
        mean = 0.1 * self.rng.standard_normal(cout)
        var = 1.0 + 0.2 * self.rng.random(cout)
        return self.node(
            "BatchNormalization",
            [
                y,
                self.init("bn_s", scale),
                self.init("bn_b", bias),
                self.init("bn_m", mean),
                self.init("bn_v", var),
            ],
            "bn",
            epsilon=1e-5,
        )

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], output: str, out_shape: list[Any]
    ) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], ["output"], name="output_identity"))
        graph = helper.make_graph(
            self.nodes,
            name,
            inputs,
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
            initializer=self.inits,
        )
        m = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="quant-bench"
        )
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def resnet50(seed: int = 0, size: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-50 v1.5 with BatchNorm (folded by quant's cleanup), dynamic batch."""
    b = _Builder(seed)
    x = b.node("Relu", [b.conv_bn("input", 3, 64, 7, 2)])
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            cout = width * 4
            y = b.node("Relu", [b.conv_bn(x, cin, width, 1)])
            y = b.node("Relu", [b.conv_bn(y, width, width, 3, s)])
            y = b.conv_bn(y, width, cout, 1, gamma=0.3)
            skip = b.conv_bn(x, cin, cout, 1, s) if i == 0 else x
            x = b.node("Relu", [b.node("Add", [y, skip])])
            cin = cout
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    w = b.rng.standard_normal((classes, cin)) * np.sqrt(1.0 / cin)
    x = b.node("Gemm", [x, b.init("fc_w", w), b.init("fc_b", np.zeros(classes))], "fc", transB=1)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    return b.model("resnet50", [inp], x, ["N", classes])


def mobilenetv2(seed: int = 1, size: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV2 (width 1.0) with BatchNorm and Clip(0, 6), dynamic batch."""
    b = _Builder(seed)
    zero = b.init("clip_min", np.array(0.0))
    six = b.init("clip_max", np.array(6.0))

    def relu6(t: str) -> str:
        return b.node("Clip", [t, zero, six], "relu6")

    x = relu6(b.conv_bn("input", 3, 32, 3, 2))
    cin = 32
    settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = relu6(b.conv_bn(x, cin, hidden, 1)) if t != 1 else x
            y = relu6(b.conv_bn(y, hidden, hidden, 3, stride, group=hidden))
            y = b.conv_bn(y, hidden, c, 1, gamma=0.5)
            x = b.node("Add", [x, y]) if stride == 1 and cin == c else y
            cin = c
    x = relu6(b.conv_bn(x, cin, 1280, 1))
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    w = b.rng.standard_normal((classes, 1280)) * np.sqrt(1.0 / 1280)
    x = b.node("Gemm", [x, b.init("fc_w", w), b.init("fc_b", np.zeros(classes))], "fc", transB=1)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
    return b.model("mobilenetv2", [inp], x, ["N", classes])


def transformer(
    seed: int = 2, seq: int = 128, dim: int = 768, heads: int = 12, ffn: int = 3072, layers: int = 2
) -> onnx.ModelProto:
    """BERT-like encoder layers (post-LayerNorm): MatMul/Softmax/LayerNorm/Gelu, dynamic batch."""
    b = _Builder(seed)
    hd = dim // heads
    split_shape = b.shape("shape_split", [0, seq, heads, hd])
    merge_shape = b.shape("shape_merge", [0, seq, dim])
    inv = b.init("inv_sqrt_d", np.array(1.0 / np.sqrt(hd)))

    def linear(t: str, cin: int, cout: int) -> str:
        w = b.rng.standard_normal((cin, cout)) * np.sqrt(1.0 / cin)
        y = b.node("MatMul", [t, b.init("w", w)], "matmul")
        return b.node("Add", [y, b.init("bias", 0.02 * b.rng.standard_normal(cout))], "bias_add")

    def layer_norm(t: str) -> str:
        return b.node(
            "LayerNormalization",
            [t, b.init("ln_s", 1.0 + 0.05 * b.rng.standard_normal(dim)), b.init("ln_b", np.zeros(dim))],
            "ln",
            axis=-1,
            epsilon=1e-5,
        )

    def heads_of(t: str, perm: list[int]) -> str:
        return b.node("Transpose", [b.node("Reshape", [t, split_shape], "reshape")], "transpose", perm=perm)

    x = "input"
    for _ in range(layers):
        q = heads_of(linear(x, dim, dim), [0, 2, 1, 3])
        k = heads_of(linear(x, dim, dim), [0, 2, 3, 1])
        v = heads_of(linear(x, dim, dim), [0, 2, 1, 3])
        scores = b.node("Mul", [b.node("MatMul", [q, k], "qk"), inv], "scores")
        attn = b.node("Softmax", [scores], "softmax", axis=-1)
        ctx = b.node("MatMul", [attn, v], "context")
        ctx = b.node(
            "Reshape", [b.node("Transpose", [ctx], "transpose", perm=[0, 2, 1, 3]), merge_shape], "merge"
        )
        x = layer_norm(b.node("Add", [linear(ctx, dim, dim), x], "residual"))
        h = b.node("Gelu", [linear(x, dim, ffn)], "gelu") if OPSET >= 20 else _gelu(b, linear(x, dim, ffn))
        x = layer_norm(b.node("Add", [linear(h, ffn, dim), x], "residual"))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", seq, dim])
    return b.model("transformer", [inp], x, ["N", seq, dim])


def _gelu(b: _Builder, t: str) -> str:
    """Gelu(x) = 0.5 x (1 + erf(x / sqrt 2)) spelt with opset-17 ops (ORT fuses it into Gelu)."""
    r = b.init("inv_sqrt2", np.array(1.0 / np.sqrt(2.0)))
    one = b.init("one", np.array(1.0))
    half = b.init("half", np.array(0.5))
    e = b.node("Erf", [b.node("Mul", [t, r], "gelu_div")], "erf")
    return b.node("Mul", [b.node("Mul", [t, b.node("Add", [e, one], "gelu_add")], "gelu_mul"), half], "gelu")


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "resnet50": resnet50,
    "mobilenetv2": mobilenetv2,
    "transformer": transformer,
}


def input_shape(model: onnx.ModelProto) -> tuple[int, ...]:
    """Per-sample shape of the model's single input."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims[1:])


def sample_data(model: onnx.ModelProto, n: int, seed: int = 0) -> np.ndarray:
    """n samples for the model's input: images in [0, 1] normalised like ImageNet, or token features."""
    rng = np.random.default_rng(seed)
    shape = input_shape(model)
    if len(shape) == 3 and shape[0] == 3:
        x = rng.random((n, *shape), dtype=np.float32)
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
        return ((x - mean) / std).astype(np.float32)
    return rng.standard_normal((n, *shape), dtype=np.float32)


def build_model(name: str, directory: Path) -> Path:
    """Write benchmark model ``name`` to ``directory/name.onnx`` (once) and return the path."""
    path = directory / f"{name}.onnx"
    if not path.exists():
        onnx.save(BUILDERS[name](), str(path))
    return path


# --- measurement -----------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM from /proc/self/status: the high-water mark of this process's own memory. (ru_maxrss
    is no good in a subprocess: Linux carries it over from the parent through fork and exec, so
    a child started by a large parent reports at least the parent's peak.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def run_child(script: Path, args: Sequence[str], *, timeout: float = 3600.0) -> dict[str, Any]:
    """Run ``script --child ARGS`` in a fresh interpreter; its last stdout line is a JSON result.

    Each measurement runs in its own process so that peak RSS (ru_maxrss of that process) counts
    only that measurement.
    """
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), "--child", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        return {"error": "no result from child"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def cpu_info() -> dict[str, Any]:
    """CPU model and core count of this machine (for the reports)."""
    model = "unknown"
    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return {"cpu": model, "cores": os.cpu_count(), "isa": isa}


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)
