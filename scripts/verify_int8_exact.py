#!/usr/bin/env python
"""Is the INT8 SQNR in quant's report.json TensorRT's arithmetic? Recomputed independently.

For each model folder written by ``scripts/real_models.py prepare`` (model.onnx, calib.npz,
eval.npz): ``quant calibrate`` (``--method``, default entropy), ``quant build`` (TensorRT
placement), ``quant eval --precisions fp32,int8 --int8-model ...`` writes report.json; then the
same Q/DQ model is recomputed with tests/int8_reference.py (onnx's reference evaluator for every
op, integer sums in int64 for each quantized Conv / MatMul / Gemm, Q/DQ as ONNX defines them),
and its SQNR against FP32 is compared with the report's, output by output.

``--emulate`` runs the ``quant eval`` step under ``qemu-x86_64 -cpu EPYC-Rome`` (an AVX2-only
CPU: ONNX Runtime's integer kernels there saturate), to show that the report does not depend on
the CPU. It is slow (emulation): use it on the small models.

    python scripts/real_models.py prepare --out /tmp/real
    python scripts/verify_int8_exact.py /tmp/real/ppocr_cls /tmp/real/yolov8n_nudenet --work /tmp/verify
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

from tests.int8_reference import run_reference_model, with_integer_ops  # noqa: E402

EMULATED_CPUINFO = "processor\t: 0\nmodel name\t: AMD EPYC-Rome (emulated)\nflags\t\t: sse4_1 avx avx2 fma\n"


def _quant(args: list[str], *, emulate: bool, work: Path) -> None:
    cmd = [sys.executable, "-c", "from quant.cli.main import main; main()", *args]
    env = dict(os.environ)
    if emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise SystemExit("qemu-x86_64 is missing: apt-get install qemu-user")
        cpuinfo = work / "emulated_cpuinfo"
        cpuinfo.write_text(EMULATED_CPUINFO)
        env["QUANT_CPUINFO"] = str(cpuinfo)
        cmd = [qemu, "-cpu", "EPYC-Rome", os.path.realpath(sys.executable), *cmd[1:]]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stderr=subprocess.DEVNULL if emulate else None,
                   stdout=subprocess.DEVNULL)


def _sqnr(ref: np.ndarray, x: np.ndarray) -> float:
    r, d = ref.astype(np.float64), ref.astype(np.float64) - x.astype(np.float64)
    return float(10 * np.log10((r * r).sum() / (d * d).sum()))


def verify(folder: Path, work: Path, *, method: str, emulate: bool) -> dict[str, object]:
    import onnx
    import onnxruntime as ort

    name = folder.name
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    model, calib, evald = folder / "model.onnx", folder / "calib.npz", folder / "eval.npz"
    cache, qdq, report = out / "model.cache", out / "model.int8.onnx", out / "report.json"
    _quant(["calibrate", str(model), "--data", str(calib), "--method", method, "--cache", str(cache),
            "--batch-size", "1", "--force"], emulate=False, work=out)
    _quant(["build", str(model), "--cache", str(cache), "-o", str(qdq)], emulate=False, work=out)
    t0 = time.perf_counter()
    _quant(["eval", str(model), "--data", str(evald), "--int8-model", str(qdq), "--precisions", "fp32,int8",
            "--batch-size", "1", "--report", str(report)], emulate=emulate, work=out)
    eval_s = time.perf_counter() - t0
    doc = json.loads(report.read_text())
    int8 = next(p for p in doc["evaluation"]["precisions"] if p["name"] == "int8")
    reported = {f["output"]: f["sqnr_db"] for f in int8["fidelity"]}

    data = dict(np.load(evald))
    data.pop("labels", None)
    q = onnx.load(str(qdq))
    _, replaced = with_integer_ops(q)
    from quant import api

    clean = api.prepare_model(model).clean
    sess = ort.InferenceSession(clean.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in q.graph.output]
    n = len(next(iter(data.values())))
    ref_fp32: dict[str, list[np.ndarray]] = {o: [] for o in outs}
    ref_int8: dict[str, list[np.ndarray]] = {o: [] for o in outs}
    t0 = time.perf_counter()
    for i in range(n):
        feed = {k: v[i : i + 1] for k, v in data.items()}
        for o, v in zip(outs, sess.run(outs, feed), strict=True):
            ref_fp32[o].append(v)
        got = run_reference_model(q, feed)
        for o in outs:
            ref_int8[o].append(got[o])
    ref_s = time.perf_counter() - t0
    rows = {}
    for o in outs:
        expected = _sqnr(np.concatenate(ref_fp32[o]), np.concatenate(ref_int8[o]))
        rows[o] = {"report": reported[o], "reference": expected, "difference": reported[o] - expected}
    return {"model": name, "integer_ops": replaced, "outputs": rows, "eval_seconds": round(eval_s, 1),
            "reference_seconds": round(ref_s, 1), "emulated": emulate,
            "arithmetic": doc["environment"].get("int8_arithmetic", {}).get("int8"),
            "cpu_int8_class": doc["environment"].get("cpu_int8_class")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/quant-verify"))
    p.add_argument("--method", default="entropy")
    p.add_argument("--emulate", action="store_true", help="run quant eval on an emulated AVX2-only CPU (qemu)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    info = bc.cpu_info()
    results = [verify(f, args.work, method=args.method, emulate=args.emulate) for f in args.folders]
    where = "emulated AVX2-only EPYC (qemu EPYC-Rome)" if args.emulate else f"{info['cpu']} [{' '.join(info['isa'])}]"
    print(f"machine: {info}\ncommand: python scripts/verify_int8_exact.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"quant eval ran on: {where}\n")
    print("| model | output | report.json INT8 SQNR dB | int32 reference SQNR dB | difference dB |")
    print("|---|---|---|---|---|")
    for r in results:
        for o, v in r["outputs"].items():  # type: ignore[attr-defined]
            print(f"| {r['model']} | {o} | {v['report']:.3f} | {v['reference']:.3f} | {v['difference']:+.4f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
