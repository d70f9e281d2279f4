from __future__ import annotations

import numpy as np
import onnx
import pytest
from calib_fixtures import ArrayDataset, conv_relu_conv, matmul_model, two_io_model

from quant.calibrators import CalibConfig, StatsCollector, calibrate, collect_statistics
from quant.calibrators.stats import pow2_ceil
from quant.errors import CalibrationError, DataError, UsageError


def _images(n: int = 10, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset({"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)})


def test_collect_statistics_matches_numpy_reference() -> None:
    model, w = matmul_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 6)).astype(np.float32)
    collector, n = collect_statistics(
        model, ArrayDataset({"x": x}), ["mm_out", "zero_out", "x"], batch_size=4
    )
    assert n == 11
    stats = collector.stats()
    assert list(stats) == ["mm_out", "zero_out", "x"]
    ref = x @ w
    mm = stats["mm_out"]
    assert mm.count == ref.size
    assert mm.absmax == pytest.approx(float(np.abs(ref).max()), rel=1e-5)
    assert mm.min == pytest.approx(float(ref.min()), rel=1e-5)
    assert mm.max == pytest.approx(float(ref.max()), rel=1e-5)
    assert stats["x"].absmax == float(np.abs(x).max())  # the input itself: bit-exact
    expected_x, _ = np.histogram(np.abs(x), bins=2048, range=(0, pow2_ceil(float(np.abs(x).max()))))
    np.testing.assert_array_equal(stats["x"].counts, expected_x)
    assert not stats["zero_out"].has_range and stats["zero_out"].count == 55


def test_calibrate_result_and_no_range() -> None:
    model, _ = matmul_model()
    data = ArrayDataset({"x": np.random.default_rng(2).standard_normal((9, 6)).astype(np.float32)})
    result, collector = calibrate(
        model,
        data,
        ["mm_out", "zero_out", "y"],
        CalibConfig("percentile", percentile=99.0),
        batch_size=5,
        model_fingerprint={"graph": "g", "weights": "w"},
    )
    assert set(result.amax) == {"mm_out", "y"} and result.no_range == ("zero_out",)
    assert result.method == "percentile" and result.params == {"num_bins": 2048, "percentile": 99.0}
    assert result.num_samples == 9 and result.tensors_scope == "all"
    assert result.data_fingerprint == data.fingerprint()
    assert result.model_fingerprint == {"graph": "g", "weights": "w"}
    assert result.amax["mm_out"] <= collector.stats()["mm_out"].absmax
    # y = mm_out + 0: the same statistics
    assert collector.stats()["y"] == collector.stats()["mm_out"]


def test_conv_relu_conv_all_methods_and_scope() -> None:
    model = conv_relu_conv()
    data = _images(12)
    collector, _ = collect_statistics(model, data, ["conv1_out", "relu_out", "y"], batch_size=5)
    stats = collector.stats()
    conv_min = stats["conv1_out"].min
    assert stats["relu_out"].min == 0.0 and conv_min is not None and conv_min < 0
    assert stats["relu_out"].absmax == stats["conv1_out"].max
    for method in ("entropy", "minmax", "percentile", "mse"):
        result, _ = calibrate(
            model,
            data,
            ["relu_out"],
            CalibConfig(method),
            model_fingerprint="abc",
            data_fingerprint="d",
            scope="qdq",
        )
        assert 0 < result.amax["relu_out"] <= stats["relu_out"].absmax
        assert result.tensors_scope == "qdq" and result.data_fingerprint == "d"


def test_shards_merge_like_one_calibration() -> None:
    model = conv_relu_conv()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3, 8, 8)).astype(np.float32)
    x[7:] *= 10.0  # shard B has a larger range: the histograms must grow and merge exactly
    tensors = ["conv1_out", "relu_out"]
    # batch_size 1: ORT sees the very same inputs in all three runs, so its outputs are bit-identical
    whole, n = collect_statistics(model, ArrayDataset({"x": x}), tensors, batch_size=1)
    shard_a, na = collect_statistics(model, ArrayDataset({"x": x[:7]}), tensors, batch_size=1)
    shard_b, nb = collect_statistics(model, ArrayDataset({"x": x[7:]}), tensors, batch_size=1)
    merged = StatsCollector()
    merged.merge(shard_b)
    merged.merge(shard_a)
    assert n == na + nb == 12
    assert merged.stats() == whole.stats()


def test_two_inputs_only_requested_tensors_fetched() -> None:
    rng = np.random.default_rng(4)
    data = ArrayDataset(
        {
            "a": rng.standard_normal((5, 4)).astype(np.float32),
            "b": rng.standard_normal((5, 4)).astype(np.float32),
        }
    )
    collector, n = collect_statistics(two_io_model(), data, ["prod"], batch_size=2)
    assert n == 5 and list(collector.stats()) == ["prod"]


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    collect_statistics(conv_relu_conv(), _images(4), ["relu_out"], batch_size=2, progress=True)
    captured = capsys.readouterr()
    assert "calibrating" in captured.err and captured.out == ""
    collect_statistics(conv_relu_conv(), _images(4), ["relu_out"], batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_unknown_tensor_names_it() -> None:
    with pytest.raises(CalibrationError) as err:
        collect_statistics(conv_relu_conv(), _images(2), ["relu_out", "conv9_out", "nope"])
    assert str(err.value) == (
        "tensor 'conv9_out' is not in model 'test-model' (1 more tensors are missing too); check the tensor "
        "names (was the list made for another model, or before graph cleanup?)"
    )


def test_weight_tensor_rejected() -> None:
    with pytest.raises(
        CalibrationError, match="tensor 'w1' of model 'net.onnx' is a weight \\(initializer\\)"
    ):
        collect_statistics(conv_relu_conv(), _images(2), ["w1"], model_name="net.onnx")


def test_no_tensors_rejected() -> None:
    with pytest.raises(CalibrationError, match="no tensors to calibrate in model 'test-model'"):
        collect_statistics(conv_relu_conv(), _images(2), [])


def test_zero_samples_is_data_error() -> None:
    empty = ArrayDataset({"x": np.zeros((0, 3, 8, 8), np.float32)}, source="calib/")
    with pytest.raises(DataError) as err:
        collect_statistics(conv_relu_conv(), empty, ["relu_out"])
    assert str(err.value).startswith("dataset 'calib/' gave no samples; calibration needs at least one")


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        (
            {"x": np.zeros((2, 3, 9, 9), np.float32)},
            "input 'x' has shape (2, 3, 9, 9) but model 'test-model' expects (N, 3, 8, 8)",
        ),
        (
            {"x": np.zeros((2, 3, 8), np.float32)},
            "input 'x' has shape (2, 3, 8) but model 'test-model' expects (N, 3, 8, 8)",
        ),
        (
            {"x": np.zeros((2, 3, 8, 8), np.float64)},
            "input 'x' has dtype float64 but model 'test-model' expects float32",
        ),
        (
            {"image": np.zeros((2, 3, 8, 8), np.float32)},
            "the data has no input 'x' that model 'test-model' needs (data inputs: image)",
        ),
        (
            {"x": np.zeros((2, 3, 8, 8), np.float32), "extra": np.zeros((2, 1), np.float32)},
            "the data has input 'extra' that model 'test-model' does not have (model inputs: x)",
        ),
    ],
)
def test_feed_mismatch_is_data_error(feeds: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(DataError) as err:
        collect_statistics(conv_relu_conv(), ArrayDataset(feeds), ["relu_out"])
    assert message in str(err.value)
    assert "ONNXRuntimeError" not in str(err.value)


def test_nan_activation_names_tensor_and_batch() -> None:
    x = np.ones((6, 6), np.float32)
    x[4, 2] = np.nan  # batch 2 with batch_size 2
    model, _ = matmul_model()
    with pytest.raises(CalibrationError, match="tensor 'mm_out' has NaN values in calibration batch 2"):
        collect_statistics(model, ArrayDataset({"x": x}), ["mm_out"], batch_size=2)


def test_bad_arguments() -> None:
    with pytest.raises(UsageError, match="--batch-size must be a positive integer \\(got 0\\)"):
        collect_statistics(conv_relu_conv(), _images(2), ["relu_out"], batch_size=0)
    with pytest.raises(UsageError, match="--scope must be one of all, qdq"):
        calibrate(
            conv_relu_conv(), _images(2), ["relu_out"], CalibConfig(), model_fingerprint="m", scope="some"
        )


def test_model_is_not_modified() -> None:
    model = conv_relu_conv()
    before = model.SerializeToString()
    collect_statistics(model, _images(2), ["conv1_out", "relu_out"])
    assert model.SerializeToString() == before
    assert [o.name for o in model.graph.output] == ["y"]
    assert isinstance(model, onnx.ModelProto)


class _CountingDataset(ArrayDataset):
    """Counts how often the data is read."""

    reads = 0

    def batches(self, batch_size: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        yield from super().batches(batch_size)


def test_partitioned_statistics_are_each_parts_own_from_one_read() -> None:
    from quant.calibrators.auto import SubsetDataset
    from quant.calibrators.calibrate import collect_partitioned_statistics

    model = conv_relu_conv()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((23, 3, 8, 8)).astype(np.float32)
    data = _CountingDataset({"x": x})
    parts = [np.array([1, 5, 6, 20]), np.array([0, 2, 3, 9, 11, 17, 22]), np.array([4, 7, 8, 10, 12, 13, 14, 15, 16, 18, 19, 21])]
    got = collect_partitioned_statistics(model, data, ["conv1_out", "relu_out", "x"], parts, keep=[0, 1], batch_size=4)
    assert data.reads == 1 and got.seen == 23
    for k, pos in enumerate(parts):
        own, n = collect_statistics(model, SubsetDataset(ArrayDataset({"x": x}), pos, tag="t"), ["conv1_out", "relu_out", "x"],
                                    batch_size=4)
        assert n == len(pos)
        mine = got.collectors[k]
        assert mine is not None
        for name, st in own.stats().items():
            other = mine.stats()[name]
            assert (other.count, other.absmax, other.hist_range) == (st.count, st.absmax, st.hist_range)
            np.testing.assert_array_equal(other.counts, st.counts)
    # the kept parts' batches: each part's samples in data order, batches of 4 and a smaller last one
    assert sorted(got.kept) == [0, 1]
    for k in (0, 1):
        batches = got.kept[k]
        assert [b.size for b in batches] == ([4] if k == 0 else [4, 3])
        np.testing.assert_array_equal(np.concatenate([b.feed["x"] for b in batches]), x[parts[k]])
    # a part without samples has no statistics; overlapping parts are refused
    empty = collect_partitioned_statistics(model, data, ["x"], [np.arange(23), np.array([], dtype=np.int64)])
    assert empty.collectors[1] is None and empty.collectors[0] is not None
    with pytest.raises(UsageError, match="distinct"):
        collect_partitioned_statistics(model, data, ["x"], [np.array([0, 1]), np.array([1, 2])])


@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("scope", ["qdq", "all"])  # "all": the model output is itself calibrated
def test_the_statistics_pass_hands_out_the_kept_batches_outputs(
    monkeypatch: pytest.MonkeyPatch, blocked: bool, scope: str
) -> None:
    """``keep_outputs``: the model's FP32 outputs on the kept batches come from the statistics
    pass itself (auto's reference), equal to a run of the whole model up to float rounding, and
    the statistics are those of a pass without them, bit for bit."""
    import importlib

    from quant.backends.onnxruntime import OrtRunner
    from quant.calibrators.calibrate import collect_partitioned_statistics
    from quant.graph.cleanup import cleanup
    from quant.graph.qdq import calibration_tensors
    from tests.models import residual_block

    calibrate_mod = importlib.import_module("quant.calibrators.calibrate")
    monkeypatch.setattr(calibrate_mod, "_BLOCKED", blocked)
    model = cleanup(residual_block(channels=16, size=8))
    tensors = calibration_tensors(model, scope)
    x = np.random.default_rng(8).standard_normal((14, 3, 8, 8)).astype(np.float32)
    parts = [np.array([0, 3, 4, 9, 13]), np.array([1, 2, 5, 6, 7, 8, 10, 11, 12])]
    got = collect_partitioned_statistics(model, ArrayDataset({"input": x}), tensors, parts, keep=[0],
                                         keep_outputs=True, batch_size=4)
    plain = collect_partitioned_statistics(model, ArrayDataset({"input": x}), tensors, parts, keep=[0], batch_size=4)
    assert plain.outputs == {} and sorted(got.outputs) == [0]
    batches, outputs = got.kept[0], got.outputs[0]
    assert [b.size for b in batches] == [4, 1] and len(outputs) == 2
    with OrtRunner(model) as run:
        for batch, out in zip(batches, outputs, strict=True):
            want = run.infer(batch.feed)
            assert set(out) == set(want) == {"output"}
            np.testing.assert_allclose(out["output"], want["output"], rtol=1e-5, atol=1e-6)
    for a, b in zip(got.collectors, plain.collectors, strict=True):
        assert a is not None and b is not None and a.stats() == b.stats()
