#!/usr/bin/env python
"""Inference throughput in ONNX Runtime (CPU): FP32 vs quant's INT8 (both targets) vs FP16.

For each benchmark model (scripts/_bench_common.py; random weights) this script calibrates with
quant (entropy, scope "all", ``--calib-samples`` samples), builds the INT8 model twice from the
same cache (``--target tensorrt``: TensorRT's placement; ``--target onnxruntime``: the CPU
deployment form) and an FP16 model, optionally ONNX Runtime's own pre-processed U8S8 QDQ model
(``quant_pre_process`` + ``quantize_static``, MinMax, per channel), and then measures, with the
same session options for every model (CPU provider, all graph optimizations, as many intra-op
threads as the process has CPUs: some ORT builds ignore the affinity mask otherwise), after ``--warmup`` runs, ``--repeat`` interleaved timed runs per
batch size (1, 8, 32): the median latency, throughput and the throughput ratio to FP32.

It also reports what decides INT8 speed on CPU: the share of Conv / MatMul / Gemm nodes that ONNX
Runtime actually turned into integer kernels (QLinearConv, QGemm, QLinearMatMul,
MatMulIntegerToFloat, ...), counted in the optimized graph ORT writes with
``SessionOptions.optimized_model_filepath``, against those left in float.

    python scripts/bench_inference.py                      # ResNet-50
    python scripts/bench_inference.py --models resnet50,transformer --batch-sizes 1,8 --cores 2
    python scripts/bench_inference.py --accuracy model.onnx calib.npz eval.npz   # see _cpu_accuracy.py

The throughput table has ``int8-ort`` (the CPU form built for VNNI CPUs: signed weights),
``int8-ort-u8`` (built for x86 without VNNI: unsigned weights), ``int8-trt`` (TensorRT's placement,
fused where ORT can) and ``int8-trt-exact`` (the same model as quant evaluates it: Q/DQ as float
maths, exact on every CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

#: ONNX Runtime CPU kernels that compute a Conv / MatMul / Gemm in integers.
INTEGER_KERNELS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QGemm",
        "DynamicQuantizeMatMul",
        "QAttention",
        "QLinearConvTranspose",
    }
)
#: The same ops left in floating point (ORT's fused / layout-transformed variants included).
FLOAT_KERNELS = frozenset(
    {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm", "NhwcConv"}
)


def kernel_counts(model_path: Path, work: Path, *, exact: bool = False) -> dict[str, Any]:
    """Integer vs float Conv/MatMul/Gemm kernels in the graph ONNX Runtime runs for ``model_path``."""
    import onnx
    import onnxruntime as ort

    out = work / (model_path.stem + (".exact" if exact else "") + ".optimized.onnx")
    options = _session_options(exact=exact)
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    integer = sum(v for k, v in ops.items() if k in INTEGER_KERNELS)
    floating = sum(v for k, v in ops.items() if k in FLOAT_KERNELS)
    return {
        "integer": integer,
        "float": floating,
        "share": integer / (integer + floating) if integer + floating else 0.0,
        "ops": {k: v for k, v in sorted(ops.items()) if k in INTEGER_KERNELS | FLOAT_KERNELS},
    }


def build_models(name: str, args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """FP32 (as built), INT8 for both targets and FP16 through quant's API; ORT's own QDQ model."""
    import numpy as np
    import onnx

    from quant import api
    from quant.config import BuildOptions, CalibrationOptions, DataOptions

    fp32 = bc.build_model(name, work)
    model = onnx.load(str(fp32), load_external_data=False)
    data = work / f"{name}_calib.npz"
    np.savez(data, input=bc.sample_data(model, args.calib_samples, seed=1))
    cache = work / f"{name}.cache"
    t0 = time.perf_counter()
    api.calibrate(
        str(fp32),
        DataOptions(str(data), batch_size=8),
        cache=cache,
        options=CalibrationOptions(method="entropy", scope="all"),
        force=True,
    )
    print(
        f"  calibrated {name} on {args.calib_samples} samples in {time.perf_counter() - t0:.1f} s", flush=True
    )
    models = {"fp32": fp32}
    for label, options in (
        ("int8-ort", BuildOptions(precision="int8", target="onnxruntime", cpu="vnni")),
        ("int8-ort-u8", BuildOptions(precision="int8", target="onnxruntime", cpu="avx2")),
        ("int8-trt", BuildOptions(precision="int8", target="tensorrt")),
    ):
        out = work / f"{name}.{label}.onnx"
        api.build(str(fp32), output=out, cache=cache, options=options)
        models[label] = out
    # The TensorRT placement as quant evaluates it: Q/DQ as float maths (exact on every CPU).
    models["int8-trt-exact"] = models["int8-trt"]
    if args.fp16:
        out = work / f"{name}.fp16.onnx"
        api.build(str(fp32), output=out, options=BuildOptions(precision="fp16"))
        models["fp16"] = out
    if args.ort_qdq:
        try:
            models["ort-qdq"] = _ort_own_qdq(fp32, data, work)
        except Exception as exc:  # optional comparison: report and go on
            print(f"  ONNX Runtime's own quantization failed: {exc}", flush=True)
    return models


def _ort_own_qdq(fp32: Path, data: Path, work: Path) -> Path:
    """ONNX Runtime's recommended CPU recipe: quant_pre_process, then quantize_static (QDQ, U8S8,
    per-channel weights, MinMax on 8 samples)."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / (fp32.stem + ".ort-pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quant_pre_process warns through the root logger, once per BN weight
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    finally:
        root.setLevel(level)
    samples = np.load(data)["input"][:8]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"input": samples[i : i + 4]} for i in range(0, len(samples), 4)])

        def get_next(self) -> dict[str, Any] | None:
            return next(self._batches, None)

    out = work / (fp32.stem + ".ort-qdq.onnx")
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return out


#: Models run with Q/DQ as float maths (quant.backends.onnxruntime.EXACT_INT8_SESSION_CONFIG).
EXACT = frozenset({"int8-trt-exact"})


def _session_options(*, exact: bool) -> Any:
    """The same session options for every model; ``exact`` adds the config that keeps Q/DQ unfused."""
    import onnxruntime as ort

    from quant.backends.onnxruntime import EXACT_INT8_SESSION_CONFIG

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    if exact:
        for key, value in EXACT_INT8_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
    return options


def measure(
    models: dict[str, Path], name: str, args: argparse.Namespace
) -> dict[str, dict[int, dict[str, float]]]:
    """Median latency per (precision, batch size); runs interleaved across precisions."""
    import onnx
    import onnxruntime as ort

    sessions = {
        k: ort.InferenceSession(str(p), _session_options(exact=k in EXACT), providers=["CPUExecutionProvider"])
        for k, p in models.items()
    }
    sample_model = onnx.load(str(models["fp32"]), load_external_data=False)
    results: dict[str, dict[int, dict[str, float]]] = {k: {} for k in sessions}
    for batch in args.batch_sizes:
        feed = {"input": bc.sample_data(sample_model, batch, seed=2)}
        for s in sessions.values():
            for _ in range(args.warmup):
                s.run(None, feed)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.repeat):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feed)
                times[k].append(time.perf_counter() - start)
        fp32 = bc.median(times["fp32"])
        for k, ts in times.items():
            med = bc.median(ts)
            results[k][batch] = {"latency_s": med, "throughput": batch / med, "ratio": fp32 / med}
        line = ", ".join(f"{k} {results[k][batch]['ratio']:.2f}x" for k in sessions)
        print(f"  {name} batch {batch}: fp32 {fp32 * 1000:.1f} ms; {line}", flush=True)
    return results


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"machine: {results['machine']}", f"command: {results['command']}", ""]
    header = ["model", "precision", "integer kernels", "share"]
    for b in args.batch_sizes:
        header += [f"b{b} img/s", f"b{b} vs fp32"]
    rows = []
    for m in results["models"]:
        for prec, per in m["throughput"].items():
            k = m["kernels"][prec]
            row = [
                m["model"],
                prec,
                f"{k['integer']}/{k['integer'] + k['float']}",
                f"{100 * k['share']:.0f}%",
            ]
            for b in args.batch_sizes:
                row += [f"{per[b]['throughput']:.1f}", f"{per[b]['ratio']:.2f}"]
            rows.append(row)
    lines.append(
        f"Throughput in ONNX Runtime (CPU provider, same session options; medians of {args.repeat} runs after "
        f"{args.warmup} warm-up), ratio to FP32, and the share of Conv/MatMul/Gemm run as integer kernels:"
    )
    lines.append(bc.format_table(header, rows))
    for m in results["models"]:
        lines.append(f"\n{m['model']}: kernels in ORT's optimized graph")
        for prec, k in m["kernels"].items():
            lines.append(f"  {prec}: {k['ops']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50", help="comma-separated: " + ", ".join(bc.MODELS))
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--no-fp16", dest="fp16", action="store_false")
    p.add_argument(
        "--no-ort-qdq",
        dest="ort_qdq",
        action="store_false",
        help="skip ONNX Runtime's own pre-processed U8S8 QDQ model",
    )
    p.add_argument("--cores", type=int, default=None, help="pin this process to this many CPUs")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--accuracy", nargs=3, type=Path, default=None, metavar=("MODEL", "CALIB", "EVAL"),
                   help="instead of throughput: accuracy of the INT8 CPU forms of a real MODEL (calibrated on the "
                   "CALIB .npz, measured on the EVAL .npz), exact and fused, here and on an emulated AVX2-only CPU")
    p.add_argument("--method", default="entropy", help="quant's calibration method for --accuracy")
    p.add_argument("--no-emulate", dest="emulate", action="store_false",
                   help="--accuracy: skip the qemu-emulated AVX2-only measurement")
    args = p.parse_args(argv)
    if args.accuracy is not None:
        return _accuracy(args, argv)
    args.models = [m for m in args.models.split(",") if m]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    info = bc.cpu_info()
    if args.cores:
        total = info["cores"]
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
        info["cores"] = f"{args.cores} (pinned, of {total})"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": info,
        "command": "python scripts/bench_inference.py " + " ".join(argv),
        "models": [],
    }
    try:
        for name in args.models:
            print(f"\n== {name} ==", flush=True)
            models = build_models(name, args, work)
            kernels = {k: kernel_counts(v, work, exact=k in EXACT) for k, v in models.items()}
            throughput = measure(models, name, args)
            results["models"].append({"model": name, "kernels": kernels, "throughput": throughput})
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(results, args)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _accuracy(args: argparse.Namespace, argv: list[str]) -> int:
    import _cpu_accuracy as acc

    model, calib, evald = args.accuracy
    info = bc.cpu_info()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-acc-"))
    try:
        acc.build(model, calib, work, method=args.method)
        native = acc.measure(work, evald, ("exact", "fused"))
        emul = acc.emulated(work, evald) if args.emulate else None
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join([
        f"machine: {info}",
        "command: python scripts/bench_inference.py " + " ".join(str(a) for a in argv),
        "",
        acc.render(model.parent.name or model.stem, native, emul, " ".join(info["isa"])),
    ])
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "native": native, "emulated_avx2": emul}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
