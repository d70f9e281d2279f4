"""quant.qat.calibrate: activation ranges from quant's calibrators or from a calibration cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from qat_fixtures import blobs, small_cnn  # noqa: E402
from torch import nn  # noqa: E402

from quant.backends.base import TensorSpec  # noqa: E402
from quant.calibrators.methods import CalibConfig, compute_amax  # noqa: E402
from quant.calibrators.stats import StatsCollector  # noqa: E402
from quant.datasets.base import Dataset  # noqa: E402
from quant.errors import CacheError, CalibrationError, UsageError  # noqa: E402
from quant.qat.calibrate import calibrate_model, check_calibrated, load_amax, merge_init  # noqa: E402
from quant.qat.export import export_float_onnx, onnx_tensor_names  # noqa: E402
from quant.qat.swap import amax_dict, quantize_model, quantizers  # noqa: E402

pytestmark = pytest.mark.torch


def _batches(x: np.ndarray, size: int = 16) -> list[torch.Tensor]:
    return [torch.from_numpy(x[i:i + size]) for i in range(0, len(x), size)]


@pytest.mark.parametrize("method", ["entropy", "minmax", "percentile", "mse"])
def test_calibration_uses_the_ptq_calibrators_on_the_module_inputs(method: str) -> None:
    """Same statistics code and reduction as PTQ: identical amax on identical activations."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x, _ = blobs(64)
    q: Any = quantize_model(model)
    init = calibrate_model(q, _batches(x), method=method, percentile=99.0)
    # the reference: PTQ's collector fed the same tensors batch by batch
    ref = StatsCollector()
    for b in _batches(x):
        with torch.no_grad():
            ref.collect("0.input_quantizer", b.numpy())
            ref.collect("3.input_quantizer", torch.flatten(model[1](model[0](b)), 1).numpy())
    expected = compute_amax(ref.stats(), CalibConfig(method=method, percentile=99.0))
    assert init.num_samples == 64
    for name, value in expected.items():
        assert init.amax[name] == pytest.approx(value, rel=1e-6)
        assert init.source[name] == f"calibration:{method}"
    if method == "minmax":
        assert init.amax["0.input_quantizer"] == pytest.approx(float(np.abs(x).max()), rel=1e-6)


def test_calibration_runs_the_float_model_and_restores_mode() -> None:
    q: Any = quantize_model(small_cnn())
    q.train()
    calls: list[bool] = []
    q.conv2.register_forward_pre_hook(lambda m, a: calls.append(m.input_quantizer.enabled))
    calibrate_model(q, _batches(blobs(32)[0]), method="minmax")
    assert calls and not any(calls)  # quantizers off while collecting
    assert q.training and all(qq.enabled for qq in quantizers(q).values())
    check_calibrated(q)


def test_only_restricts_which_quantizers_are_calibrated() -> None:
    q: Any = quantize_model(small_cnn())
    init = calibrate_model(q, _batches(blobs(16)[0]), method="minmax", only=["fc.input_quantizer"])
    assert list(init.amax) == ["fc.input_quantizer"]
    assert amax_dict(q)["conv1.input_quantizer"] is None
    with pytest.raises(CalibrationError, match="'conv1.input_quantizer' has no amax"):
        check_calibrated(q)


def test_calibration_errors() -> None:
    q: Any = quantize_model(small_cnn())
    with pytest.raises(CalibrationError, match="no batches"):
        calibrate_model(q, [])
    with pytest.raises(UsageError, match="--method must be one of"):
        calibrate_model(q, _batches(blobs(4)[0]), method="kl")
    with pytest.raises(UsageError, match="no quantizer named 'nope'"):
        calibrate_model(q, _batches(blobs(4)[0]), only=["nope"])
    with pytest.raises(UsageError, match="no quantizers"):
        calibrate_model(small_cnn(), _batches(blobs(4)[0]))
    x = blobs(4)[0]
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(CalibrationError, match="NaN or inf"):
        calibrate_model(q, _batches(x))


def test_unused_module_is_reported() -> None:
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.unused = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    q: Any = quantize_model(Partial())
    with pytest.raises(CalibrationError, match="'unused.input_quantizer' never saw an input"):
        calibrate_model(q, [torch.ones(2, 2)])


def test_all_zero_input_leaves_the_module_in_float() -> None:
    model: Any = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
        model[0].bias.fill_(-1.0)  # ReLU output is always 0 for positive inputs
    q: Any = quantize_model(model)
    init = calibrate_model(q, [torch.rand(8, 4)], method="minmax")
    assert init.disabled == ("2.input_quantizer",)
    assert init.amax["2.input_quantizer"] is None
    assert not q[2].weight_quant_enabled and q[0].weight_quant_enabled
    check_calibrated(q)  # disabled quantizers need no amax


def _npz_dataset(tmp_path: Path, x: np.ndarray, y: np.ndarray) -> Dataset:
    from quant.datasets.loader import open_dataset

    path = tmp_path / "data.npz"
    np.savez(path, input=x, labels=y)
    return open_dataset(path, inputs=[TensorSpec("input", ("N", 1, 8, 8), np.dtype(np.float32))])


def test_amax_from_a_quant_cache_of_the_exported_float_model(tmp_path: Path) -> None:
    """PTQ calibration of the float ONNX export -> TensorRT cache -> QAT quantizers, by name.

    The BatchNorm output feeding the residual add only exists under the convolution's name in
    the float export (the exporter folds the BatchNorm): matched through the second candidate.
    """
    from quant.cache.io import read_cache, write_cache
    from quant.calibrators.calibrate import calibrate
    from quant.fingerprint import model_fingerprint

    model: Any = small_cnn()
    x, y = blobs(48)
    example = torch.from_numpy(x[:2])
    fp32 = export_float_onnx(model, example, output_names=["logits"])
    q: Any = quantize_model(model)
    names = onnx_tensor_names(q, example, output_names=["logits"])
    assert names["conv1.input_quantizer"] == ("input",)
    assert len(names["add.input_quantizer"]) == 2  # BatchNorm output + the Conv output before it
    present = {o for node in fp32.graph.node for o in node.output} | {i.name for i in fp32.graph.input}
    tensors = sorted({n for cands in names.values() for n in cands if n in present})
    result, _ = calibrate(fp32, _npz_dataset(tmp_path, x, y), tensors, CalibConfig("minmax"),
                          model_fingerprint=model_fingerprint(fp32).to_dict(), batch_size=16)
    cache = tmp_path / "model.cache"
    write_cache(cache, result)
    loaded = read_cache(cache)
    init = load_amax(q, loaded.amax, names, cache_name="cache 'model.cache'")
    assert init.unmatched == ()
    assert init.source["add.input_quantizer"].startswith("cache:/conv2/")
    reference: Any = quantize_model(model)
    ref = calibrate_model(reference, _batches(x), method="minmax")
    for name, value in ref.amax.items():
        assert init.amax[name] == pytest.approx(value, rel=1e-5), name


def test_load_amax_partial_match_and_merge() -> None:
    q: Any = quantize_model(small_cnn())
    names = {"conv1.input_quantizer": "input", "fc.input_quantizer": "flat"}
    init = load_amax(q, {"input": 3.0, "other": 1.0, "flat": 0.0}, names)
    assert init.amax == {"conv1.input_quantizer": 3.0}
    assert "fc.input_quantizer" in init.unmatched and "conv2.input_quantizer" in init.unmatched
    rest = calibrate_model(q, _batches(blobs(16)[0]), method="minmax", only=init.unmatched)
    merged = merge_init(init, rest)
    assert merged.source["conv1.input_quantizer"] == "cache:input"
    assert merged.source["fc.input_quantizer"] == "calibration:minmax"
    assert float(q.conv1.input_quantizer.amax) == 3.0
    check_calibrated(q)


def test_load_amax_with_no_match_is_a_cache_error() -> None:
    q: Any = quantize_model(small_cnn())
    with pytest.raises(CacheError, match=r"cache 'x.cache': none of the model's 6 quantizer inputs is in the cache \(first expected tensor: 'input'\)"):
        load_amax(q, {"something_else": 1.0}, {"conv1.input_quantizer": ("input",)}, cache_name="cache 'x.cache'")


def test_auto_picks_per_quantizer_by_measured_fidelity_and_refits_on_all_samples() -> None:
    """method="auto": a seeded held-out part scores the candidates with fake quantization; the
    final ranges are each quantizer's chosen method over every sample's statistics."""
    from quant.calibrators.auto import CANDIDATES, AutoRecord, candidate_ranges

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x, _ = blobs(160)
    x[:4] *= 30.0  # outliers for the methods to disagree on
    q: Any = quantize_model(model)
    init = calibrate_model(q, _batches(x), method="auto", seed=1)
    again = calibrate_model(quantize_model(model), _batches(x), method="auto", seed=1)
    assert init.auto is not None and again.auto is not None
    assert init.amax == again.amax  # seeded, deterministic (only the timing differs)
    assert {**init.auto, "seconds": 0} == {**again.auto, "seconds": 0}
    rec = AutoRecord.from_dict(init.auto)
    assert 1 <= rec.held_out <= 32 and rec.statistics_samples == 160 - rec.held_out
    assert set(rec.scores) == {c.label for c in CANDIDATES}
    assert rec.score.sqnr_db >= max(s.sqnr_db for s in rec.scores.values())
    # the bootstrap firmness of the model-level choice, from per-sample figures as the ONNX scorer's
    assert rec.held_out >= 4 and rec.firmness["samples"] == rec.held_out
    assert set(rec.firmness["shares"]) == set(rec.scores) and sum(rec.firmness["shares"].values()) == pytest.approx(1.0)
    ref = StatsCollector()
    for b in _batches(x):
        with torch.no_grad():
            ref.collect("0.input_quantizer", b.numpy())
            ref.collect("3.input_quantizer", torch.flatten(model[1](model[0](b)), 1).numpy())
    table = candidate_ranges(ref.stats())
    for name, label in rec.choice.items():
        assert init.amax[name] == pytest.approx(table[label][name], rel=1e-6)
        assert init.source[name] == f"calibration:auto:{label}"
    with pytest.raises(CalibrationError, match="held 0 of 1"):
        calibrate_model(quantize_model(model), [torch.from_numpy(x[:1])], method="auto", seed=3)
