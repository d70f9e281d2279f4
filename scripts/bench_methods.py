"""Calibration methods against fidelity: quant's methods, ``--method auto`` and ONNX Runtime's
``quantize_static``, on real pretrained models; and the cost of ``auto`` on ResNet-50.

Two commands, each printing Markdown tables (the figures of docs/CALIBRATION.md come from one
run of each)::

    python scripts/real_models.py prepare --out /tmp/real
    python scripts/bench_methods.py compare --real /tmp/real --models ppocr_cls,doc_orientation,yolov8n_nudenet
    python scripts/bench_methods.py cost [--samples 128] [--rounds 3]

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


def fidelity_parts(
    ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], classifier: str | None
) -> dict[str, Any]:
    """The sums behind :func:`fidelity`, so that several evaluation sets pool exactly: per output
    sum(ref^2) and sum(err^2), and the top-1 agreements and sample count of the class scores."""
    parts: dict[str, Any] = {"signal": {}, "noise": {}, "agree": None, "samples": 0}
    for k, r in ref.items():
        r64 = r.astype(np.float64)
        parts["noise"][k] = float(np.sum((out[k].astype(np.float64) - r64) ** 2))
        parts["signal"][k] = float(np.sum(r64 * r64))
        parts["samples"] = int(r.shape[0])
    if classifier is not None:
        r = ref[classifier].reshape(ref[classifier].shape[0], -1)
        q = out[classifier].reshape(r.shape[0], -1)
        parts["agree"] = int(np.sum(np.argmax(r, axis=1) == np.argmax(q, axis=1)))
    return parts


def pooled(parts: Sequence[Mapping[str, Any]]) -> tuple[float, float | None]:
    """(weakest output's SQNR in dB, top-1 agreement % or None) over the pooled sums of ``parts``."""
    sqnr = math.inf
    for k in parts[0]["signal"]:
        sig = sum(p["signal"][k] for p in parts)
        err = sum(p["noise"][k] for p in parts)
        sqnr = min(sqnr, math.inf if err == 0 else 10 * math.log10(sig / err))
    agree = None
    if parts[0]["agree"] is not None:
        agree = 100.0 * sum(p["agree"] for p in parts) / sum(p["samples"] for p in parts)
    return sqnr, agree


def fidelity(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray], classifier: str | None) -> tuple[float, float | None]:
    """(weakest output's SQNR in dB, top-1 agreement % or None)."""
    return pooled([fidelity_parts(ref, out, classifier)])


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------


def _reduce_period(samples: int) -> int:
    """ONNX Runtime's CalibMaxIntermediateOutputs for ``samples``: 4, or the next that does not
    divide ``samples`` (see :func:`_ort_static`)."""
    k = 4
    while samples % k == 0:
        k += 1
    return k


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
        # CalibMaxIntermediateOutputs: ORT keeps every intermediate output of every calibration
        # sample otherwise (about 15 GB for ppocr_det's 18 images at 512x512, beyond this 24 GiB
        # machine shared with other jobs); with it, ORT reduces them every 4 samples. ORT's MinMax
        # then fails ("No data is collected") when the sample count is a multiple of it, so the
        # period is the smallest from 4 up that does not divide the count (4 for 18 samples).
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       "CalibMaxIntermediateOutputs": _reduce_period(calib.shape[0])},
    )
    return out


def compare_model(
    directory: Path, work: Path, *, budget: float, subset: bool = True, before: bool = False
) -> dict[str, Any]:
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
    subset_amax, subset_n = _subset_ranges(clean, directory / "calib.npz", batch) if subset else ({}, None)
    for m in SINGLE:
        method, pct = (m, 99.99) if isinstance(m, str) else m
        t = time.perf_counter()
        out = api.calibrate(model_path, data, cache=cache, options=CalibrationOptions(method=method, percentile=pct))  # type: ignore[arg-type]
        amax = read_cache(cache).amax
        q = insert_qdq(clean, amax).model
        parts = fidelity_parts(ref, _outputs(q, name, evald, batch), classifier)
        s, a = pooled([parts])
        s_sub = None
        if subset:
            s_sub, _ = fidelity(ref, _outputs(insert_qdq(clean, subset_amax[_label(m)]).model, name, evald, batch), classifier)
        rows.append({"tool": "quant", "method": _label(m), "sqnr_db": s, "agreement": a, "parts": parts,
                     "seconds": time.perf_counter() - t, "action": out.action,
                     "subset_sqnr_db": s_sub, "subset_samples": subset_n})
    t = time.perf_counter()
    out = api.calibrate(model_path, data, cache=work / f"{directory.name}.auto.cache",
                        options=CalibrationOptions(method="auto", auto_budget=budget))
    amax = read_cache(work / f"{directory.name}.auto.cache").amax
    parts = fidelity_parts(ref, _outputs(insert_qdq(clean, amax).model, name, evald, batch), classifier)
    s, a = pooled([parts])
    record = out.auto or {}
    rows.append({"tool": "quant", "method": "auto", "sqnr_db": s, "agreement": a, "parts": parts,
                 "seconds": time.perf_counter() - t,
                 "choice": _counts(record.get("choice") or {}), "held_out_sqnr_db": (record.get("score") or {}).get("sqnr_db"),
                 "best_single_held_out": record.get("best_single"), "evaluations": record.get("evaluations"),
                 "calibration_scores": {k: (v or {}).get("sqnr_db") for k, v in (record.get("scores") or {}).items()},
                 "folds": (record.get("cost") or {}).get("folds"), "scored_samples": record.get("held_out"),
                 "passes": (record.get("cost") or {}).get("passes")})
    if before:
        for i, (label, consts) in enumerate(VARIANTS.items()):
            rows.append(_auto_before(model_path, data, work / f"{directory.name}.auto-v{i}.cache", clean, name, evald,
                                     batch, ref, classifier, budget, label=label, consts=consts))
    for method in ORT_METHODS:
        t = time.perf_counter()
        try:
            qpath = _ort_static(model_path, calib, name, method, work / f"{directory.name}.ort-{method}.onnx")
            parts = fidelity_parts(ref, _outputs(qpath, name, evald, batch), classifier)
            s, a = pooled([parts])
            rows.append({"tool": "onnxruntime", "method": method.lower(), "sqnr_db": s, "agreement": a,
                         "parts": parts, "seconds": time.perf_counter() - t})
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


#: auto as shipped before docs/CALIBRATION.md's study of its rule (scripts/study_auto.py): the
#: adaptive rule (pooled SQNR or the mean of per-sample dB, chosen per model by halvings), same folds
VARIANTS: dict[str, dict[str, Any]] = {"auto (adaptive rule)": {"SCORE_RULE": "adaptive"}}
BEFORE = VARIANTS["auto (adaptive rule)"]
_BEFORE_KEY = "quant auto (adaptive rule)"


def _auto_before(model_path: Path, data: Any, cache: Path, clean: onnx.ModelProto, name: str, evald: np.ndarray,
                 batch: int, ref: Mapping[str, np.ndarray], classifier: str | None, budget: float, *,
                 label: str = "auto (adaptive rule)", consts: Mapping[str, Any] = BEFORE) -> dict[str, Any]:
    """The row of ``--method auto`` with the module constants ``consts`` (:data:`VARIANTS`; set
    for this call only, then restored)."""
    from quant import api
    from quant.cache.io import read_cache
    from quant.calibrators import auto
    from quant.config import CalibrationOptions
    from quant.graph.qdq import insert_qdq

    saved = {k: getattr(auto, k) for k in consts}
    try:
        for k, v in consts.items():
            setattr(auto, k, v)
        t = time.perf_counter()
        out = api.calibrate(model_path, data, cache=cache, options=CalibrationOptions(method="auto", auto_budget=budget))
    finally:
        for k, v in saved.items():
            setattr(auto, k, v)
    parts = fidelity_parts(ref, _outputs(insert_qdq(clean, read_cache(cache).amax).model, name, evald, batch), classifier)
    s, a = pooled([parts])
    record = out.auto or {}
    return {"tool": "quant", "method": label, "sqnr_db": s, "agreement": a, "parts": parts,
            "seconds": time.perf_counter() - t, "choice": _counts(record.get("choice") or {}),
            "best_single_held_out": record.get("best_single"),
            "folds": (record.get("cost") or {}).get("folds")}


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


def compare_protocol(
    root: Path, names: Sequence[str] | None, work: Path, *, budget: float, save: Path | None = None
) -> list[dict[str, Any]]:
    """Every split of ``root/protocol.json`` (K-fold splits of the photos, ``real_models.py
    prepare --folds``): per model, the rows of :func:`compare_model` for each split."""
    protocol = json.loads((root / "protocol.json").read_text())
    splits = [s["split"] for s in protocol["splits"]]
    models = names or sorted(d.name for d in (root / splits[0]).iterdir() if d.is_dir())
    out = []
    for model in models:
        per_split = []
        for split in splits:
            sub = work / split
            sub.mkdir(exist_ok=True)
            per_split.append(compare_model(root / split / model, sub, budget=budget, subset=False, before=True))
            print(f"  {model} {split}: " + ", ".join(
                f"{r['tool'][:4]} {r['method']} {_db(r.get('sqnr_db'))}" for r in per_split[-1]["rows"]), flush=True)
        out.append({"model": model, "protocol": {k: v for k, v in protocol.items() if k != "splits"},
                    "splits": splits, "results": per_split})
        print(render_protocol(out[-1:]), flush=True)
        if save is not None:  # after every model, so that a run cut short keeps what it measured
            save.write_text(json.dumps({"protocol": True, "results": out}, indent=1, default=str))
    return out


def _key(r: Mapping[str, Any]) -> str:
    return f"{r['tool']} {r['method']}"


def summarize_protocol(res: Mapping[str, Any]) -> dict[str, Any]:
    """Per row (tool, method): SQNR pooled over every evaluation photo of every split, its
    per-split figures, and (auto) its per-split difference to the best single method."""
    splits = res["results"]
    keys = [_key(r) for r in splits[0]["rows"] if "sqnr_db" in r]
    table: dict[str, dict[str, Any]] = {}
    for key in keys:
        rows = [next(r for r in sp["rows"] if _key(r) == key and "parts" in r) for sp in splits]
        sq, ag = pooled([r["parts"] for r in rows])
        table[key] = {"pooled_db": sq, "agreement": ag, "per_split": [r["sqnr_db"] for r in rows],
                      "mean_db": float(np.mean([r["sqnr_db"] for r in rows])), "rows": rows}
    singles = [k for k in keys if k.startswith("quant ") and not k.startswith("quant auto")]
    peers = [k for k in keys if k.startswith("onnxruntime ")]
    best = max(singles, key=lambda k: table[k]["pooled_db"])
    best_peer = max(peers, key=lambda k: table[k]["pooled_db"]) if peers else None
    auto = table["quant auto"]
    diff = np.array(auto["per_split"]) - np.array(table[best]["per_split"])
    oracle = np.max(np.array([table[k]["per_split"] for k in singles]), axis=0)
    return {
        "table": table, "best": best, "best_peer": best_peer,
        "auto_minus_best_db": auto["pooled_db"] - table[best]["pooled_db"],
        "auto_minus_peer_db": None if best_peer is None else auto["pooled_db"] - table[best_peer]["pooled_db"],
        "per_split_diff_mean": float(diff.mean()),
        "per_split_diff_se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else None,
        "oracle_mean_db": float(oracle.mean()),
        "auto_choices": [r.get("best_single_held_out") for r in auto["rows"]],
        "before_choices": [r.get("best_single_held_out") for r in table[_BEFORE_KEY]["rows"]]
        if _BEFORE_KEY in table else None,
        "before_minus_best_db": table[_BEFORE_KEY]["pooled_db"] - table[best]["pooled_db"]
        if _BEFORE_KEY in table else None,
    }


def render_protocol(results: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for res in results:
        summ = summarize_protocol(res)
        proto = res["protocol"]
        first = res["results"][0]
        n_eval = sum(sp["eval_samples"] for sp in res["results"])
        lines.append(
            f"#### {res['model']}: "
            + (f"{proto['repeats']} x {proto['folds']}-fold" if proto.get("folds") else f"{proto['repeats']} random")
            + f", {len(res['splits'])} splits, "
            f"about {first['calib_samples']} calibration / {first['eval_samples']} evaluation images each, "
            f"{n_eval} evaluations in all")
        lines.append("")
        head = ["tool", "method", "SQNR dB, pooled", "mean of splits", *res["splits"], "top-1 agree %", "note"]
        table = []
        for key, t in summ["table"].items():
            note = ""
            if key == summ["best"]:
                note = "best single method"
            elif key == summ["best_peer"]:
                note = "best ONNX Runtime"
            if key == "quant auto":
                se = summ["per_split_diff_se"]
                note = (f"{summ['auto_minus_best_db']:+.2f} dB vs best single pooled; per split "
                        f"{summ['per_split_diff_mean']:+.2f}" + (f" +- {se:.2f} (s.e.)" if se is not None else ""))
            if key.startswith("quant auto (") and key != "quant auto":
                note = f"{t['pooled_db'] - summ['table'][summ['best']]['pooled_db']:+.2f} dB vs best single pooled"
            agree = "-" if t["agreement"] is None else f"{t['agreement']:.1f}"
            tool, method = key.split(" ", 1)
            table.append([tool, method, _db(t["pooled_db"]), _db(t["mean_db"]), *(_db(x) for x in t["per_split"]),
                          agree, note])
        lines.append(format_table(head, table))
        lines.append("")
        choices = ", ".join(f"{sp} {c}" for sp, c in zip(res["splits"], summ["auto_choices"], strict=True))
        if summ["before_choices"]:
            lines.append("")
            lines.append(f"{_BEFORE_KEY[6:]}'s choice per split: " + ", ".join(
                f"{sp} {c}" for sp, c in zip(res["splits"], summ["before_choices"], strict=True)))
            lines.append("")
        lines.append(f"auto's model-level choice per split: {choices}; the best single method of each split "
                     f"(chosen afterwards on its evaluation photos) averages {summ['oracle_mean_db']:.2f} dB")
        lines.append("")
    return "\n".join(lines)


def render_protocol_summary(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for res in results:
        summ = summarize_protocol(res)
        tb = summ["table"]
        peer = summ["best_peer"]
        se = summ["per_split_diff_se"]
        rows.append([
            res["model"], f"{summ['best'].split(' ', 1)[1]} {tb[summ['best']]['pooled_db']:.2f}",
            _db(tb["quant auto"]["pooled_db"]), f"{summ['auto_minus_best_db']:+.2f}",
            f"{summ['per_split_diff_mean']:+.2f}" + (f" +- {se:.2f}" if se is not None else ""),
            _db(tb["quant entropy"]["pooled_db"]),
            "-" if peer is None else f"{peer.split(' ', 1)[1]} {tb[peer]['pooled_db']:.2f}",
            "-" if summ["auto_minus_peer_db"] is None else f"{summ['auto_minus_peer_db']:+.2f}",
            *(("-" if f"quant {v}" not in tb else
               f"{tb[f'quant {v}']['pooled_db']:.2f} ({tb[f'quant {v}']['pooled_db'] - tb[summ['best']]['pooled_db']:+.2f})")
              for v in VARIANTS),
        ])
    return format_table(["model", "best single method (pooled)", "auto", "auto - best", "per split, mean +- s.e.",
                         "entropy", "best ONNX Runtime", "auto - ORT", *(f"{v} (- best)" for v in VARIANTS)], rows)


# --------------------------------------------------------------------------------------------
# rules: how auto's model-level choice carries over to unseen samples, on calibration data only
# --------------------------------------------------------------------------------------------


def _db_sum(signal: np.ndarray, noise: np.ndarray) -> float:
    """Weakest output's pooled SQNR (dB) of per-sample (rows) x output (columns) sums."""
    sig, err = signal.sum(axis=0), noise.sum(axis=0)
    return float(min(math.inf if e == 0 else 10 * math.log10(s_ / e) for s_, e in zip(sig, err, strict=True)))


def _mean_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """Mean over samples of each sample's weakest-output SQNR (dB)."""
    with np.errstate(divide="ignore"):
        per = 10 * np.log10(np.maximum(signal, 1e-300) / np.maximum(noise, 1e-300))
    return float(np.mean(per.min(axis=1)))


RULES = {"pooled": _db_sum, "mean of samples": _mean_db}


def rule_regret(calib: Path, *, folds: int | None, halvings: int = 200, seed: int = 0) -> dict[str, Any]:
    """Auto's folds on ``calib`` (calibration samples only; ``folds`` None: as auto forms them):
    every candidate's per-sample fidelity, each sample scored with ranges from the statistics of
    the other folds. Then ``halvings`` seeded random halvings of the scored samples: each rule
    chooses a candidate on one half; its regret is the other half's best pooled SQNR minus the
    chosen one's (dB). Nothing here sees evaluation data."""
    from quant.calibrators import auto
    from quant.calibrators.calibrate import collect_statistics
    from quant.calibrators.stats import StatsCollector
    from quant.datasets.loader import open_dataset
    from quant.graph.cleanup import cleanup
    from quant.graph.load import input_specs, load_model
    from quant.graph.qdq import calibration_tensors

    clean = cleanup(load_model(calib.parent / "model.onnx"))
    ds = open_dataset(str(calib), inputs=input_specs(clean), preprocess=None, max_samples=None, seed=0,
                      on_bad_image="fail", workers=None)
    n = len(ds)
    scored, k_auto = auto.scoring_plan(n)
    k = k_auto if folds is None else folds
    rest, parts = auto.split_folds(n, scored, k, seed=0)
    tensors = calibration_tensors(clean)
    cols = []
    for pos in [*parts, rest]:
        if len(pos):
            cols.append(collect_statistics(clean, auto.SubsetDataset(ds, pos, tag="rules"), tensors, batch_size=8)[0])
        else:
            cols.append(None)
    tables = []
    for i in range(k):
        merged = StatsCollector()
        for j, c in enumerate(cols):
            if j != i and c is not None:
                merged.merge(c)
        tables.append(auto.candidate_ranges(merged.stats()))
    feeds, fold_of = [], []
    for i, pos in enumerate(parts):
        part = auto.collect_feeds(auto.SubsetDataset(ds, pos, tag="rules"), 8)
        feeds += part
        fold_of += [i] * len(part)
    labels = list(tables[0])
    per: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    base = {t: v for t, v in tables[0]["minmax"].items()}
    with auto.OutputScorer(clean, base, feeds, folds=fold_of) as scorer:
        for lab in labels:
            amax = {t: tuple(tb[lab][t] for tb in tables) for t in scorer.quantized}
            sig, err, _ = scorer.per_sample(amax)
            per[lab] = (sig, err)
    m = next(iter(per.values()))[0].shape[0]
    rng = np.random.default_rng(seed)
    regret: dict[str, list[float]] = {r: [] for r in RULES}
    for _ in range(halvings):
        order = rng.permutation(m)
        a, b = order[: m // 2], order[m // 2 :]
        b_scores = {lab: _db_sum(per[lab][0][b], per[lab][1][b]) for lab in labels}
        for rule, fn in RULES.items():
            chosen = max(labels, key=lambda lab: fn(per[lab][0][a], per[lab][1][a]))
            regret[rule].append(max(b_scores.values()) - b_scores[chosen])
    return {"samples": n, "scored": m, "folds": k,
            "regret_db": {r: float(np.mean(v)) for r, v in regret.items()},
            "pooled_db": {lab: _db_sum(*per[lab]) for lab in labels},
            "mean_db": {lab: _mean_db(*per[lab]) for lab in labels}}


def firmness_study(real: Path, compare: Mapping[str, Any], work: Path, *, models: Sequence[str] | None = None,
                   budget: float = 2.5) -> list[dict[str, Any]]:
    """Does auto's ``firmness`` (the share of bootstrap resamples of its scored samples in which
    its model-level choice scores best) say when that choice can be trusted? Per split of a
    ``compare --json`` run (protocol form) it runs ``--method auto`` again on the split's
    calibration samples (nothing else: the evaluation figures of the six methods come from the
    compare file) and keeps the share, the choice, and where the choice ranks on the split's
    evaluation samples. The choice must equal the one the compare run recorded (checked)."""
    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    out = []
    for m in compare["results"]:
        if models and m["model"] not in models:
            continue
        for split, r in zip(m["splits"], m["results"], strict=True):
            name = split["split"] if isinstance(split, Mapping) else str(split)
            directory = real / name / m["model"]
            ev = {row["method"]: row["sqnr_db"] for row in r["rows"] if row["tool"] == "quant"}
            recorded = next(row for row in r["rows"] if row["tool"] == "quant" and row["method"] == "auto")
            cache = work / f"{m['model']}.{name}.firm.cache"
            res = api.calibrate(directory / "model.onnx", DataOptions(str(directory / "calib.npz")), cache=cache,
                                options=CalibrationOptions(method="auto", auto_budget=budget))
            record = res.auto or {}
            best = str(record.get("best_single"))
            if best != recorded.get("best_single_held_out"):
                raise SystemExit(f"{m['model']} {name}: auto chose {best} here, "
                                 f"{recorded.get('best_single_held_out')} in the compare run")
            shares = (record.get("firmness") or {}).get("shares") or {}
            labels = [k for k in shares if k in ev]
            order = sorted(labels, key=lambda k: -ev[k])
            out.append({"model": m["model"], "split": name, "best_single": best, "share": shares.get(best),
                        "shares": shares, "eval_rank": order.index(best) + 1,
                        "regret_db": max(ev[k] for k in labels) - ev[best],
                        "calib_samples": r.get("calib_samples"), "eval_samples": r.get("eval_samples")})
            print(f"{m['model']} {name}: {best} best in {100 * (shares.get(best) or 0):.0f} % of resamples, "
                  f"rank {order.index(best) + 1} on evaluation", flush=True)
    return out


def render_firmness(rows: Sequence[Mapping[str, Any]], firm_share: float = 0.5) -> str:
    table = []
    models = list(dict.fromkeys((r["model"], r["calib_samples"], r["eval_samples"]) for r in rows))
    for model, nc, ne in models:
        mine = [r for r in rows if (r["model"], r["calib_samples"], r["eval_samples"]) == (model, nc, ne)]
        cells = [model, f"{nc} / {ne}", f"{np.mean([r['share'] for r in mine]):.2f}"]
        for firm in (True, False):
            part = [r for r in mine if (r["share"] >= firm_share) == firm]
            cells.append(f"{len(part)}: best {sum(r['eval_rank'] == 1 for r in part)}, "
                         f"regret {np.mean([r['regret_db'] for r in part]):.2f} dB" if part else "0")
        table.append(cells)
    return format_table(["model", "calibration / evaluation samples", "mean share of auto's choice",
                         f"splits with share >= {firm_share:g}: picked the evaluation's best, mean regret",
                         f"splits with share < {firm_share:g}"], table)


def _ranks(x: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``x`` (ties get their mean rank), as Spearman's correlation uses them."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    r = np.empty(len(a))
    r[order] = np.arange(1, len(a) + 1, dtype=np.float64)
    for v in np.unique(a):
        tie = a == v
        r[tie] = r[tie].mean()
    return r


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equally long sequences (None where one is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    d = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if d == 0.0 else float((rx * ry).sum() / d)


def rank_agreement(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per model of a ``compare --json`` file (protocol form): how well auto's scores on its
    calibration folds rank the six candidates like the split's evaluation samples do.

    For each split: Spearman's correlation between each candidate's score on auto's folds
    (``calibration_scores``, what auto chose by) and its SQNR on the evaluation samples, and the
    evaluation rank (1 = best) of the candidate auto's folds put first. Beside it, the same
    correlation between the evaluation scores of two splits (every pair): how alike two sets of
    evaluation samples rank the six methods, each calibrated on its own split, which bounds how
    well any choice made before seeing one split's evaluation samples can track its ranking.
    Nothing here runs a model: it reads what ``compare`` recorded."""
    import itertools

    out = []
    for m in payload["results"]:
        rhos: list[float | None] = []
        pick_ranks: list[int] = []
        evals: list[dict[str, float]] = []
        for r in m["results"]:
            ev = {row["method"]: row["sqnr_db"] for row in r["rows"] if row["tool"] == "quant"}
            auto = next(row for row in r["rows"] if row["tool"] == "quant" and row["method"] == "auto")
            cs = {k: v for k, v in (auto.get("calibration_scores") or {}).items() if v is not None and k in ev}
            labels = list(cs)
            evals.append({k: ev[k] for k in labels})
            rhos.append(spearman([cs[k] for k in labels], [ev[k] for k in labels]) if len(labels) > 2 else None)
            order = sorted(labels, key=lambda k: -ev[k])
            pick_ranks.append(order.index(max(labels, key=lambda k: cs[k])) + 1)
        known = [x for x in rhos if x is not None]
        pairs = [x for a, b in itertools.combinations(evals, 2) if set(a) == set(b) and len(a) > 2
                 and (x := spearman([a[k] for k in a], [b[k] for k in a])) is not None]
        out.append({"model": m["model"], "splits": len(rhos), "spearman": rhos,
                    "mean_spearman": float(np.mean(known)) if known else None,
                    "eval_pairs_spearman": float(np.mean(pairs)) if pairs else None, "pick_rank": pick_ranks,
                    "picked_best": sum(1 for k in pick_ranks if k == 1),
                    "calib_samples": m["results"][0].get("calib_samples"),
                    "eval_samples": m["results"][0].get("eval_samples")})
    return out


def render_ranks(rows: Sequence[Mapping[str, Any]]) -> str:
    table = [[r["model"], str(r["splits"]), f"{r['calib_samples']} / {r['eval_samples']}",
              "-" if r["mean_spearman"] is None else f"{r['mean_spearman']:.2f}",
              "-" if r["eval_pairs_spearman"] is None else f"{r['eval_pairs_spearman']:.2f}",
              " ".join("-" if x is None else f"{x:.2f}" for x in r["spearman"]),
              f"{r['picked_best']} / {r['splits']}", " ".join(str(k) for k in r["pick_rank"])]
             for r in rows]
    return format_table(["model", "splits", "calibration / evaluation samples per split",
                         "auto's folds vs evaluation, mean Spearman", "evaluation vs evaluation (split pairs)",
                         "per split (folds vs evaluation)", "auto's pick best on evaluation", "evaluation rank of auto's pick"], table)


# --------------------------------------------------------------------------------------------
# cost
# --------------------------------------------------------------------------------------------


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


#: ``cost --variants``: auto with one of its speed-ups switched off (module constant, value),
#: each run in every round beside the shipped auto.
COST_VARIANTS: dict[str, tuple[str, str, bool]] = {
    "plain-scoring": ("plain Q/DQ session", "BLOCKED_SCORING", False),
    "own-reference": ("own FP32 reference pass", "REUSE_REFERENCE", False),
}


def _max_score_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """The largest difference between two auto records' candidate scores (dB)."""
    sa, sb = a.get("scores") or {}, b.get("scores") or {}
    if set(sa) != set(sb):
        return math.inf
    diffs = [abs(float(sa[k]["sqnr_db"]) - float(sb[k]["sqnr_db"])) for k in sa]
    return max(diffs, default=0.0)


def cost(samples: int, work: Path, *, rounds: int = 1, variants: Sequence[str] = ()) -> dict[str, Any]:
    """Wall and CPU seconds of each step, in ``rounds`` rounds of: FP32 pass, entropy, FP32 pass,
    auto, FP32 pass, and for each of ``variants`` (:data:`COST_VARIANTS`) auto with that speed-up
    off, then an FP32 pass. Each step's figure is its fastest round, and the unit is the fastest
    FP32 pass (the machine may be shared: the smallest is the run with the least interference)."""
    from quant import api
    from quant.backends.onnxruntime import OrtRunner
    from quant.calibrators import auto as auto_mod
    from quant.config import CalibrationOptions, DataOptions

    unknown = [v for v in variants if v not in COST_VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(unknown)} (known: {', '.join(COST_VARIANTS)})")
    model = resnet50()
    path = work / "resnet50.onnx"
    onnx.save(model, str(path))
    x = sample_data(model, samples, seed=0)
    np.savez(work / "calib.npz", **{model.graph.input[0].name: x})
    data = DataOptions(str(work / "calib.npz"), batch_size=8)
    name = model.graph.input[0].name
    passes: list[tuple[float, float]] = []
    keys = ["entropy", "auto", *variants]
    steps: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    records: dict[str, list[dict[str, Any]]] = {k: [] for k in keys if k != "entropy"}

    def calibrate(method: str, key: str) -> None:
        constant, value = COST_VARIANTS[key][1:] if key in COST_VARIANTS else (None, None)
        before = getattr(auto_mod, constant) if constant else None
        if constant:
            setattr(auto_mod, constant, value)
        t = _clock()
        try:
            out = api.calibrate(path, data, cache=work / f"{key}.cache", options=CalibrationOptions(method=method),
                                force=True)
        finally:
            if constant:
                setattr(auto_mod, constant, before)
        steps[key].append(_since(t))
        if key in records:
            records[key].append(out.auto or {})

    with OrtRunner(model) as run:
        run.infer({name: x[:8]})

        def fp32_pass() -> None:
            t = _clock()
            for b in _batches(x, 8):
                run.infer({name: b})
            passes.append(_since(t))

        for _ in range(rounds):
            fp32_pass()
            calibrate("entropy", "entropy")
            fp32_pass()
            calibrate("auto", "auto")
            fp32_pass()
            for v in variants:
                calibrate("auto", v)
                fp32_pass()
    record = records["auto"][0]
    best = {k: (min(v[0] for v in vals), min(v[1] for v in vals)) for k, vals in steps.items()}
    everything = [r for recs in records.values() for r in recs]
    return {
        "samples": samples,
        "rounds": rounds,
        "fp32_pass_s": min(p[0] for p in passes),
        "fp32_pass_cpu_s": min(p[1] for p in passes),
        "fp32_passes": passes,
        "steps": steps,
        "best": best,
        "variants": list(variants),
        "search_s": {k: min(r.get("seconds") or math.inf for r in recs) for k, recs in records.items()},
        "same_choice": all(r.get("choice") == record.get("choice") for r in everything),
        "max_score_diff_db": max(_max_score_diff(r, record) for r in everything),
        "scoring_layout": (record.get("cost") or {}).get("scoring_layout"),
        "reference": (record.get("cost") or {}).get("reference"),
        "evaluations": record.get("evaluations"),
        "held_out": record.get("held_out"),
        "groups": (record.get("plan") or {}).get("groups"),
        "searched_tensors": record.get("searched"),
        "sample_forwards": (record.get("cost") or {}).get("sample_forwards"),
        "nominal_passes": (record.get("cost") or {}).get("passes"),
        "scoring_workers": (record.get("cost") or {}).get("scoring_workers"),
        "choice": _counts(record.get("choice") or {}),
    }


def render_cost(r: dict[str, Any]) -> str:
    f, fc = r["fp32_pass_s"], r["fp32_pass_cpu_s"]

    def row(label: str, wall: float, cpu: float | None) -> list[str]:
        return [label, f"{wall:.2f}", f"{wall / f:.2f}", "-" if cpu is None else f"{cpu:.2f}",
                "-" if cpu is None else f"{cpu / fc:.2f}"]

    best, search = r["best"], r["search_s"]
    rows = [
        row("one FP32 pass over the calibration set", f, fc),
        row("quant calibrate --method entropy", *best["entropy"]),
        row("quant calibrate --method auto, total", *best["auto"]),
        row("  of which the search (scorer set-up + evaluations)", search["auto"], None),
    ]
    for v in r["variants"]:
        rows += [row(f"quant calibrate --method auto, {COST_VARIANTS[v][0]}", *best[v]),
                 row("  of which the search", search[v], None)]
    head = (
        f"ResNet-50, {r['samples']} samples, batch 8, fastest of {r['rounds']} round(s): {r['held_out']} held out, "
        f"{r['evaluations']} evaluations ({r['groups']} groups over {r['searched_tensors']} Q/DQ tensors), "
        f"{r['sample_forwards']} sample forwards = {r['nominal_passes']}x nominal, scored on "
        f"{r['scoring_workers']} concurrent workers, Q/DQ session {r.get('scoring_layout')}, reference from the "
        f"{r.get('reference')}; chose {r['choice']} "
        f"({'the same' if r['same_choice'] else 'NOT the same'} in every round and variant; candidate scores "
        f"within {r['max_score_diff_db']:.1e} dB); FP32 passes (wall, CPU s): "
        + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in r["fp32_passes"])
    )
    return head + "\n\n" + format_table(["step", "wall s", "x FP32 pass", "CPU s", "x FP32 pass (CPU)"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="methods, auto and ONNX Runtime on real models")
    c.add_argument("--real", type=Path, required=True,
                   help="the folder 'scripts/real_models.py prepare' wrote (with --folds: every split in it)")
    c.add_argument("--models", default=None, help="comma-separated model names (default: every folder)")
    c.add_argument("--budget", type=float, default=2.5, help="--auto-budget")
    c.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    r = sub.add_parser("rules", help="auto's choice rules judged on calibration data only (halvings)")
    r.add_argument("--real", type=Path, required=True, help="a folder of 'real_models.py prepare --folds'")
    r.add_argument("--models", default=None)
    r.add_argument("--folds", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                   help="comma-separated fold counts to try (0: as auto forms them)")
    r.add_argument("--json", type=Path, default=None)
    q = sub.add_parser("ranks", help="how well auto's fold scores rank the candidates like the evaluation "
                                     "samples (reads compare --json files, runs no model)")
    q.add_argument("files", type=Path, nargs="+", help="JSON files written by 'compare --json' (protocol form)")
    q.add_argument("--json", type=Path, default=None)
    f = sub.add_parser("firmness", help="whether auto's bootstrap share says when its choice holds on the "
                                        "evaluation samples (runs auto on each split of a compare run)")
    f.add_argument("--real", type=Path, required=True, help="the folder the compare run read")
    f.add_argument("--compare", type=Path, required=True, help="that run's --json file")
    f.add_argument("--models", default=None)
    f.add_argument("--json", type=Path, default=None)
    k = sub.add_parser("cost", help="auto's cost on ResNet-50")
    k.add_argument("--samples", type=int, default=128)
    k.add_argument("--rounds", type=int, default=1, help="repeat every step this often; each figure is its fastest")
    k.add_argument("--variants", type=lambda v: [x for x in v.split(",") if x], default=[],
                   help=f"also time auto with a speed-up off, side by side: {', '.join(COST_VARIANTS)}")
    k.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu']} ({cpu['cores']} cores, {' '.join(cpu['isa'])})\n")
    with tempfile.TemporaryDirectory(prefix="quant-bench-methods-") as tmp:
        work = Path(tmp)
        if args.command == "compare" and (args.real / "protocol.json").exists():
            names = args.models.split(",") if args.models else None
            results = compare_protocol(args.real, names, work, budget=args.budget, save=args.json)
            print(render_protocol_summary(results))
            payload: Any = {"cpu": cpu, "protocol": True, "results": results}
        elif args.command == "firmness":
            rows = firmness_study(args.real, json.loads(args.compare.read_text()), work,
                                  models=args.models.split(",") if args.models else None)
            print(render_firmness(rows))
            payload = {"cpu": cpu, "firmness": rows}
        elif args.command == "ranks":
            rows = [r for f in args.files for r in rank_agreement(json.loads(f.read_text()))]
            print(render_ranks(rows))
            payload = {"cpu": cpu, "ranks": rows}
        elif args.command == "rules":
            protocol = json.loads((args.real / "protocol.json").read_text())
            splits = [x["split"] for x in protocol["splits"]]
            names = args.models.split(",") if args.models else sorted(
                d.name for d in (args.real / splits[0]).iterdir() if d.is_dir())
            results = []
            for model in names:
                for split in splits:
                    for k in args.folds:
                        r = rule_regret(args.real / split / model / "calib.npz", folds=k or None)
                        results.append({"model": model, "split": split, **r})
                        print(f"{model} {split} folds {r['folds']}: mean regret "
                              + ", ".join(f"{rule} {v:.2f} dB" for rule, v in r["regret_db"].items()), flush=True)
            payload = {"cpu": cpu, "rules": results}
        elif args.command == "compare":
            names = args.models.split(",") if args.models else sorted(d.name for d in args.real.iterdir() if d.is_dir())
            results = []
            for n in names:
                results.append(compare_model(args.real / n, work, budget=args.budget))
                print(render_compare(results[-1:]), flush=True)
            payload = {"cpu": cpu, "results": results}
        else:
            payload = {"cpu": cpu, **cost(args.samples, work, rounds=args.rounds, variants=args.variants)}
            print(render_cost(payload))
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
