#!/usr/bin/env python
"""Calibration cost, side by side: quant vs a plain FP32 forward pass vs ONNX Runtime's quantizer.

Builds the benchmark models itself (scripts/_bench_common.py: ResNet-50, a MobileNetV2, a
transformer encoder; random weights), makes the data, and measures in one run, every measurement
in its own subprocess (so that each peak RSS is that measurement's alone):

- ``forward``: a plain FP32 ONNX Runtime session over the same samples (same .npz loader, same
  batch size, default session options), session creation included;
- ``quant``: ``quant.api.calibrate`` (what ``quant calibrate`` runs: load, clean-up, fingerprint,
  statistics, amax, cache + sidecar + statistics files) per method and scope, plus, for the
  first method and scope, the same run with the NumPy histogram path (where no C compiler built
  the kernel) and the same run fetching NCHW tensors instead of ORT's blocked ones;
- ``amax``: amax of every tensor with all four methods from the statistics file quant wrote;
- ``jpeg``: ``quant.api.calibrate`` from a JPEG folder and from the same samples, decoded once
  and preloaded in an .npz;
- ``ort``: ``onnxruntime.quantization.quantize_static`` (QDQ, Entropy and MinMax, its defaults)
  when onnxruntime has it, guarded by ``--ort-samples`` and a check of the available memory
  (its histogram calibrators keep every activation of every sample: ~16 GB for ResNet-50 at 128).

Times are medians over ``--repeat`` interleaved repetitions; every figure in the summary is a
ratio of two measurements of this run. The calibration table also pairs each quant run with the
forward pass of its own repetition (median and range of those ratios), which a machine whose speed
drifts between repetitions affects less. ``--cores N`` pins every subprocess to N CPUs, so a big
machine can stand in for the 2-core target; every ONNX Runtime session (the plain forward pass,
quant's, and those of ``quantize_static``) gets as many intra-op threads as the process has CPUs,
because some ORT builds size their default pool from the machine and ignore the affinity mask.

    python scripts/bench_calibration.py                       # ResNet-50, 128/512 samples
    python scripts/bench_calibration.py --models resnet50,mobilenetv2,transformer --repeat 3
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402

SCRIPT = Path(__file__).resolve()
METHODS = ("entropy", "minmax", "percentile", "mse")


# --------------------------------------------------------------------------------------------
# children: one measurement each, result as one JSON line on stdout
# --------------------------------------------------------------------------------------------


def _child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    info: dict[str, Any] = {}
    if kind == "forward":
        info = _child_forward(spec)
    elif kind == "quant":
        info = _child_quant(spec)
    elif kind == "amax":
        info = _child_amax(spec)
    elif kind == "ort":
        info = _child_ort(spec)
    elif kind == "decode":
        info = _child_decode(spec)
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mb": bc.peak_rss_mb(), **info}


def _npz_dataset(spec: dict[str, Any]) -> Any:
    import onnx

    from quant.datasets.loader import open_dataset
    from quant.graph.load import input_specs

    model = onnx.load(spec["model"], load_external_data=False)
    return open_dataset(
        spec["data"],
        inputs=input_specs(model),
        preprocess=None,
        max_samples=spec["n"],
        seed=0,
        on_bad_image="fail",
        workers=None,
    )


def _child_forward(spec: dict[str, Any]) -> dict[str, Any]:
    import onnxruntime as ort

    dataset = _npz_dataset(spec)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = len(os.sched_getaffinity(0))  # as quant's sessions (see module doc)
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    seen = 0
    for batch in dataset.batches(spec["batch"]):
        session.run(None, batch.feed)
        seen += batch.size
    return {"samples": seen}


class _LayoutLog(logging.Handler):
    """Records the activation layout calibration reports in its summary log line."""

    layout = "?"

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("collected statistics") and record.args:
            self.layout = str(record.args[-1])  # type: ignore[index]


def _child_quant(spec: dict[str, Any]) -> dict[str, Any]:
    import importlib

    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    calibrate_module = importlib.import_module("quant.calibrators.calibrate")
    if spec.get("layout") == "plain":  # the NCHW path, for the side-by-side comparison
        calibrate_module._BLOCKED = False
    log = _LayoutLog()
    calibrate_module.logger.addHandler(log)
    calibrate_module.logger.setLevel(logging.INFO)

    data = DataOptions(
        spec["data"], batch_size=spec["batch"], max_samples=spec["n"], preprocess=spec.get("preprocess")
    )
    options = CalibrationOptions(method=spec["method"], scope=spec["scope"])
    outcome = api.calibrate(spec["model"], data, cache=spec["cache"], options=options, force=True)
    from quant.calibrators.stats import histogram_kernel

    return {
        "kernel": histogram_kernel(),
        "layout": log.layout.split(" ")[0],
        "samples": outcome.result.num_samples,
        "tensors": len(outcome.result.amax),
        "action": outcome.action,
    }


def _child_amax(spec: dict[str, Any]) -> dict[str, Any]:
    from quant.calibrators.methods import CalibConfig, compute_amax
    from quant.calibrators.stats_io import load_stats

    stats, _meta = load_stats(spec["stats"])
    per: dict[str, float] = {}
    total = 0.0
    for method in METHODS:
        start = time.perf_counter()
        compute_amax(stats, CalibConfig(method=method, num_bins=next(iter(stats.values())).num_bins))
        per[method] = time.perf_counter() - start
        total += per[method]
    return {"tensors": len(stats), "seconds": per, "total_s": total}


class _NpzReader:
    """onnxruntime.quantization's CalibrationDataReader over the same .npz."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self._it = iter(_npz_dataset(spec).batches(spec["batch"]))

    def get_next(self) -> dict[str, Any] | None:
        batch = next(self._it, None)
        return None if batch is None else batch.feed


def _child_ort(spec: dict[str, Any]) -> dict[str, Any]:
    # quantize_static creates its sessions with default options, whose thread pool some ORT builds
    # size from the machine instead of the CPU affinity: give it the same threads as every other
    # measurement here (benchmark harness only; quant itself never patches other libraries).
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        quantize_static,
    )

    threads = len(os.sched_getaffinity(0))
    base_session: Any = ort.InferenceSession

    class PinnedSession(base_session):
        def __init__(self, path_or_bytes: Any, sess_options: Any = None, *a: Any, **k: Any) -> None:
            sess_options = sess_options or ort.SessionOptions()
            sess_options.intra_op_num_threads = threads
            super().__init__(path_or_bytes, sess_options, *a, **k)

    ort.InferenceSession = PinnedSession

    class Reader(_NpzReader, CalibrationDataReader):
        pass

    method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax}[spec["method"]]
    quantize_static(
        spec["model"],
        spec["out"],
        Reader(spec),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        calibrate_method=method,
    )
    return {"samples": spec["n"]}


def _child_decode(spec: dict[str, Any]) -> dict[str, Any]:
    """Decode + preprocess the JPEG folder once with quant's loader; save the samples as .npz."""
    import numpy as np
    import onnx

    from quant.datasets.loader import open_dataset
    from quant.datasets.preprocess import parse_preprocess
    from quant.graph.load import input_specs

    model = onnx.load(spec["model"], load_external_data=False)
    dataset = open_dataset(
        spec["data"],
        inputs=input_specs(model),
        preprocess=parse_preprocess(spec["preprocess"]),
        max_samples=spec["n"],
        seed=0,
        on_bad_image="fail",
        workers=None,
    )
    arrays = [b.feed["input"] for b in dataset.batches(32)]
    np.savez(spec["out"], input=np.concatenate(arrays))
    return {"samples": int(sum(a.shape[0] for a in arrays))}


# --------------------------------------------------------------------------------------------
# the parent: data, runs, tables
# --------------------------------------------------------------------------------------------


def _make_npz(model_path: Path, n: int, path: Path) -> Path:
    import numpy as np
    import onnx

    if not path.exists():
        model = onnx.load(str(model_path), load_external_data=False)
        np.savez(path, input=bc.sample_data(model, n))
    return path


def _make_jpegs(directory: Path, n: int, size: int = 256) -> Path:
    """n synthetic photographs-like JPEGs (smooth colour fields, edges and noise), 256x256."""
    import numpy as np
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    if len(list(directory.glob("*.jpg"))) >= n:
        return directory
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i in range(n):
        a, b, c = rng.random(3)
        img = np.stack(
            [
                np.sin(6 * a * xx + 3 * b) * 0.5 + 0.5,
                np.cos(5 * b * yy + 2 * c) * 0.5 + 0.5,
                (xx * c + yy * a) % 1.0,
            ],
            axis=-1,
        )
        cx, cy, r = rng.random(3) * [size, size, size / 3]
        mask = (np.mgrid[0:size, 0:size][0] - cy) ** 2 + (np.mgrid[0:size, 0:size][1] - cx) ** 2 < r**2
        img[mask] = rng.random(3)
        img = np.clip(img + rng.normal(0, 0.04, img.shape), 0, 1)
        Image.fromarray((img * 255).astype(np.uint8)).save(directory / f"img_{i:05d}.jpg", quality=90)
    return directory


def _available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _activation_gb_per_sample(model_path: Path) -> float:
    """Bytes of every float activation of one sample (what ORT's histogram calibrators keep)."""
    import onnx

    from quant.calibrators.streaming import tensor_bytes
    from quant.graph.cleanup import cleanup

    clean = cleanup(onnx.load(str(model_path)))
    return sum(tensor_bytes(clean, 1).values()) / 2**30


class Runner:
    def __init__(self, cores: int | None, log: list[str]) -> None:
        self.cores = cores
        self.log = log

    def __call__(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        args = [kind, json.dumps(spec)]
        if self.cores:
            cpus = sorted(os.sched_getaffinity(0))[: self.cores]
            args = [*args, "--pin", ",".join(map(str, cpus))]
        result = bc.run_child(SCRIPT, args)
        line = f"  {kind:8s} {json.dumps({k: v for k, v in spec.items() if k in ('method', 'scope', 'n', 'model_name', 'source')})}: "
        if "error" in result:
            line += f"ERROR {result['error']}"
        else:
            line += f"{result['wall_s']:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MiB"
        print(line, flush=True)
        self.log.append(line)
        return result


def _median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if key in r and "error" not in r]
    return bc.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def _paired(ratios: list[float]) -> str:
    if not ratios:
        return "n/a"
    return f"{bc.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def bench_model(name: str, args: argparse.Namespace, work: Path, run: Runner) -> dict[str, Any]:
    model_path = bc.build_model(name, work)
    n = args.samples
    npz = _make_npz(model_path, max(n, max(args.rss_samples)), work / f"{name}_samples.npz")
    base = {"model": str(model_path), "data": str(npz), "batch": args.batch_size, "model_name": name}
    out: dict[str, Any] = {"model": name, "samples": n, "batch_size": args.batch_size}
    print(f"\n== {name} ({n} samples, batch {args.batch_size}) ==", flush=True)

    # time: forward vs quant (per method and scope), interleaved repetitions
    runs: dict[str, list[dict[str, Any]]] = {"forward": []}
    for _rep in range(args.repeat if "time" in args.parts else 0):
        runs.setdefault("forward", []).append(run("forward", {**base, "n": n}))
        for scope in args.scopes:
            for method in args.methods:
                key = f"quant/{method}/{scope}"
                cache = str(work / f"{name}_{method}_{scope}.cache")
                runs.setdefault(key, []).append(
                    run("quant", {**base, "n": n, "method": method, "scope": scope, "cache": cache})
                )
                if args.plain_layout and scope == args.scopes[0] and method == args.methods[0]:
                    # without ORT's blocked tensors (quant/calibrators/blocked.py), in the same run
                    runs.setdefault(f"{key}/plain", []).append(
                        run(
                            "quant",
                            {**base, "n": n, "method": method, "scope": scope, "cache": cache, "layout": "plain"},
                        )
                    )
                if args.numpy_kernel and scope == args.scopes[0] and method == args.methods[0]:
                    # the fallback where no C compiler built the kernel, measured in the same run
                    runs.setdefault(f"{key}/numpy", []).append(
                        run(
                            "quant",
                            {**base, "n": n, "method": method, "scope": scope, "cache": cache, "kernel": "numpy"},
                        )
                    )
    fwd = _median_of(runs["forward"], "wall_s")
    out["forward_s"] = fwd
    out["forward_rss_mb"] = _median_of(runs["forward"], "peak_rss_mb")
    out["quant"] = {}
    for k, v in runs.items():
        if k.startswith("quant/"):
            wall = _median_of(v, "wall_s")
            kernels = sorted({r.get("kernel", "?") for r in v if "error" not in r})
            layouts = sorted({r.get("layout", "?") for r in v if "error" not in r})
            # each repetition's quant run over the forward pass of the same repetition (run next to
            # each other): robust to a machine whose speed drifts between repetitions
            paired = [
                q["wall_s"] / f["wall_s"]
                for q, f in zip(v, runs["forward"], strict=False)
                if "error" not in q and "error" not in f and f["wall_s"]
            ]
            out["quant"][k] = {
                "kernel": ",".join(kernels),
                "layout": ",".join(layouts),
                "wall_s": wall,
                "ratio": None if fwd is None or wall is None else wall / fwd,
                "paired_ratios": paired,
                "peak_rss_mb": _median_of(v, "peak_rss_mb"),
            }

    # memory: 128 vs 512 samples (entropy, first scope), and against a plain run at the same batch size
    rss: dict[int, dict[str, Any]] = {}
    for count in args.rss_samples if "rss" in args.parts else []:
        cache = str(work / f"{name}_rss{count}.cache")
        rss[count] = {
            "quant": run(
                "quant", {**base, "n": count, "method": "entropy", "scope": args.scopes[0], "cache": cache}
            ),
            "forward": run("forward", {**base, "n": count}),
        }
    out["rss"] = {
        str(k): {
            "quant_mb": v["quant"].get("peak_rss_mb"),
            "forward_mb": v["forward"].get("peak_rss_mb"),
            "quant_s": v["quant"].get("wall_s"),
            "forward_s": v["forward"].get("wall_s"),
        }
        for k, v in rss.items()
    }

    # amax from the statistics quant wrote
    stats = work / f"{name}_entropy_{args.scopes[0]}.cache.stats.npz"
    if not stats.exists() and args.rss_samples:
        stats = work / f"{name}_rss{args.rss_samples[0]}.cache.stats.npz"
    if "amax" in args.parts:
        out["amax"] = (
            run("amax", {"stats": str(stats), "model_name": name})
            if stats.exists()
            else {"error": "no stats"}
        )

    # ONNX Runtime's quantize_static
    out["ort"] = {}
    if args.ort_samples > 0 and "ort" in args.parts:
        need = _activation_gb_per_sample(model_path) * args.ort_samples * 1.25 + 1.0
        avail = _available_gb()
        for method in args.ort_methods:
            if method == "entropy" and need > 0.8 * avail:
                reason = f"skipped: needs ~{need:.1f} GB, {avail:.1f} GB available"
                print(f"  ort      {method}: {reason}", flush=True)
                out["ort"][method] = {"skipped": reason}
                continue
            res = [
                run(
                    "ort",
                    {**base, "n": args.ort_samples, "method": method, "out": str(work / f"{name}_ort.onnx")},
                )
                for _ in range(1)
            ]
            fwd_same = run("forward", {**base, "n": args.ort_samples})
            out["ort"][method] = {
                "samples": args.ort_samples,
                "wall_s": _median_of(res, "wall_s"),
                "peak_rss_mb": _median_of(res, "peak_rss_mb"),
                "forward_s": fwd_same.get("wall_s"),
                "forward_rss_mb": fwd_same.get("peak_rss_mb"),
                "error": res[0].get("error"),
            }
    return out


def bench_jpeg(args: argparse.Namespace, work: Path, run: Runner) -> dict[str, Any]:
    name = args.models[0]
    model_path = bc.build_model(name, work)
    n = args.samples
    folder = _make_jpegs(work / "jpeg", n)
    npz = work / f"{name}_jpeg_decoded.npz"
    preprocess = "imagenet"
    if not npz.exists():
        run(
            "decode",
            {
                "model": str(model_path),
                "data": str(folder),
                "n": n,
                "preprocess": preprocess,
                "out": str(npz),
            },
        )
    print(f"\n== {name}: JPEG folder vs the same samples in an .npz ({n} samples) ==", flush=True)
    base = {
        "model": str(model_path),
        "batch": args.batch_size,
        "n": n,
        "method": "entropy",
        "scope": args.scopes[0],
    }
    jpeg_runs, npz_runs = [], []
    for _rep in range(args.repeat):
        jpeg_runs.append(
            run(
                "quant",
                {
                    **base,
                    "data": str(folder),
                    "preprocess": preprocess,
                    "source": "jpeg",
                    "cache": str(work / "jpeg.cache"),
                },
            )
        )
        npz_runs.append(
            run("quant", {**base, "data": str(npz), "source": "npz", "cache": str(work / "npz.cache")})
        )
    return {"jpeg_s": _median_of(jpeg_runs, "wall_s"), "npz_s": _median_of(npz_runs, "wall_s"), "samples": n}


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"machine: {results['machine']}", f"command: {results['command']}", ""]
    rows = []
    for m in results["models"]:
        fwd = m["forward_s"]
        for key, q in m["quant"].items():
            if q["wall_s"] is None:
                continue
            _, method, scope, *_rest = key.split("/")
            rows.append(
                [
                    m["model"],
                    method,
                    scope,
                    q.get("kernel", "?"),
                    q.get("layout", "?"),
                    m["samples"],
                    f"{fwd:.2f}" if fwd else "n/a",
                    f"{q['wall_s']:.2f}" if q["wall_s"] else "n/a",
                    _ratio(q["wall_s"], fwd),
                    _paired(q.get("paired_ratios", [])),
                    f"{q['peak_rss_mb']:.0f}" if q["peak_rss_mb"] else "n/a",
                    f"{m['forward_rss_mb']:.0f}" if m["forward_rss_mb"] else "n/a",
                    _ratio(q["peak_rss_mb"], m["forward_rss_mb"]),
                ]
            )
    lines.append(
        "Calibration time and memory vs a plain FP32 forward pass over the same samples "
        f"(batch {args.batch_size}; medians of {args.repeat}; 'time ratio' is the ratio of the medians, "
        "'per repetition' divides each quant run by the forward pass of its own repetition):"
    )
    lines.append(
        bc.format_table(
            [
                "model",
                "method",
                "scope",
                "histogram kernel",
                "layout",
                "samples",
                "forward s",
                "quant s",
                "time ratio",
                "per repetition: median (range)",
                "quant MiB",
                "forward MiB",
                "RSS ratio",
            ],
            rows,
        )
    )
    rows = []
    for m in results["models"]:
        if not m["rss"]:
            continue
        counts = sorted(m["rss"], key=int)
        lo, hi = m["rss"][counts[0]], m["rss"][counts[-1]]
        rows.append(
            [
                m["model"],
                f"{counts[0]} -> {counts[-1]}",
                f"{lo['quant_mb']:.0f} -> {hi['quant_mb']:.0f}",
                _ratio(hi["quant_mb"], lo["quant_mb"]),
                f"{lo['forward_mb']:.0f} -> {hi['forward_mb']:.0f}",
                f"{_ratio(lo['quant_mb'], lo['forward_mb'])} / {_ratio(hi['quant_mb'], hi['forward_mb'])}",
                f"{_ratio(lo['quant_s'], lo['forward_s'])} / {_ratio(hi['quant_s'], hi['forward_s'])}",
            ]
        )
    lines += [
        "",
        "Peak RSS as the sample count grows (entropy, first scope, one run each):",
        bc.format_table(
            [
                "model",
                "samples",
                "quant MiB",
                "growth",
                "forward MiB",
                "RSS quant/forward",
                "time quant/forward",
            ],
            rows,
        ),
    ]
    rows = []
    for m in results["models"]:
        if "amax" not in m:
            continue
        a = m["amax"]
        if "error" in a:
            rows.append([m["model"], "n/a", "n/a", a["error"]])
            continue
        rows.append(
            [
                m["model"],
                a["tensors"],
                f"{a['total_s']:.3f}",
                ", ".join(f"{k} {v:.3f}" for k, v in a["seconds"].items()),
            ]
        )
    lines += [
        "",
        "amax of every tensor with all four methods, from the statistics file:",
        bc.format_table(["model", "tensors", "total s", "per method s"], rows),
    ]
    rows = []
    for m in results["models"]:
        for method, o in m["ort"].items():
            if "skipped" in o:
                rows.append([m["model"], method, "-", "-", "-", o["skipped"]])
            elif o.get("error"):
                rows.append([m["model"], method, o["samples"], "-", "-", o["error"]])
            else:
                rows.append(
                    [
                        m["model"],
                        method,
                        o["samples"],
                        f"{o['wall_s']:.2f} / {o['forward_s']:.2f}",
                        _ratio(o["wall_s"], o["forward_s"]),
                        f"{o['peak_rss_mb']:.0f} / {o['forward_rss_mb']:.0f} MiB = "
                        f"{_ratio(o['peak_rss_mb'], o['forward_rss_mb'])}",
                    ]
                )
    if rows:
        lines += [
            "",
            "ONNX Runtime quantize_static (QDQ, per-channel, its default calibrator settings), "
            "same data, vs a forward pass over as many samples:",
            bc.format_table(
                ["model", "method", "samples", "ort s / forward s", "time ratio", "peak RSS ort / forward"],
                rows,
            ),
        ]
    if results.get("jpeg"):
        j = results["jpeg"]
        lines += [
            "",
            f"JPEG folder vs the same {j['samples']} samples preloaded in an .npz (quant calibrate, entropy): "
            f"{j['jpeg_s']:.2f} s / {j['npz_s']:.2f} s = {_ratio(j['jpeg_s'], j['npz_s'])}",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, spec = argv[1], json.loads(argv[2])
        if spec.get("kernel") == "numpy":  # before quant is imported: quant/calibrators/stats.py
            os.environ["QUANT_NATIVE"] = "0"
        if len(argv) > 4 and argv[3] == "--pin":
            os.sched_setaffinity(0, {int(c) for c in argv[4].split(",")})
        print(json.dumps(_child(kind, spec)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50", help="comma-separated: " + ", ".join(bc.MODELS))
    p.add_argument("--samples", type=int, default=128, help="samples for the time ratios")
    p.add_argument("--rss-samples", default="128,512", help="sample counts for the memory growth check")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--methods", default="entropy")
    p.add_argument("--scopes", default="all,qdq")
    p.add_argument(
        "--ort-samples",
        type=int,
        default=32,
        help="samples for onnxruntime's quantize_static (0: skip). Its Entropy calibrator keeps every "
        "activation: ~16 GB for ResNet-50 at 128; skipped when the memory is not available",
    )
    p.add_argument("--ort-methods", default="entropy,minmax")
    p.add_argument("--parts", default="time,rss,amax,ort,jpeg", help="which measurements (default: all)")
    p.add_argument("--cores", type=int, default=None, help="pin every measurement to this many CPUs")
    p.add_argument(
        "--no-numpy-kernel",
        dest="numpy_kernel",
        action="store_false",
        help="skip the extra quant run with the NumPy histogram path (QUANT_NATIVE=0)",
    )
    p.add_argument(
        "--no-plain-layout",
        dest="plain_layout",
        action="store_false",
        help="skip the extra quant run that fetches NCHW tensors instead of ORT's blocked ones",
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="keep models and data here (default: a temp dir)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.rss_samples = [int(x) for x in args.rss_samples.split(",") if x]
    args.methods = [m for m in args.methods.split(",") if m]
    args.scopes = [s for s in args.scopes.split(",") if s]
    args.ort_methods = [m for m in args.ort_methods.split(",") if m]
    args.parts = {p for p in args.parts.split(",") if p}
    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        print("onnxruntime.quantization is not available: skipping quantize_static", flush=True)
        args.ort_samples = 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quant-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    info = bc.cpu_info()
    if args.cores:
        info["cores"] = f"{args.cores} (pinned, of {info['cores']})"
    results: dict[str, Any] = {
        "machine": info,
        "command": "python scripts/bench_calibration.py " + " ".join(argv),
        "models": [],
    }
    log: list[str] = []
    run = Runner(args.cores, log)
    try:
        if args.parts & {"time", "rss", "amax", "ort"}:
            for name in args.models:
                results["models"].append(bench_model(name, args, work, run))
                if args.json:  # partial results survive an interrupted run
                    args.json.write_text(json.dumps(results, indent=2))
        if "jpeg" in args.parts:
            results["jpeg"] = bench_jpeg(args, work, run)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(results, args)
    print("\n" + text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
