"""Shared tools of the reliability suite: run the real CLI, snapshot folders, build bad inputs.

Every bad-input test goes through :func:`run_cli` (the real ``quant.cli.main.main`` with
``--quiet``, so only warnings and errors reach stderr) and checks with :func:`assert_fails_cleanly`:
exactly one stderr line, no traceback, the exit code, the message naming the culprit, and the
output folder byte-for-byte as it was (no new, changed or temporary files).
"""

from __future__ import annotations

import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.cli.main import main
from tests.models import make_model

TMP_MARK = ".quant-tmp-"


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path, quiet: bool = True) -> CliResult:
    """Run ``quant [-q] args`` in this process; the exit code and what it printed."""
    argv = (["-q"] if quiet else []) + [str(a) for a in args]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    code = exc.value.code
    return CliResult(code if isinstance(code, int) else 0, out, err)


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under ``roots`` (hidden ones too): path -> bytes."""
    files: dict[str, bytes] = {}
    for root in roots:
        if root.is_file():
            files[str(root)] = root.read_bytes()
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


def temp_leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.startswith(TMP_MARK))


def assert_fails_cleanly(
    result: CliResult,
    *,
    code: int,
    names: tuple[str, ...] | list[str],
    before: dict[str, bytes] | None = None,
    roots: tuple[Path, ...] = (),
) -> str:
    """One stderr line (an error, no traceback), ``code``, every string of ``names`` in the message,
    and nothing under ``roots`` changed since ``before``. Returns the message line."""
    assert result.code == code, (result.code, result.err)
    assert "Traceback" not in result.err
    lines = result.err_lines
    assert len(lines) == 1, f"expected one stderr line, got:\n{result.err}"
    line = lines[0]
    assert line.startswith("quant") and ": error: " in line, line
    for name in names:
        assert name in line, f"{name!r} not in {line!r}"
    if before is not None:
        after = snapshot(*roots)
        assert set(after) == set(before), f"files changed: {sorted(set(after) ^ set(before))}"
        changed = [p for p in before if before[p] != after[p]]
        assert not changed, f"files modified: {changed}"
    for root in roots:
        if root.is_dir():
            assert not temp_leftovers(root)
    return line


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def copy_demo_images(dest: Path, count: int = 10) -> list[Path]:
    """``count`` real MNIST PNGs of the embedded demo, flat in ``dest``."""
    from quant.demo import demo_calib_dir

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(demo_calib_dir().rglob("*.png"))[:count]:
        target = dest / f"{src.parent.name}_{src.name}"
        shutil.copy(src, target)
        out.append(target)
    return out


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` gray pixels (a decompression bomb's header) with a
    tiny compressed body; Pillow reads the size from the header before decoding anything."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def with_input_shape(model: onnx.ModelProto, shape: list[int | str]) -> onnx.ModelProto:
    """A copy of ``model`` whose first input has ``shape`` (str = a named dynamic dim)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    for d in shape:
        dim = dims.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d
    return m


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def log_model() -> onnx.ModelProto:
    """input (N, 4) -> MatMul(I) "mm_out" -> Log "log_out" -> MatMul "output": a negative input
    gives NaN in "log_out", a zero gives -inf."""
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    w2 = numpy_helper.from_array(np.ones((4, 2), np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["mm_out"], name="mm"),
        helper.make_node("Log", ["mm_out"], ["log_out"], name="log"),
        helper.make_node("MatMul", ["log_out", "w2"], ["output"], name="mm2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2])],
        [w, w2],
        name="log_model",
    )


def zero_branch_model() -> onnx.ModelProto:
    """input (N, 4) -> MatMul(W) -> Relu -> MatMul "output", plus a branch that is all zeros:
    MatMul(input, 0) "zero_out" -> Relu "zero_relu" -> MatMul "zero_mm" (a second output)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "w2")
    z = numpy_helper.from_array(np.zeros((4, 4), np.float32), "z")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["mm_out"], name="mm"),
        helper.make_node("Relu", ["mm_out"], ["relu_out"], name="relu"),
        helper.make_node("MatMul", ["relu_out", "w2"], ["output"], name="mm2"),
        helper.make_node("MatMul", ["input", "z"], ["zero_out"], name="mmz"),
        helper.make_node("Relu", ["zero_out"], ["zero_relu"], name="zrelu"),
        helper.make_node("MatMul", ["zero_relu", "w2"], ["zero_mm"], name="mmz2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("zero_mm", TensorProto.FLOAT, ["N", 2]),
        ],
        [w, w2, z],
        name="zero_branch_model",
    )


def integer_model() -> onnx.ModelProto:
    """int64 in, int64 out: nothing float to calibrate or quantize."""
    nodes = [helper.make_node("Add", ["input", "input"], ["out"], name="add")]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("input", TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["N", 4])],
        [],
        name="integer_model",
    )


def custom_op_model() -> onnx.ModelProto:
    """One node of an unregistered custom domain (what a plugin op looks like)."""
    nodes = [helper.make_node("MyPluginOp", ["input"], ["out"], domain="com.example", name="plugin")]
    graph = helper.make_graph(
        nodes,
        "custom_op_model",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 16])],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    m.ir_version = 8
    return m


def with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = version
    return m
