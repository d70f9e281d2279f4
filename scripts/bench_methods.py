"""Calibration methods against fidelity: quant's methods, ``--method auto`` and ONNX Runtime's
``quantize_static``, on real pretrained models; and the cost of ``auto`` on ResNet-50.

Two commands, each printing Markdown tables (the figures of docs/CALIBRATION.md come from one
run of each)::

    python scripts/real_models.py prepare --out /tmp/real
    python scripts/bench_methods.py compare --real /tmp/real --models ppocr_cls,doc_orientation,yolov8n_nudenet
    python scripts/bench_methods.py cost [--samples 128]

``compare``: per model (``model.onnx``, ``calib.npz``, ``eval.npz`` made by
``scripts/real_models.py``), every INT8 model is compared with FP32 on the *evaluation* photos
(never used for calibration, never seen by auto), with TensorRT's exact INT8 arithmetic
(``OrtRunner(int8="exact")``) for every row, quant's and ONNX Runtime's alike:

* quant, one method for every tensor (entropy, minmax, percentile 99.9 / 99.99 / 99.999, mse):
  ``quant calibrate`` on ``calib.npz`` then the TensorRT-placement Q/DQ model (``quant build``);
* quant ``--method auto`` (default budget) on the same ``calib.npz``;
* ONNX Runtime ``quantize_static`` (QDQ format, signed symmetric INT8 activations, per-channel
  INT8 weights: TensorRT's form; its default calibration options) with CalibrationMethod
  Entropy, MinMax and Percentile, fed the same ``calib.npz`` samples.

SQNR is the weakest output's, over all evaluation samples (10 log10 sum(ref^2) / sum(err^2));
top-1 agreement with FP32 is given for the models with a class-score output.

``cost``: ResNet-50 (scripts/_bench_common.py, random weights: fine for time, says nothing about
accuracy), ``--samples`` random images: one FP32 pass over them, ``quant calibrate --method
entropy`` and ``--method auto``, as ratios to the FP32 pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import cpu_info, format_table, resnet50, sample_data  # noqa: E402

SINGLE = ("entropy", "minmax", ("percentile", 99.9), ("percentile", 99.99), ("percentile", 99.999), "mse")
ORT_METHODS = ("Entropy", "MinMax", "Percentile")


def _label(m: str | tuple[str, float]) -> str:
    return m if isinstance(m, str) else f"percentile {m[1]:g}"


# --------------------------------------------------------------------------------------------
# fidelity against FP32 on the evaluation samples, exact INT8 arithmetic
# --------------------------------------------------------------------------------------------


def _batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


def _outputs(model: onnx.ModelProto | str | Path, name: str, x: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    from quant.backends.onnxruntime import OrtRunner

    with OrtRunner(model, int8="exact") as run:
        parts = [run.infer({name: b}) for b in _batches(x, batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fidelity(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], classifier: str | None) -> tuple[float, float | None]:
    """(weakest output's SQNR in dB, top-1 agreement % or None)."""
    sqnr = math.inf
    for k, r in ref.items():
        r64 = r.astype(np.float64)
        err = float(np.sum((out[k].astype(np.float64) - r64) ** 2))
        sig = float(np.sum(r64 * r64))
        sqnr = min(sqnr, math.inf if err == 0 else 10 * math.log10(sig / err))
    agree = None
    if classifier is not None:
        r = ref[classifier].reshape(ref[classifier].shape[0], -1)
        q = out[classifier].reshape(r.shape[0], -1)
        agree = 100.0 * float(np.mean(np.argmax(r, axis=1) == np.argmax(q, axis=1)))
    return sqnr, agree


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def _ort_static(model_path: Path, calib: np.ndarray, name: str, method: str, out: Path) -> Path:
    """ONNX Runtime quantize_static in TensorRT's form, its default calibration options."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: calib[i : i + 1]} for i in range(calib.shape[0])])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    # per-channel Q/DQ needs opset 13 (ORT writes an invalid model below it): convert first, as
    # quant does internally
    src = model_path
    m = onnx.load(str(model_path))
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:
        from onnx import version_converter

        m = version_converter.convert_version(m, 13)
        m.ir_version = max(m.ir_version, 7)
        src = out.with_suffix(".op13.onnx")
        onnx.save(m, str(src))
    pre = out.with_suffix(".pre.onnx")
    if not pre.exists():
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # ORT's optional pre-processing; quantize the model as it is when it refuses
            pre = src
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=getattr(CalibrationMethod, method),
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


def compare_model(directory: Path, work: Path, *, budget: float) -> dict[str, Any]:
    from quant import api
    from quant.cache.io import read_cache
    from quant.config import CalibrationOptions, DataOptions
    from quant.eval.metrics import find_classifier_output
    from quant.graph.cleanup import cleanup
    from quant.graph.load import input_specs, load_model
    from quant.graph.qdq import insert_qdq

    model_path = directory / "model.onnx"
    info = json.loads((directory / "info.json").read_text()) if (directory / "info.json").exists() else {}
    clean = cleanup(load_model(model_path))
    name = input_specs(clean)[0].name
    calib = np.load(directory / "calib.npz")[name]
    evald = np.load(directory / "eval.npz")[name]
    fixed = input_specs(clean)[0].shape[0]
    batch = fixed if isinstance(fixed, int) and fixed > 0 else 8
    ref = _outputs(clean, name, evald, batch)
    classifier = find_classifier_output(dict(ref))
    rows: list[dict[str, Any]] = []
    cache = work / f"{directory.name}.cache"
    data = DataOptions(str(directory / "calib.npz"), batch_size=batch)
    subset_amax, subset_n = _subset_ranges(clean, directory / "calib.npz", batch)
    for m in SINGLE:
        method, pct = (m, 99.99) if isinstance(m, str) else m
        t = time.perf_counter()
        out = api.calibrate(model_path, data, cache=cache, options=CalibrationOptions(method=method, percentile=pct))  # type: ignore[arg-type]
        amax = read_cache(cache).amax
        q = insert_qdq(clean, amax).model
        s, a = fidelity(ref, _outputs(q, name, evald, batch), classifier)
        s_sub, _ = fidelity(ref, _outputs(insert_qdq(clean, subset_amax[_label(m)]).model, name, evald, batch), classifier)
        rows.append({"tool": "quant", "method": _label(m), "sqnr_db": s, "agreement": a,
                     "seconds": time.perf_counter() - t, "action": out.action,
                     "subset_sqnr_db": s_sub, "subset_samples": subset_n})
    t = time.perf_counter()
    out = api.calibrate(model_path, data, cache=work / f"{directory.name}.auto.cache",
                        options=CalibrationOptions(method="auto", auto_budget=budget))
    amax = read_cache(work / f"{directory.name}.auto.cache").amax
    s, a = fidelity(ref, _outputs(insert_qdq(clean, amax).model, name, evald, batch), classifier)
    record = out.auto or {}
    rows.append({"tool": "quant", "method": "auto", "sqnr_db": s, "agreement": a, "seconds": time.perf_counter() - t,
                 "choice": _counts(record.get("choice") or {}), "held_out_sqnr_db": (record.get("score") or {}).get("sqnr_db"),
                 "best_single_held_out": record.get("best_single"), "evaluations": record.get("evaluations"),
                 "calibration_scores": {k: (v or {}).get("sqnr_db") for k, v in (record.get("scores") or {}).items()},
                 "folds": (record.get("cost") or {}).get("folds"), "scored_samples": record.get("held_out"),
                 "passes": (record.get("cost") or {}).get("passes")})
    for method in ORT_METHODS:
        t = time.perf_counter()
        try:
            qpath = _ort_static(model_path, calib, name, method, work / f"{directory.name}.ort-{method}.onnx")
            s, a = fidelity(ref, _outputs(qpath, name, evald, batch), classifier)
            rows.append({"tool": "onnxruntime", "method": method.lower(), "sqnr_db": s, "agreement": a,
                         "seconds": time.perf_counter() - t})
        except Exception as exc:  # a peer that fails on a model is reported, not hidden
            rows.append({"tool": "onnxruntime", "method": method.lower(), "error": str(exc).splitlines()[0][:120]})
    return {
        "model": directory.name,
        "description": info.get("description") or info.get("spec", {}).get("description"),
        "calib_samples": int(calib.shape[0]),
        "eval_samples": int(evald.shape[0]),
        "classifier": classifier,
        "rows": rows,
    }


def _subset_ranges(clean: onnx.ModelProto, calib: Path, batch: int) -> tuple[dict[str, dict[str, float | None]], int]:
    """Every candidate's ranges from the statistics of the calibration samples outside auto's first
    scoring fold (what auto scores that fold with): how much a method's result depends on which
    images made the statistics."""
    from quant.calibrators import auto
    from quant.calibrators.calibrate import collect_statistics
    from quant.datasets.loader import open_dataset
    from quant.graph.load import input_specs
    from quant.graph.qdq import calibration_tensors

    ds = open_dataset(str(calib), inputs=input_specs(clean), preprocess=None, max_samples=None, seed=0,
                      on_bad_image="fail", workers=None)
    scored, folds = auto.scoring_plan(len(ds))
    rest, parts = auto.split_folds(len(ds), scored, folds, seed=0)
    keep = np.setdiff1d(np.arange(len(ds)), parts[0])
    col, n = collect_statistics(clean, auto.SubsetDataset(ds, keep, tag="subset"), calibration_tensors(clean),
                                batch_size=batch)
    return auto.candidate_ranges(col.stats()), n


def _counts(choice: Mapping[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lab in choice.values():
        counts[lab] = counts.get(lab, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.2f}"


def render_compare(results: Sequence[dict[str, Any]]) -> str:
    lines = []
    for res in results:
        lines.append(f"### {res['model']} ({res['calib_samples']} calibration / {res['eval_samples']} evaluation images)")
        lines.append("")
        quant_rows = [r for r in res["rows"] if r["tool"] == "quant" and r["method"] != "auto" and "sqnr_db" in r]
        best = max(quant_rows, key=lambda r: r["sqnr_db"])
        table = []
        for r in res["rows"]:
            if "error" in r:
                table.append([r["tool"], r["method"], "failed: " + r["error"], "-", "-", "-"])
                continue
            note = ""
            if r is best:
                note = "best single method"
            if r["method"] == "auto" and r["tool"] == "quant":
                note = f"{r['sqnr_db'] - best['sqnr_db']:+.2f} dB vs best single; chose {r['choice']}"
            agree = "-" if r["agreement"] is None else f"{r['agreement']:.1f}"
            table.append([r["tool"], r["method"], _db(r["sqnr_db"]), _db(r.get("subset_sqnr_db")), agree, note])
        sub = next((r["subset_samples"] for r in res["rows"] if r.get("subset_samples")), "-")
        lines.append(format_table(
            ["tool", "method", "SQNR dB", f"SQNR dB, statistics of {sub} of them", "top-1 agree %", "note"], table))
        auto = next((r for r in res["rows"] if r["method"] == "auto" and "sqnr_db" in r), None)
        if auto is not None and auto.get("calibration_scores"):
            cv = ", ".join(f"{k} {_db(v)}" for k, v in auto["calibration_scores"].items())
            lines.append("")
            lines.append(
                f"auto's own scores (SQNR dB on {auto['scored_samples']} calibration samples, {auto['folds']} folds): "
                f"{cv}; per-tensor result {_db(auto['held_out_sqnr_db'])}; {auto['evaluations']} evaluations, "
                f"{auto['passes']}x a pass over the calibration set"
            )
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def cost(samples: int, work: Path) -> dict[str, Any]:
    """Wall and CPU seconds of each step; the FP32 pass is timed before, between and after the
    calibrations (the machine is shared: the smallest is the pass without interference)."""
    from quant import api
    from quant.backends.onnxruntime import OrtRunner
    from quant.config import CalibrationOptions, DataOptions

    model = resnet50()
    path = work / "resnet50.onnx"
    onnx.save(model, str(path))
    x = sample_data(model, samples, seed=0)
    np.savez(work / "calib.npz", **{model.graph.input[0].name: x})
    data = DataOptions(str(work / "calib.npz"), batch_size=8)
    name = model.graph.input[0].name
    passes: list[tuple[float, float]] = []
    with OrtRunner(model) as run:
        run.infer({name: x[:8]})

        def fp32_pass() -> None:
            t = _clock()
            for b in _batches(x, 8):
                run.infer({name: b})
            passes.append(_since(t))

        fp32_pass()
        t = _clock()
        api.calibrate(path, data, cache=work / "entropy.cache", options=CalibrationOptions(method="entropy"), force=True)
        entropy = _since(t)
        fp32_pass()
        t = _clock()
        out = api.calibrate(path, data, cache=work / "auto.cache", options=CalibrationOptions(method="auto"), force=True)
        auto = _since(t)
        fp32_pass()
    record = out.auto or {}
    return {
        "samples": samples,
        "fp32_pass_s": min(p[0] for p in passes),
        "fp32_pass_cpu_s": min(p[1] for p in passes),
        "fp32_passes": passes,
        "entropy_s": entropy[0],
        "entropy_cpu_s": entropy[1],
        "auto_s": auto[0],
        "auto_cpu_s": auto[1],
        "search_s": record.get("seconds"),
        "evaluations": record.get("evaluations"),
        "held_out": record.get("held_out"),
        "groups": (record.get("plan") or {}).get("groups"),
        "searched_tensors": record.get("searched"),
        "sample_forwards": (record.get("cost") or {}).get("sample_forwards"),
        "nominal_passes": (record.get("cost") or {}).get("passes"),
        "choice": _counts(record.get("choice") or {}),
    }


def render_cost(r: dict[str, Any]) -> str:
    f, fc = r["fp32_pass_s"], r["fp32_pass_cpu_s"]
    rows = [
        ["one FP32 pass over the calibration set", f"{f:.2f}", "1.00", f"{fc:.2f}", "1.00"],
        ["quant calibrate --method entropy", f"{r['entropy_s']:.2f}", f"{r['entropy_s'] / f:.2f}",
         f"{r['entropy_cpu_s']:.2f}", f"{r['entropy_cpu_s'] / fc:.2f}"],
        ["quant calibrate --method auto, total", f"{r['auto_s']:.2f}", f"{r['auto_s'] / f:.2f}",
         f"{r['auto_cpu_s']:.2f}", f"{r['auto_cpu_s'] / fc:.2f}"],
        ["  of which the search (reference pass + evaluations)", f"{r['search_s']:.2f}", f"{r['search_s'] / f:.2f}",
         "-", "-"],
    ]
    head = (
        f"ResNet-50, {r['samples']} samples, batch 8: {r['held_out']} held out, {r['evaluations']} evaluations "
        f"({r['groups']} groups over {r['searched_tensors']} Q/DQ tensors), {r['sample_forwards']} sample forwards "
        f"= {r['nominal_passes']}x nominal; chose {r['choice']}; FP32 passes (wall, CPU s): "
        + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in r["fp32_passes"])
    )
    return head + "\n\n" + format_table(["step", "wall s", "x FP32 pass", "CPU s", "x FP32 pass (CPU)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="methods, auto and ONNX Runtime on real models")
    c.add_argument("--real", type=Path, required=True, help="the folder 'scripts/real_models.py prepare' wrote")
    c.add_argument("--models", default=None, help="comma-separated model names (default: every folder)")
    c.add_argument("--budget", type=float, default=2.5, help="--auto-budget")
    c.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    k = sub.add_parser("cost", help="auto's cost on ResNet-50")
    k.add_argument("--samples", type=int, default=128)
    k.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu']} ({cpu['cores']} cores, {' '.join(cpu['isa'])})\n")
    with tempfile.TemporaryDirectory(prefix="quant-bench-methods-") as tmp:
        work = Path(tmp)
        if args.command == "compare":
            names = args.models.split(",") if args.models else sorted(d.name for d in args.real.iterdir() if d.is_dir())
            results = []
            for n in names:
                results.append(compare_model(args.real / n, work, budget=args.budget))
                print(render_compare(results[-1:]), flush=True)
            payload: Any = {"cpu": cpu, "results": results}
        else:
            payload = {"cpu": cpu, **cost(args.samples, work)}
            print(render_cost(payload))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
