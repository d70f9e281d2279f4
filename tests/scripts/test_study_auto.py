"""scripts/study_auto.py judges auto's rules: its calibration-side scores must be the ones
``--method auto`` computes, and its analysis must pool evaluation sums exactly."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.models import conv_bn_relu_cnn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import study_auto as study  # noqa: E402

pytest.importorskip("onnxruntime")


@pytest.fixture
def split(tmp_path: Path) -> Path:
    d = tmp_path / "r0f0" / "cnn"
    d.mkdir(parents=True)
    onnx.save(conv_bn_relu_cnn(), d / "model.onnx")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((18, 3, 16, 16)).astype(np.float32)
    x[:, :, :2] *= 6.0  # a heavy tail for the methods to disagree on
    np.savez(d / "calib.npz", input=x)
    np.savez(d / "eval.npz", input=rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
    return d


def test_study_scores_are_autos_own(split: Path, tmp_path: Path) -> None:
    from quant import api
    from quant.config import CalibrationOptions, DataOptions

    run = study.collect_one(split, variant_plans=study.VARIANTS)
    out = api.calibrate(split / "model.onnx", DataOptions(str(split / "calib.npz")), cache=tmp_path / "a.cache",
                        options=CalibrationOptions(method="auto"))
    record = out.auto or {}
    assert run["folds"] == record["cost"]["folds"] and run["scored"] == record["held_out"]
    for label, sc in record["scores"].items():
        assert study.pooled_db(*study._arr(run["cv"][label])) == pytest.approx(sc["sqnr_db"], abs=1e-6)
        assert study.samples_db(*study._arr(run["cv"][label])) == pytest.approx(sc["sample_db"], abs=1e-6)
    # the pooled rule (the default) picks what auto picked
    assert study._rules()["pooled (the default now)"](run) == record["best_single"]
    shipped = run["variants"]["16 scored, folds of 1/8 (as shipped)"]
    assert shipped["cv"] == run["cv"]
    every = run["variants"]["every sample scored, folds of 1/8"]
    assert every["scored"] == 18 and len(every["cv"]["entropy"][0]) == 18
    weights = run["blends"]["bagged blend, pooled"]["weights"]
    assert math.isclose(sum(weights.values()), 1.0)


def test_analyze_pools_every_split_and_names_the_best(split: Path, tmp_path: Path) -> None:
    run = study.collect_one(split, variant_plans=study.VARIANTS)
    runs = [{"model": "cnn", "split": s, **run} for s in ("r0f0", "r0f1")]
    res = study.analyze(runs)["cnn"]
    best = res["best"]
    assert res["single"][best] == max(res["single"].values())
    # the same split twice pools to the same SQNR as once
    assert res["single"][best] == pytest.approx(study.pooled_db(*study._arr(run["eval"][best])), abs=1e-9)
    for r in res["rules"].values():
        assert r["db"] <= res["single"][best] + 1e-9 or any(p.startswith("bagged") for p in r["picks"])
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"runs": runs}))
    assert study.main(["analyze", "--choose", str(path)]) == 0
