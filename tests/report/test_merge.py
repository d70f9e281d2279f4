"""Partial reports of shards merge into exactly what one unsharded evaluation gives."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from quant.backends.base import TensorSpec
from quant.backends.onnxruntime import OrtRunner
from quant.datasets.arrays import NpzDataset
from quant.datasets.shard import Shard, shard_dataset
from quant.errors import ReportError, UsageError
from quant.eval.evaluate import EvalResult, evaluate
from quant.graph.qdq import insert_qdq, quantizable_inputs
from quant.report.merge import merge_evaluations, merge_reports
from quant.report.schema import Report, data_section, load_report, model_section, save_report
from tests.models import mlp

BATCH = 4
SAMPLES = 37  # not a multiple of the batch size: the last batch is partial


@pytest.fixture(scope="module")
def models() -> dict[str, onnx.ModelProto]:
    fp32 = mlp(features=16, hidden=32, classes=6)
    amax = {t: 2.5 for t in quantizable_inputs(fp32)}
    int8 = insert_qdq(fp32, amax).model
    # A coarser copy: a second "precision" whose errors are larger.
    coarse = insert_qdq(fp32, {t: 12.0 for t in amax}).model
    return {"fp32": fp32, "int8": int8, "coarse": coarse}


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("merge") / "val.npz"
    np.savez(
        path,
        input=rng.standard_normal((SAMPLES, 16)).astype(np.float32),
        labels=rng.integers(0, 6, SAMPLES),
    )
    return path


def _dataset(path: Path) -> NpzDataset:
    return NpzDataset(path, inputs=[TensorSpec("input", ("N", 16), np.float32)])


def _evaluate(models: dict[str, onnx.ModelProto], dataset: Any) -> EvalResult:
    return evaluate(models, dataset, batch_size=BATCH, runner_factory=OrtRunner, warmup=1)


def _report(ev: EvalResult, dataset: Any, *, shard: dict[str, Any], graph: str = "g", data_fp: str | None = None) -> Report:
    fp = dataset.full_fingerprint() if data_fp is None else data_fp
    return Report.create(
        model=model_section("mlp.onnx", graph_fingerprint=graph, weights_fingerprint="w"),
        data=data_section(dataset.summary(), fp),
        evaluation=ev,
        calibration={"method": "entropy", "params": {}, "cache": "a.cache", "trt_header": None,
                     "num_samples": 64, "amax": {"count": 3}},
        extra={"shard": shard},
    )


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _assert_same(merged: EvalResult, whole: EvalResult) -> None:
    assert merged.names == whole.names
    assert merged.num_samples == whole.num_samples == SAMPLES
    assert merged.num_batches == whole.num_batches
    for m, w in zip(merged.precisions, whole.precisions, strict=True):
        assert m.classification is not None and w.classification is not None
        mc, wc = m.classification.to_dict(), w.classification.to_dict()
        assert mc == wc  # counts, and the percentages derived from them
        assert len(m.fidelity) == len(w.fidelity)
        for mf, wf in zip(m.fidelity, w.fidelity, strict=True):
            for key in ("sqnr_db", "cosine", "mean_sample_cosine", "min_sample_cosine", "mean_rel_error",
                        "max_abs_error"):
                assert _close(getattr(mf, key), getattr(wf, key)), (m.name, key, getattr(mf, key), getattr(wf, key))
            assert (mf.num_samples, mf.num_elements, mf.exact) == (wf.num_samples, wf.num_elements, wf.exact)
        assert m.latency is None


def test_shards_cover_every_sample_once_in_whole_batches() -> None:
    for n, b, count in itertools.product((0, 1, 7, 37, 64), (1, 4, 8), (1, 2, 3, 5, 9)):
        bounds = [Shard(k, count).bounds(n, b) for k in range(1, count + 1)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        for (s0, e0), (s1, _) in itertools.pairwise(bounds):
            assert e0 == s1 and s0 <= e0
        assert all(s % b == 0 for s, _ in bounds)


def test_shard_parse_errors_name_the_option() -> None:
    assert Shard.parse("2/5") == Shard(2, 5)
    for bad in ("0/3", "4/3", "1/0", "x", "1-3"):
        with pytest.raises(UsageError, match="--shard must be K/N"):
            Shard.parse(bad)


def test_sharded_dataset_reads_only_its_batches(data_file: Path) -> None:
    whole = [b.feed["input"] for b in _dataset(data_file).batches(BATCH)]
    parts = []
    for k in (1, 2, 3):
        ds = shard_dataset(_dataset(data_file), f"{k}/3", batch_size=BATCH)
        got = [b.feed["input"] for b in ds.batches(BATCH)]
        assert sum(len(g) for g in got) == len(ds)
        parts.extend(got)
        assert ds.full_fingerprint() == _dataset(data_file).fingerprint() != ds.fingerprint()
    assert len(parts) == len(whole)
    for a, b in zip(parts, whole, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError, match="batches of 4"):
        next(shard_dataset(_dataset(data_file), "1/3", batch_size=BATCH).batches(8))


@pytest.mark.parametrize("count", [2, 3])
def test_merged_shards_equal_one_run_in_any_order(
    models: dict[str, onnx.ModelProto], data_file: Path, tmp_path: Path, count: int
) -> None:
    whole = _evaluate(models, _dataset(data_file))
    reports = []
    for k in range(1, count + 1):
        ds = shard_dataset(_dataset(data_file), Shard(k, count), batch_size=BATCH)
        rep = _report(_evaluate(models, ds), ds, shard=ds.describe())
        # Through JSON, as the shards' files would be read back.
        reports.append(load_report(save_report(rep, tmp_path / f"part{k}.json")))
    for order in itertools.permutations(reports):
        merged = merge_reports(list(order))
        assert merged.evaluation is not None
        _assert_same(merged.evaluation, whole)
        assert merged.data["num_samples"] == SAMPLES
        assert [s["shard"]["index"] for s in merged.extra["shards"]] == list(range(1, count + 1))
        assert all("latency" in s and s["latency"]["fp32"] is not None for s in merged.extra["shards"])
    # And the merged report survives its own round trip.
    again = load_report(save_report(merge_reports(reports), tmp_path / "merged.json"))
    assert again.evaluation is not None
    _assert_same(again.evaluation, whole)


def test_merge_of_one_shard_is_the_run_itself(models: dict[str, onnx.ModelProto], data_file: Path) -> None:
    whole = _evaluate(models, _dataset(data_file))
    _assert_same(merge_evaluations([whole]), whole)


def _parts(models: dict[str, onnx.ModelProto], data_file: Path) -> list[Report]:
    out = []
    for k in (1, 2):
        ds = shard_dataset(_dataset(data_file), Shard(k, 2), batch_size=BATCH)
        out.append(_report(_evaluate(models, ds), ds, shard=ds.describe()))
    return out


def test_merge_refuses_other_runs_with_one_line(models: dict[str, onnx.ModelProto], data_file: Path) -> None:
    a, b = _parts(models, data_file)
    cases = {
        "another model": replace(b, model={**b.model, "fingerprint": {"graph": "other", "weights": "w"}}),
        "another data set": replace(b, data={**b.data, "fingerprint": "f00"}),
        "another calibration cache": replace(b, calibration={**(b.calibration or {}), "amax": {"count": 4}}),
        "shard count": replace(b, extra={"shard": {**b.extra["shard"], "count": 3}}),
    }
    for what, other in cases.items():
        with pytest.raises(ReportError, match=what) as err:
            merge_reports([a, other])
        assert "\n" not in str(err.value)
    ds = shard_dataset(_dataset(data_file), Shard(2, 2), batch_size=BATCH)
    fewer = _report(_evaluate({"fp32": models["fp32"], "int8": models["int8"]}, ds), ds, shard=ds.describe())
    with pytest.raises(ReportError, match="another precision set"):
        merge_reports([a, fewer])
    with pytest.raises(ReportError, match="shard 2/2 missing"):
        merge_reports([a])
    with pytest.raises(ReportError, match="both shard 1/2"):
        merge_reports([a, a, b])
    whole = replace(a, extra={})
    with pytest.raises(ReportError, match="not a partial report"):
        merge_reports([whole, b])


class _NoRangeDataset:
    """A data set without sample_range: the shard reads it in full and keeps its own batches."""

    def __init__(self, path: Path) -> None:
        self._inner = _dataset(path)

    input_names = property(lambda self: self._inner.input_names)
    has_labels = property(lambda self: self._inner.has_labels)

    def __len__(self) -> int:
        return len(self._inner)

    def batches(self, batch_size: int) -> Any:
        return self._inner.batches(batch_size)

    def fingerprint(self) -> str:
        return self._inner.fingerprint()

    def summary(self) -> Any:
        return self._inner.summary()


def test_shards_of_a_data_set_without_sample_range(data_file: Path) -> None:
    whole = [b.feed["input"] for b in _dataset(data_file).batches(BATCH)]
    got = []
    for k in (1, 2):
        ds = shard_dataset(_NoRangeDataset(data_file), Shard(k, 2), batch_size=BATCH)
        part = [b.feed["input"] for b in ds.batches(BATCH)]
        assert sum(len(p) for p in part) == len(ds) == ds.summary().num_samples
        got.extend(part)
    assert len(got) == len(whole)
    for a, b in zip(got, whole, strict=True):
        np.testing.assert_array_equal(a, b)
