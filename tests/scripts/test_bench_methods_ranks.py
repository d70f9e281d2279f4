"""scripts/bench_methods.py ranks: the rank correlations it reports for docs/CALIBRATION.md must
be Spearman's, computed from what ``compare --json`` recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_methods as bm  # noqa: E402

LABELS = ("entropy", "minmax", "percentile 99.9", "mse")


def _split(calib: list[float], evals: list[float]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [{"tool": "quant", "method": k, "sqnr_db": v} for k, v in zip(LABELS, evals, strict=True)]
    rows.append({"tool": "quant", "method": "auto", "sqnr_db": max(evals),
                 "calibration_scores": dict(zip(LABELS, calib, strict=True))})
    rows.append({"tool": "onnxruntime", "method": "entropy", "sqnr_db": 99.0})  # not a candidate
    return {"calib_samples": 18, "eval_samples": 9, "rows": rows}


def test_spearman_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.normal(size=7), rng.normal(size=7)
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))  # no ties in random normals
        d = rx - ry
        n = len(x)
        assert bm.spearman(x, y) == pytest.approx(1 - 6 * float((d * d).sum()) / (n * (n * n - 1)))
    assert bm.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties: mean ranks
    assert bm.spearman([1, 1, 1], [1, 2, 3]) is None


def test_rank_agreement_reads_compare_records(tmp_path: Path) -> None:
    payload = {"results": [{"model": "m", "results": [
        _split([4, 3, 2, 1], [40, 30, 20, 10]),   # folds rank exactly as evaluation: rho 1, pick rank 1
        _split([1, 2, 3, 4], [40, 30, 20, 10]),   # reversed: rho -1, auto's pick is last on evaluation
        _split([4, 3, 2, 1], [30, 40, 20, 10]),
    ]}]}
    (row,) = bm.rank_agreement(payload)
    assert row["spearman"][:2] == [pytest.approx(1.0), pytest.approx(-1.0)]
    assert row["spearman"][2] == pytest.approx(0.8)
    assert row["pick_rank"] == [1, 4, 2] and row["picked_best"] == 1
    assert row["mean_spearman"] == pytest.approx((1.0 - 1.0 + 0.8) / 3)
    # evaluation vs evaluation over the split pairs: (1, 1) -> 1, (1, 3) and (2, 3) -> 0.8
    assert row["eval_pairs_spearman"] == pytest.approx((1.0 + 0.8 + 0.8) / 3)
    f = tmp_path / "cmp.json"
    f.write_text(json.dumps(payload))
    assert bm.main(["ranks", str(f), "--json", str(tmp_path / "ranks.json")]) == 0
    saved = json.loads((tmp_path / "ranks.json").read_text())["ranks"][0]
    assert saved["pick_rank"] == [1, 4, 2]


def test_firmness_study_joins_autos_share_with_the_recorded_evaluation(tmp_path: Path) -> None:
    import onnx

    from quant import api
    from quant.config import CalibrationOptions, DataOptions
    from tests.models import conv_bn_relu_cnn

    pytest.importorskip("onnxruntime")
    d = tmp_path / "real" / "r0" / "cnn"
    d.mkdir(parents=True)
    onnx.save(conv_bn_relu_cnn(), d / "model.onnx")
    x = np.random.default_rng(3).standard_normal((18, 3, 16, 16)).astype(np.float32)
    x[:, :, :2] *= 6.0
    np.savez(d / "calib.npz", input=x)
    first = api.calibrate(d / "model.onnx", DataOptions(str(d / "calib.npz")), cache=tmp_path / "a.cache",
                          options=CalibrationOptions(method="auto"))
    best = (first.auto or {})["best_single"]
    labels = list((first.auto or {})["scores"])
    evals = {k: 10.0 + i for i, k in enumerate(labels)}  # the last label is the evaluation's best
    split = {"calib_samples": 18, "eval_samples": 9,
             "rows": [{"tool": "quant", "method": k, "sqnr_db": v} for k, v in evals.items()]
             + [{"tool": "quant", "method": "auto", "sqnr_db": evals[best], "best_single_held_out": best}]}
    payload = {"results": [{"model": "cnn", "splits": [{"split": "r0"}], "results": [split]}]}
    work = tmp_path / "work"
    work.mkdir()
    (row,) = bm.firmness_study(tmp_path / "real", payload, work)
    assert row["best_single"] == best and row["share"] == (first.auto or {})["firmness"]["shares"][best]
    assert row["eval_rank"] == len(labels) - labels.index(best)
    assert row["regret_db"] == pytest.approx(evals[labels[-1]] - evals[best])
    text = bm.render_firmness([row, {**row, "share": 0.2, "eval_rank": 1, "regret_db": 0.0}])
    assert "1: best 1, regret 0.00 dB" in text
    # a different choice than the compare run recorded is refused, not silently joined
    split["rows"][-1]["best_single_held_out"] = next(k for k in labels if k != best)
    with pytest.raises(SystemExit, match="in the compare run"):
        bm.firmness_study(tmp_path / "real", payload, work)
