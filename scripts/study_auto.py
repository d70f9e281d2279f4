"""How ``--method auto`` should decide, judged against evaluation photos, without tuning on them.

``--method auto`` chooses among candidates by their fidelity on its own calibration folds. Which
*rule* turns those fold scores into a choice is a design decision that only evaluation data can
judge. To keep the decision honest this script separates the two sets of splits:

1. ``collect`` (per model and split of ``real_models.py prepare --folds``): auto's folds exactly
   as :func:`quant.calibrators.auto.auto_calibrate` forms them, every candidate's per-sample
   fidelity on them (calibration data only: what a rule may look at), and every candidate's
   per-sample fidelity on the split's evaluation photos with the ranges of all calibration
   samples (what the rule is judged by). Rules whose result is a blend of ranges (not one of the
   candidates) are evaluated here too, one extra evaluation pass each.
2. ``analyze``: for every rule, its choice on every split and the evaluation SQNR pooled over all
   splits, against the best single method (the same method on every split, chosen afterwards on
   the pooled evaluation: the issue's yardstick).

A rule is chosen on one set of splits (``--choose``) and then confirmed on splits made with other
seeds (``--confirm``), which did not take part in the choice. docs/CALIBRATION.md has the run.

    python scripts/real_models.py prepare --out /tmp/realcv --folds 3 --repeats 2 --photos-only
    python scripts/real_models.py prepare --out /tmp/realcv2 --folds 3 --repeats 2 --seed 2 --photos-only
    python scripts/study_auto.py collect --real /tmp/realcv --out /tmp/study_a.json
    python scripts/study_auto.py collect --real /tmp/realcv2 --out /tmp/study_b.json
    python scripts/study_auto.py analyze /tmp/study_a.json /tmp/study_b.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _bench_common import cpu_info, format_table  # noqa: E402

#: bootstrap resamples behind the bagged rules
BOOTSTRAPS = 200


# --------------------------------------------------------------------------------------------
# figures of per-sample (rows) x output (columns) sums
# --------------------------------------------------------------------------------------------


def pooled_db(sig: np.ndarray, err: np.ndarray) -> float:
    """The weakest output's SQNR (dB) of all rows pooled."""
    s, e = sig.sum(axis=0), err.sum(axis=0)
    return float(min(math.inf if b <= 0 else -math.inf if a <= 0 else 10 * math.log10(a / b) for a, b in zip(s, e, strict=True)))


def samples_db(sig: np.ndarray, err: np.ndarray) -> float:
    """The mean over rows of each row's weakest-output SQNR (dB), clipped as auto clips it."""
    with np.errstate(divide="ignore"):
        per = 10 * np.log10(np.maximum(sig, 1e-300) / np.maximum(err, 1e-300))
    return float(np.mean(np.clip(per.min(axis=1), -300, 300)))


# --------------------------------------------------------------------------------------------
# collect
# --------------------------------------------------------------------------------------------


def _per_sample(ref: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    names = list(ref)
    n = next(iter(ref.values())).shape[0]
    sig = np.zeros((n, len(names)))
    err = np.zeros((n, len(names)))
    for j, k in enumerate(names):
        r = ref[k].astype(np.float64).reshape(n, -1)
        q = out[k].astype(np.float64).reshape(n, -1)
        sig[:, j] = np.sum(r * r, axis=1)
        err[:, j] = np.sum((q - r) ** 2, axis=1)
    return sig, err


def bootstrap_wins(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], figure: Callable[..., float], *,
                   seed: int, draws: int = BOOTSTRAPS) -> dict[str, float]:
    """label -> share of ``draws`` seeded bootstrap resamples of the scored samples that
    ``figure`` ranks it first on (ties to the earlier label)."""
    labels = list(cv)
    m = next(iter(cv.values()))[0].shape[0]
    rng = np.random.default_rng([seed, 0xBA6])
    wins = dict.fromkeys(labels, 0)
    for _ in range(draws):
        idx = rng.integers(0, m, size=m)
        best = max(labels, key=lambda lab: figure(cv[lab][0][idx], cv[lab][1][idx]))
        wins[best] += 1
    return {k: v / draws for k, v in wins.items()}


def blend(tables: Mapping[str, Mapping[str, float | None]], weights: Mapping[str, float]) -> dict[str, float | None]:
    """Per tensor the weighted geometric mean of the candidates' amax."""
    tensors = next(iter(tables.values())).keys()
    out: dict[str, float | None] = {}
    for t in tensors:
        vals = [(w, float(a)) for lab, w in weights.items() if w > 0 and (a := tables[lab][t])]
        if not vals:
            out[t] = None
            continue
        tot = sum(w for w, _ in vals)
        out[t] = float(math.exp(sum(w * math.log(a) for w, a in vals) / tot))
    return out


def collect_one(directory: Path, *, seed: int = 0,
                variant_plans: Mapping[str, Callable[[int], tuple[int, int]] | None] | None = None) -> dict[str, Any]:
    """One model on one split (see the module docstring)."""
    from bench_methods import _outputs

    from quant.calibrators import auto
    from quant.calibrators.calibrate import collect_statistics
    from quant.calibrators.stats import StatsCollector
    from quant.datasets.loader import open_dataset
    from quant.graph.cleanup import cleanup
    from quant.graph.load import input_specs, load_model
    from quant.graph.qdq import calibration_tensors, insert_qdq

    clean = cleanup(load_model(directory / "model.onnx"))
    spec = input_specs(clean)[0]
    ds = open_dataset(str(directory / "calib.npz"), inputs=input_specs(clean), preprocess=None, max_samples=None,
                      seed=0, on_bad_image="fail", workers=None)
    evald = np.load(directory / "eval.npz")[spec.name]
    n = len(ds)
    batch = 8
    tensors = calibration_tensors(clean)
    # statistics per sample, merged exactly into any fold's (auto collects per part and merges)
    single = [collect_statistics(clean, auto.SubsetDataset(ds, [i], tag=f"study {i}"), tensors, batch_size=1)[0]
              for i in range(n)]

    def merged(skip: set[int]) -> StatsCollector:
        out = StatsCollector()
        for j, c in enumerate(single):
            if j not in skip:
                out.merge(c)
        return out

    full = auto.candidate_ranges(merged(set()).stats())
    labels = list(full)
    variants: dict[str, dict[str, Any]] = {}
    for vname, plan in (variant_plans or {"today": None}).items():
        scored, k = auto.scoring_plan(n) if plan is None else plan(n)
        rest, parts = auto.split_folds(n, scored, k, seed=seed)
        fold_tables = [auto.candidate_ranges(merged(set(int(i) for i in pos)).stats()) for pos in parts]
        feeds, fold_of = [], []
        for i, pos in enumerate(parts):
            part = auto.collect_feeds(auto.SubsetDataset(ds, pos, tag=f"study fold {i}"), batch)
            feeds += part
            fold_of += [i] * len(part)
        cv: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with auto.OutputScorer(clean, dict(fold_tables[0]["minmax"]), feeds, folds=fold_of) as sc:
            quantized = list(sc.quantized)
            for lab in labels:
                amax = {t: tuple(tb[lab][t] for tb in fold_tables) for t in quantized}
                s, e, _ = sc.per_sample(amax)
                cv[lab] = (s, e)
        variants[vname] = {"scored": scored, "folds": k, "cv": cv}
    first = next(iter(variants.values()))
    cv, scored, k = first["cv"], first["scored"], first["folds"]
    ref = _outputs(clean, spec.name, evald, batch)

    def evaluate(amax: Mapping[str, float | None]) -> tuple[np.ndarray, np.ndarray]:
        return _per_sample(ref, _outputs(insert_qdq(clean, dict(amax)).model, spec.name, evald, batch))

    ev = {lab: evaluate(full[lab]) for lab in labels}
    # the blends' weights come from calibration data only (bootstrap wins on auto's folds)
    blends: dict[str, dict[str, Any]] = {}
    for name, fig in (("pooled", pooled_db), ("samples", samples_db)):
        w = bootstrap_wins(cv, fig, seed=seed)
        blends[f"bagged blend, {name}"] = {"weights": w, "eval": evaluate(blend(full, w))}
    return {
        "samples": n, "scored": scored, "folds": k, "labels": labels,
        "cv": {lab: [v[0].tolist(), v[1].tolist()] for lab, v in cv.items()},
        "eval": {lab: [v[0].tolist(), v[1].tolist()] for lab, v in ev.items()},
        "variants": {v: {"scored": x["scored"], "folds": x["folds"],
                         "cv": {lab: [c[0].tolist(), c[1].tolist()] for lab, c in x["cv"].items()}}
                     for v, x in variants.items()},
        "blends": {b: {"weights": v["weights"], "eval": [v["eval"][0].tolist(), v["eval"][1].tolist()]}
                   for b, v in blends.items()},
    }


def _every_sample(n: int) -> tuple[int, int]:
    """Every calibration sample scored, in folds of about 1/8 of the set (at most 8)."""
    return n, max(1, min(8, round(n / max(2, round(n / 8)))))


def _three_folds(n: int) -> tuple[int, int]:
    """auto before docs/CALIBRATION.md's K-fold run: 16 scored samples in folds of about 6."""
    scored = min(n, 16)
    return scored, max(1, min(4, round(scored / 6)))


#: fold plans compared by ``analyze`` (None: :func:`quant.calibrators.auto.scoring_plan`, today's)
VARIANTS: dict[str, Callable[[int], tuple[int, int]] | None] = {
    "16 scored, folds of 1/8 (as shipped)": None,
    "every sample scored, folds of 1/8": _every_sample,
    "16 scored, 3 folds (before)": _three_folds,
}


def collect(real: Path, models: Sequence[str] | None, out: Path) -> None:
    protocol = json.loads((real / "protocol.json").read_text())
    splits = [s["split"] for s in protocol["splits"]]
    names = models or sorted(d.name for d in (real / splits[0]).iterdir() if d.is_dir())
    payload: dict[str, Any] = {"cpu": cpu_info(), "real": str(real),
                               "protocol": {k: v for k, v in protocol.items() if k != "splits"}, "runs": []}
    for model in names:
        for split in splits:
            t = time.perf_counter()
            r = collect_one(real / split / model, variant_plans=VARIANTS)
            payload["runs"].append({"model": model, "split": split, "seconds": time.perf_counter() - t, **r})
            print(f"{model} {split}: {time.perf_counter() - t:.1f} s", flush=True)
            out.write_text(json.dumps(payload))


# --------------------------------------------------------------------------------------------
# rules and analyze
# --------------------------------------------------------------------------------------------


def _arr(x: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(x[0], dtype=np.float64), np.asarray(x[1], dtype=np.float64)


def _halving_rule(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], seed: int = 0) -> Callable[..., float]:
    """auto's adaptive rule (:func:`quant.calibrators.auto.choose_rule` with ``SCORE_RULE`` "adaptive")."""
    from quant.calibrators import auto

    scores = {lab: auto.Score(sqnr_db=pooled_db(*v), sample_db=samples_db(*v), parts=v) for lab, v in cv.items()}
    saved = auto.SCORE_RULE
    try:
        auto.SCORE_RULE = "adaptive"
        rule, _ = auto.choose_rule(scores, seed=seed)
    finally:
        auto.SCORE_RULE = saved
    return samples_db if rule == "samples" else pooled_db


def _argmax(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], fig: Callable[..., float]) -> str:
    return max(cv, key=lambda lab: fig(*cv[lab]))


def _fold_min(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], folds: int) -> str:
    """The best worst fold (pooled within each fold; folds are every ``folds``-th scored row)."""
    def worst(lab: str) -> float:
        s, e = cv[lab]
        return min(pooled_db(s[i::folds], e[i::folds]) for i in range(folds))
    return max(cv, key=worst)


def _one_se(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], fig: Callable[..., float], tie: Callable[..., float],
            seed: int = 0) -> str:
    """Candidates within one bootstrap standard error (paired) of ``fig``'s best; among them the
    best by ``tie``."""
    best = _argmax(cv, fig)
    m = cv[best][0].shape[0]
    rng = np.random.default_rng([seed, 0x15E])
    draws = [rng.integers(0, m, size=m) for _ in range(BOOTSTRAPS)]
    keep = []
    for lab in cv:
        d = [fig(cv[best][0][i], cv[best][1][i]) - fig(cv[lab][0][i], cv[lab][1][i]) for i in draws]
        if fig(*cv[best]) - fig(*cv[lab]) <= float(np.std(d)):
            keep.append(lab)
    return max(keep, key=lambda lab: tie(*cv[lab]))


def _modal(cv: Mapping[str, tuple[np.ndarray, np.ndarray]], fig: Callable[..., float]) -> str:
    w = bootstrap_wins(cv, fig, seed=0)
    return max(w, key=lambda lab: w[lab])


def _rules() -> dict[str, Callable[[Mapping[str, Any]], str]]:
    """rule name -> (run -> a candidate label, or the name of a collected blend)."""
    def cvof(run: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {lab: _arr(v) for lab, v in run["cv"].items()}

    return {
        "adaptive (the former default)": lambda r: _argmax(cvof(r), _halving_rule(cvof(r))),
        "pooled (the default now)": lambda r: _argmax(cvof(r), pooled_db),
        "mean of samples": lambda r: _argmax(cvof(r), samples_db),
        "modal bootstrap winner, pooled": lambda r: _modal(cvof(r), pooled_db),
        "best worst fold": lambda r: _fold_min(cvof(r), r["folds"]),
        "pooled, 1 s.e., then samples": lambda r: _one_se(cvof(r), pooled_db, samples_db),
        "samples, 1 s.e., then pooled": lambda r: _one_se(cvof(r), samples_db, pooled_db),
        "bagged blend, pooled": lambda r: "bagged blend, pooled",
        "bagged blend, samples": lambda r: "bagged blend, samples",
    }


def _eval_of(run: Mapping[str, Any], pick: str) -> tuple[np.ndarray, np.ndarray]:
    if pick in run["eval"]:
        return _arr(run["eval"][pick])
    return _arr(run["blends"][pick]["eval"])


def analyze(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per model: the best single method's pooled evaluation SQNR, and every rule's (with today's
    folds, then the pooled and adaptive rules with each fold plan of :data:`VARIANTS`), over ``runs``."""
    rules = _rules()
    out: dict[str, Any] = {}

    def variant_runs(mr: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
        names = list(mr[0].get("variants", {}))[1:]  # the first is today's, the rules above
        return {v: [{**r, "cv": r["variants"][v]["cv"], "folds": r["variants"][v]["folds"]} for r in mr] for v in names}

    for model in dict.fromkeys(r["model"] for r in runs):
        mr = [r for r in runs if r["model"] == model]
        labels = mr[0]["labels"]
        single = {}
        for lab in labels:
            s = np.concatenate([_arr(r["eval"][lab])[0] for r in mr])
            e = np.concatenate([_arr(r["eval"][lab])[1] for r in mr])
            single[lab] = pooled_db(s, e)
        best = max(single, key=lambda lab: single[lab])
        res = {}
        todo = [(name, rule, mr) for name, rule in rules.items()]
        for v, vr in variant_runs(mr).items():
            for name in ("pooled (the default now)", "adaptive (the former default)"):
                todo.append((f"{name}; {v}", rules[name], vr))
        for name, rule, runs_ in todo:
            picks = [rule(r) for r in runs_]
            s = np.concatenate([_eval_of(r, p)[0] for r, p in zip(runs_, picks, strict=True)])
            e = np.concatenate([_eval_of(r, p)[1] for r, p in zip(runs_, picks, strict=True)])
            gaps = [pooled_db(*_eval_of(r, p)) - pooled_db(*_eval_of(r, best)) for r, p in zip(runs_, picks, strict=True)]
            res[name] = {"db": pooled_db(s, e), "picks": picks,
                         "split_gap_mean": float(np.mean(gaps)),
                         "split_gap_se": float(np.std(gaps, ddof=1) / math.sqrt(len(gaps))) if len(gaps) > 1 else 0.0}
        out[model] = {"splits": len(mr), "single": single, "best": best, "rules": res}
    return out


def render(title: str, res: Mapping[str, Any]) -> str:
    models = list(res)
    head = ["rule", *models, "worst gap", "mean gap"]
    rows = [["best single method (chosen afterwards)",
             *[f"{res[m]['best']} {res[m]['single'][res[m]['best']]:.2f}" for m in models], "", ""]]
    for name in next(iter(res.values()))["rules"]:
        gaps = [res[m]["rules"][name]["db"] - res[m]["single"][res[m]["best"]] for m in models]
        rows.append([name, *[f"{g:+.2f}" for g in gaps], f"{min(gaps):+.2f}", f"{float(np.mean(gaps)):+.2f}"])
    return f"{title}\n\n" + format_table(head, rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--real", type=Path, required=True)
    c.add_argument("--models", default=None)
    c.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("analyze")
    a.add_argument("--choose", type=Path, required=True, help="collect's output the rule is chosen on")
    a.add_argument("--confirm", type=Path, default=None, help="collect's output of other splits, to confirm on")
    a.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cpu = cpu_info()
    print(f"CPU: {cpu['cpu']} ({cpu['cores']} cores, {' '.join(cpu['isa'])})\n")
    if args.command == "collect":
        collect(args.real, args.models.split(",") if args.models else None, args.out)
        return 0
    chosen = json.loads(args.choose.read_text())
    results = {"choose": analyze(chosen["runs"])}
    print(render(f"Splits the rule is chosen on ({args.choose.name}): evaluation SQNR pooled over every split, "
                 "gap to the best single method (dB)", results["choose"]))
    if args.confirm is not None:
        confirm = json.loads(args.confirm.read_text())
        results["confirm"] = analyze(confirm["runs"])
        results["both"] = analyze(chosen["runs"] + confirm["runs"])
        print()
        print(render(f"Splits that confirm it ({args.confirm.name})", results["confirm"]))
        print()
        print(render("Both sets of splits pooled", results["both"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
