"""Shards run on the local executor and on a real local Ray (2 CPUs) and merge into exactly the
numbers of one unsharded run; Ray retries a task whose worker died and reports it.

Ray starts once for the module (a few seconds on 2 cores); every Ray test shares it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quant import api
from quant.config import DataOptions, EvalOptions
from quant.errors import UsageError
from quant.executors import LocalExecutor, ShardTask, make_executor
from quant.report.schema import Report, load_report
from tests.models import mlp_eval_files

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'quant[ray]')")

SAMPLES = 45
BATCH = 4
PRECISIONS = ("fp32", "int8")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return mlp_eval_files(tmp_path_factory.mktemp("shards"), samples=SAMPLES, seed=3)


@pytest.fixture(scope="module")
def ray_executor() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ex = make_executor("ray")
    try:
        yield ex
    finally:
        ex.close()
        ray.shutdown()


def _data(data: Path) -> DataOptions:
    return DataOptions(str(data), batch_size=BATCH)


def _whole(files: tuple[Path, Path, Path]) -> Report:
    model, data, cache = files
    return api.evaluate(model, _data(data), cache=cache, options=EvalOptions(precisions=PRECISIONS, threads=1))


def _assert_same(merged: Report, whole: Report) -> None:
    assert merged.evaluation is not None and whole.evaluation is not None
    assert merged.evaluation.num_samples == whole.evaluation.num_samples == SAMPLES
    assert merged.data["fingerprint"] == whole.data["fingerprint"]
    for m, w in zip(merged.evaluation.precisions, whole.evaluation.precisions, strict=True):
        assert m.classification == w.classification
        for mf, wf in zip(m.fidelity, w.fidelity, strict=True):
            for key in ("sqnr_db", "cosine", "mean_sample_cosine", "min_sample_cosine", "mean_rel_error",
                        "max_abs_error"):
                a, b = getattr(mf, key), getattr(wf, key)
                assert (a is None and b is None) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (key, a, b)


def test_local_executor_shards_merge_exactly(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, data, cache = files
    out = tmp_path / "report.json"
    merged = api.evaluate_sharded(
        model, _data(data), shards=3, executor="local", cache=cache,
        options=EvalOptions(precisions=PRECISIONS, threads=1), report=out,
    )
    _assert_same(merged, _whole(files))
    _assert_same(load_report(out), _whole(files))
    assert [t["attempts"] for t in merged.extra["executor"]["tasks"]] == [1, 1, 1]
    assert len(merged.extra["shards"]) == 3


def test_ray_shards_merge_exactly(files: tuple[Path, Path, Path], ray_executor: Any, tmp_path: Path) -> None:
    model, data, cache = files
    merged = api.evaluate_sharded(
        model, _data(data), shards=4, executor=ray_executor, cache=cache,
        options=EvalOptions(precisions=PRECISIONS), report=tmp_path / "r.json",
    )
    _assert_same(merged, _whole(files))
    assert merged.extra["executor"]["name"] == "ray"
    assert all(t["node"] for t in merged.extra["executor"]["tasks"])


def test_ray_sensitivity_layer_shards_equal_one_run(files: tuple[Path, Path, Path], ray_executor: Any) -> None:
    from quant.sensitivity import SensitivityOptions

    model, data, cache = files
    opts = SensitivityOptions(metric="sqnr", exact=True, threads=1)
    whole = api.sensitivity(model, _data(data), cache=cache, options=opts).result
    sharded = api.sensitivity_sharded(model, _data(data), cache=cache, shards=2, executor=ray_executor,
                                      options=opts).result
    assert sharded.ranking == whole.ranking
    assert [x.score for x in sharded.layers] == [x.score for x in whole.layers]
    assert sharded.reference == whole.reference and sharded.all_int8 == whole.all_int8


def test_ray_retries_a_task_whose_worker_died(files: tuple[Path, Path, Path], ray_executor: Any,
                                              tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from quant.pipeline.distributed import eval_shard_task
    from tests.executors.faults import die_once_then_evaluate

    model, data, cache = files
    opts = EvalOptions(precisions=PRECISIONS, threads=1)
    tasks = [
        ShardTask(f"shard {k}/2", {"model": str(model), "data": _data(data), "cache": str(cache), "options": opts,
                                   "exclude": [], "shard": f"{k}/2", "marker_dir": str(tmp_path)})
        for k in (1, 2)
    ]
    with caplog.at_level("WARNING", logger="quant.executors.ray"):
        results = ray_executor.run(die_once_then_evaluate, tasks)
    assert [r.attempts for r in ray_executor.reports] == [2, 2]
    assert "retried by Ray: 2 attempts" in caplog.text
    # The retried shards are the shards: same partial reports as a clean run.
    clean = LocalExecutor().run(eval_shard_task, tasks)
    for got, want in zip(results, clean, strict=True):
        for g, w in zip(got["evaluation"]["precisions"], want["evaluation"]["precisions"], strict=True):
            assert (g["classification"], g["fidelity"]) == (w["classification"], w["fidelity"])  # latency aside


def test_a_quant_error_in_a_task_is_raised_as_itself(files: tuple[Path, Path, Path], ray_executor: Any) -> None:
    from quant.errors import DataError

    model, _, cache = files
    # Both shards fail the same way; Ray reports whichever fails first.
    with pytest.raises(DataError, match=r"^shard [12]/2: data '.*missing.npz': no such file"):
        api.evaluate_sharded(model, DataOptions("/nonexistent/missing.npz"), shards=2, executor=ray_executor,
                             cache=cache, options=EvalOptions(precisions=PRECISIONS))


def test_ray_calibration_shards_give_the_same_cache(files: tuple[Path, Path, Path], ray_executor: Any,
                                                    tmp_path: Path) -> None:
    """Statistics collected in shards on Ray merge exactly: the cache is byte for byte one run's."""
    model, data, _ = files
    one = tmp_path / "one.cache"
    two = tmp_path / "two.cache"
    whole = api.calibrate(model, _data(data), cache=one)
    sharded = api.calibrate_sharded(model, _data(data), cache=two, shards=3, executor=ray_executor)
    assert sharded.result.amax == whole.result.amax and sharded.result.num_samples == SAMPLES
    assert two.read_text() == one.read_text()


def test_executor_option_errors() -> None:
    with pytest.raises(UsageError, match="--executor must be one of local, ray"):
        make_executor("spark")
    with pytest.raises(UsageError, match="--ray-address needs --executor ray"):
        make_executor("local", address="auto")
