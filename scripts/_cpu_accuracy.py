"""Accuracy of INT8 CPU deployment forms where they run: ``bench_inference.py --accuracy``.

For one real model (and its calibration / evaluation .npz), builds

- quant's TensorRT placement (``int8-trt``) and its CPU form for each CPU class
  (``int8-ort vnni``: signed weights; ``int8-ort avx2``: unsigned weights, zero point 128),
- ONNX Runtime's own ``quantize_static`` (``quant_pre_process``, QDQ, U8S8, per-channel weights,
  MinMax on the same calibration samples), with and without ``reduce_range`` (7-bit weights, ORT's
  documented remedy for CPUs without VNNI),

then measures each model's outputs against FP32 on the evaluation samples (SQNR over all
outputs' elements, worst output; top-1 agreement when the first output is a class-score matrix),
computed two ways: ``exact`` (Q/DQ as float maths: what the model means, on any CPU) and ``fused``
(ONNX Runtime's integer kernels on this CPU). The measurement step runs again under
``qemu-x86_64 -cpu EPYC-Rome`` (``--emulate``): an AVX2-only CPU, whose CPUID makes ONNX Runtime
take its 16-bit saturating u8 x s8 kernels, so the AVX2 numbers are those kernels' real results
(emulation says nothing about their speed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Variants whose model could not be made (the peer's error, first line), filled by :func:`build`.
FAILED: dict[str, str] = {}

VARIANTS = ("int8-trt", "int8-ort vnni", "int8-ort avx2", "ort quantize_static", "ort quantize_static reduce_range")


def _file(variant: str) -> str:
    return variant.replace(" ", "_") + ".onnx"


def build(model: Path, calib: Path, work: Path, *, method: str) -> None:
    """Write every variant's ONNX model into ``work`` (and fp32.onnx: quant's cleaned model)."""
    import onnx

    from quant import api
    from quant.config import BuildOptions, CalibrationOptions, DataOptions

    work.mkdir(parents=True, exist_ok=True)
    cache = work / "model.cache"
    api.calibrate(str(model), DataOptions(str(calib), batch_size=4), cache=cache,
                  options=CalibrationOptions(method=method, scope="all"), force=True)  # type: ignore[arg-type]
    onnx.save(api.prepare_model(model).clean, str(work / "fp32.onnx"))
    for variant, options in (
        ("int8-trt", BuildOptions(target="tensorrt")),
        ("int8-ort vnni", BuildOptions(target="onnxruntime", cpu="vnni")),
        ("int8-ort avx2", BuildOptions(target="onnxruntime", cpu="avx2")),
    ):
        api.build(str(model), output=work / _file(variant), cache=cache, options=options)
    for reduce_range in (False, True):
        name = "ort quantize_static" + (" reduce_range" if reduce_range else "")
        try:
            _quantize_static(model, calib, work / _file(name), work, reduce_range=reduce_range)
            import onnxruntime as ort

            ort.InferenceSession(str(work / _file(name)), providers=["CPUExecutionProvider"])
        except Exception as exc:  # the peer's failure is a result too: report it, measure the rest
            (work / _file(name)).unlink(missing_ok=True)
            first = str(exc).strip().splitlines()[0][:300]
            FAILED[name] = first
            print(f"  {name} failed: {first}", flush=True)


def _quantize_static(model: Path, calib: Path, out: Path, work: Path, *, reduce_range: bool) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "ort-pre.onnx"
    if not pre.exists():
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        finally:
            root.setLevel(level)
    data = dict(np.load(calib))
    data.pop("labels", None)
    n = len(next(iter(data.values())))

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter([{k: v[i : i + 1] for k, v in data.items()} for i in range(n)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def _run(path: Path, feeds: list[dict[str, np.ndarray]], *, exact: bool) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1 if os.environ.get("QUANT_EMULATED") else len(os.sched_getaffinity(0))
    if exact:
        for k, v in EXACT_INT8_SESSION_CONFIG.items():
            so.add_session_config_entry(k, v)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {k: f[k] for k in names}) for f in feeds]


def _metrics(ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> dict[str, Any]:
    worst = float("inf")
    for j in range(len(ref[0])):
        r = np.concatenate([np.asarray(o[j], np.float64).ravel() for o in ref])
        x = np.concatenate([np.asarray(o[j], np.float64).ravel() for o in got])
        noise = float(((r - x) ** 2).sum())
        worst = min(worst, float("inf") if noise == 0 else 10 * np.log10(float((r * r).sum()) / noise))
    out: dict[str, Any] = {"sqnr_db": worst}
    first = np.asarray(ref[0][0])
    if first.ndim == 2 and first.shape[1] > 1:
        agree = [np.argmax(a[0], 1) == np.argmax(b[0], 1) for a, b in zip(ref, got, strict=True)]
        out["agreement"] = float(np.concatenate(agree).mean() * 100)
    return out


def measure(work: Path, evald: Path, modes: tuple[str, ...]) -> dict[str, Any]:
    """{variant: {mode: metrics}} against fp32.onnx on the evaluation samples, one sample a run."""
    data = dict(np.load(evald))
    data.pop("labels", None)
    n = len(next(iter(data.values())))
    feeds = [{k: v[i : i + 1] for k, v in data.items()} for i in range(n)]
    ref = _run(work / "fp32.onnx", feeds, exact=True)
    result: dict[str, Any] = {}
    for variant in VARIANTS:
        path = work / _file(variant)
        if not path.exists():
            continue
        result[variant] = {m: _metrics(ref, _run(path, feeds, exact=m == "exact")) for m in modes}
    return result


def emulated(work: Path, evald: Path) -> dict[str, Any]:
    """:func:`measure` (fused only) under ``qemu-x86_64 -cpu EPYC-Rome``: an AVX2-only CPU."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit("qemu-x86_64 is missing: apt-get install qemu-user")
    out = work / "emulated.json"
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import _cpu_accuracy as a; "
            f"from pathlib import Path; json.dump(a.measure(Path({str(work)!r}), Path({str(evald)!r}), ('fused',)), "
            f"open({str(out)!r}, 'w'))")
    env = {**os.environ, "QUANT_EMULATED": "1", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([qemu, "-cpu", "EPYC-Rome", os.path.realpath(sys.executable), "-c", code], check=True, env=env,
                   stderr=subprocess.DEVNULL)
    print(f"  emulated AVX2-only measurement took {time.perf_counter() - t0:.0f} s", flush=True)
    return dict(json.loads(out.read_text()))


def render(name: str, native: dict[str, Any], emul: dict[str, Any] | None, cpu: str) -> str:
    def cell(m: dict[str, Any] | None) -> str:
        if m is None:
            return "-"
        text = f"{m['sqnr_db']:.2f}"
        if "agreement" in m:
            text += f" / {m['agreement']:.1f}%"
        return text

    header = ["variant", "exact (any CPU)", f"fused on this CPU ({cpu})"] + (
        ["fused on AVX2-only EPYC (emulated)"] if emul is not None else [])
    rows = []
    for v in VARIANTS:
        if v not in native:
            continue
        row = [v, cell(native[v].get("exact")), cell(native[v].get("fused"))]
        if emul is not None:
            row.append(cell(emul.get(v, {}).get("fused")))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{name}: worst-output SQNR against FP32 in dB (/ top-1 agreement)"]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines += [f"{v}: failed: {why}" for v, why in FAILED.items()]
    return "\n".join(lines)
