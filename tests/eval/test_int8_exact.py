"""quant's INT8 numbers are TensorRT's arithmetic on every CPU.

The models here are built so that a 16-bit saturating multiply-add (ONNX Runtime's u8 x s8
kernels on x86 without VNNI) visibly fails: activations and weights at the ends of the INT8
range, aligned so that adjacent products add up past int16. The first test proves that property
with a NumPy model of the saturating arithmetic, whatever CPU runs it; the others check quant's
prediction against an independent NumPy int32 reference (tests/int8_reference.py). The last test
runs the same checks under ``qemu-x86_64 -cpu EPYC-Rome`` (an AVX2-only CPU: ONNX Runtime then
really takes its saturating kernels), so the AVX2 path is tested on every x86 machine.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.backends.onnxruntime import OrtRunner
from quant.graph.cleanup import cleanup
from quant.graph.qdq import calibration_tensors, insert_qdq
from tests.int8_reference import run_reference, run_reference_model, saturating_u8s8_matmul
from tests.models import make_model, run_model

_ROOT = Path(__file__).resolve().parents[2]


def _big_weights(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Weights whose INT8 values sit near +-127 in every output channel (|w| in [0.85, 1])."""
    return (rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.85, 1.0, size=shape)).astype(np.float32)


def saturating_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv 1x1 (32 ch) -> Relu -> Conv 3x3 -> Add(skip) -> Relu -> Flatten -> Gemm: large weights."""
    rng = np.random.default_rng(seed)
    c = 32
    inits = [
        numpy_helper.from_array(_big_weights(rng, (c, c, 1, 1)), "c1.w"),
        numpy_helper.from_array(np.zeros(c, np.float32), "c1.b"),
        numpy_helper.from_array(_big_weights(rng, (c, c, 3, 3)) / 8, "c2.w"),
        numpy_helper.from_array((0.1 * rng.standard_normal(c)).astype(np.float32), "c2.b"),
        numpy_helper.from_array(_big_weights(rng, (10, c * 4 * 4)), "fc.w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1"], name="c1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["add"], name="add"),
        helper.make_node("Relu", ["add"], ["r2"], name="r2"),
        helper.make_node("Flatten", ["r2"], ["flat"], name="flat", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, 4, 4])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])]
    return make_model(nodes, inputs, outputs, inits, name="saturating_cnn")


def saturating_mlp(seed: int = 1) -> onnx.ModelProto:
    """MatMul (64 -> 64) + bias -> Relu -> MatMul (64 -> 16): large weights, as in tests.models.mlp."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_big_weights(rng, (64, 64)), "w1"),
        numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(np.float32), "b1"),
        numpy_helper.from_array(_big_weights(rng, (64, 16)), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["mm1"], name="mm1"),
        helper.make_node("Add", ["mm1", "b1"], ["h"], name="bias1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("MatMul", ["hr", "w2"], ["output"], name="mm2"),
    ]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 16])]
    return make_model(nodes, inputs, outputs, inits, name="saturating_mlp")


MODELS = {"saturating_cnn": saturating_cnn, "saturating_mlp": saturating_mlp}


def _feed(model: onnx.ModelProto, seed: int = 3, batch: int = 8) -> dict[str, np.ndarray]:
    """Activations spread over the whole range, many at its ends (INT8 values near +-127)."""
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    shape = [batch] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
    x = rng.uniform(-1.0, 1.0, size=shape)
    x = np.sign(x) * np.abs(x) ** 0.3  # pushed towards +-1
    return {inp.name: x.astype(np.float32)}


def _quantized(name: str) -> tuple[onnx.ModelProto, onnx.ModelProto, dict[str, np.ndarray]]:
    clean = cleanup(MODELS[name]())
    feed = _feed(clean)
    return clean, insert_qdq(clean, _amax(clean, feed)).model, feed


def _amax(clean: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Max calibration on the feed itself: INT8 values reach +-127."""
    tensors = calibration_tensors(clean)
    outs = run_model(clean, feed, tensors)
    return {t: float(np.abs(outs[t]).max()) for t in tensors}


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """``10 log10(sum r^2 / sum (r - x)^2)`` over the whole output, as docs/REPORT_SCHEMA.md defines it."""
    r, d = ref.astype(np.float64), ref.astype(np.float64) - x.astype(np.float64)
    return float(10 * np.log10((r * r).sum() / (d * d).sum()))


def _steps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference in INT8 steps of ``a``'s range."""
    return float(np.abs(a - b).max() / (np.abs(a).max() / 127))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_16_bit_saturating_multiply_add_would_visibly_fail_on_these_models(name: str) -> None:
    """The first quantized layer of each model, computed both ways in NumPy: exact int32 and the
    u8 x s8 pairs saturated to int16. The test models are only worth something if they differ."""
    clean, qdq, feed = _quantized(name)
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    q_in = next(n for n in qdq.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    x_q = np.clip(np.rint(feed["input"].astype(np.float64) / float(inits[q_in.input[1]])), -128, 127)
    w_dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and inits[n.input[0]].ndim >= 2)
    w_q = inits[w_dq.input[0]].astype(np.int64)
    if w_q.ndim == 4:  # the 1x1 Conv: channels are the reduction axis, pixels are rows
        rows = x_q.transpose(0, 2, 3, 1).reshape(-1, w_q.shape[1])
        w_q = w_q[:, :, 0, 0].T
    else:
        rows = x_q
    exact = rows.astype(np.int64) @ w_q
    saturated = saturating_u8s8_matmul(rows.astype(np.int64), w_q)
    assert np.abs(exact).max() > 0
    wrong = float(np.abs(saturated - exact).max() / np.abs(exact).max() * 127)
    assert wrong > 10, f"{name}: the saturating path would be off by only {wrong:.2f} output steps"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quant_int8_prediction_matches_the_int32_reference(name: str) -> None:
    """quant's INT8 runner (OrtRunner, exact arithmetic) on the TensorRT placement equals the NumPy
    int32 reference up to float rounding: every output within one INT8 step of the output's range
    (a rounding tie can flip one intermediate quantization), almost all far closer."""
    _clean, qdq, feed = _quantized(name)
    ref = run_reference(qdq, feed)
    # the reference for real models (onnx's evaluator + integer sums) agrees with the small one
    for out, r in run_reference_model(qdq, feed).items():
        assert _steps(ref[out], r) <= 1e-3, out
    with OrtRunner(qdq, threads=1) as runner:
        got = runner.infer(feed)
    for out, r in ref.items():
        assert _steps(r, got[out]) <= 1.0, f"{name}/{out}"
        step = np.abs(r).max() / 127
        close = np.abs(r - got[out]) <= 1e-3 * step
        assert close.mean() >= 0.99, f"{name}/{out}: only {close.mean():.3f} of the values agree to 1e-3 steps"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_report_sqnr_is_the_reference_sqnr(name: str, tmp_path: Path) -> None:
    """The INT8 SQNR that ``quant eval`` writes into report.json is the one the int32 reference
    gives (within 0.05 dB), on models where the saturating arithmetic would be far off."""
    from quant import api
    from quant.config import DataOptions, EvalOptions

    clean, qdq, feed = _quantized(name)
    model_path, qdq_path, data = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "d.npz"
    onnx.save(clean, model_path)
    onnx.save(qdq, qdq_path)
    np.savez(data, **feed)
    rep = api.evaluate(model_path, DataOptions(path=str(data), batch_size=4), int8_model=qdq_path,
                       options=EvalOptions(precisions=("fp32", "int8")))
    doc = rep.to_dict()
    int8 = next(p for p in doc["evaluation"]["precisions"] if p["name"] == "int8")
    fp32 = run_model(clean, feed)
    ref = run_reference(qdq, feed)
    for out in ref:
        expected = sqnr_db(fp32[out], ref[out])
        got = next(o for o in int8["fidelity"] if o["output"] == out)["sqnr_db"]
        assert got == pytest.approx(expected, abs=0.05), out


_EMULATED_AVX2 = """
import json, sys
import numpy as np
sys.path.insert(0, {root!r})
from quant.backends.cpu import host_cpu, resolve_cpu, weight_type_for
from quant.backends.onnxruntime import OrtRunner
from quant.graph.qdq import insert_qdq
from tests.eval.test_int8_exact import _amax, _quantized, _steps, MODELS
from tests.int8_reference import run_reference
result = {{"cpu_class": host_cpu().int8_class}}
for name in sorted(MODELS):
    clean, qdq, feed = _quantized(name)
    ref = run_reference(qdq, feed)
    out = next(iter(ref))
    with OrtRunner(qdq, threads=1) as r:
        exact = r.infer(feed)[out]
    result[name] = {{"exact": _steps(ref[out], exact)}}
    # the CPU deployment form, built for this (emulated) CPU and for a VNNI one, run fused
    for label, weights in (("auto", weight_type_for(resolve_cpu("auto"))), ("vnni", "int8")):
        form = insert_qdq(clean, _amax(clean, feed), target="onnxruntime", weight_type=weights).model
        with OrtRunner(form, threads=1) as r:
            form_exact = r.infer(feed)[out]
        with OrtRunner(form, threads=1, int8="fused") as r:
            form_fused = r.infer(feed)[out]
        result[name]["ort_form_" + label] = _steps(form_exact, form_fused)
print(json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="emulates an x86 CPU")
def test_exact_on_an_emulated_avx2_only_cpu(tmp_path: Path) -> None:
    """Under ``qemu-x86_64 -cpu EPYC-Rome`` (AVX2, no AVX-512, no VNNI) ONNX Runtime takes its
    saturating u8 x s8 kernels. There quant's exact arithmetic still equals the int32 reference,
    and the CPU deployment form built with ``--cpu auto`` (unsigned weights for this CPU class)
    runs fused as it computes exactly; the form built for a VNNI CPU does not (the defect)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 is missing: scripts/install_test_deps.sh installs Debian's qemu-user")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC-Rome (emulated)\nflags\t\t: sse4_1 avx avx2 fma\n")
    script = tmp_path / "emulated.py"
    script.write_text(_EMULATED_AVX2.format(root=str(_ROOT)))
    env = {**os.environ, "QUANT_CPUINFO": str(cpuinfo), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([qemu, "-cpu", "EPYC-Rome", os.path.realpath(sys.executable), str(script)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cpu_class"] == "avx2"
    for name in MODELS:
        assert result[name]["exact"] <= 1.0, (name, result)
        assert result[name]["ort_form_auto"] <= 1.0, (name, result)
        assert result[name]["ort_form_vnni"] > 5.0, (name, result)  # the emulated CPU really saturates
