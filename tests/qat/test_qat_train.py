"""quant.qat.train: the fine-tuning loop, its checkpoints and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from qat_fixtures import blobs, small_cnn  # noqa: E402
from torch import nn  # noqa: E402

from quant.errors import CacheError, CalibrationError, UsageError  # noqa: E402
from quant.qat.calibrate import calibrate_model  # noqa: E402
from quant.qat.data import ArrayTrainData  # noqa: E402
from quant.qat.swap import quantize_model  # noqa: E402
from quant.qat.train import CHECKPOINT_FORMAT, TrainConfig, TrainingError, fine_tune, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.torch


def _setup(seed: int = 0) -> tuple[Any, ArrayTrainData]:
    x, y = blobs(256, seed=seed)
    q: Any = quantize_model(small_cnn(seed))
    calibrate_model(q, [torch.from_numpy(x[:64])], method="minmax")
    return q, ArrayTrainData(x, y, batch_size=32, seed=seed)


def _accuracy(model: nn.Module, data: ArrayTrainData) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(1).numpy()
    return float((pred == data.labels).mean())


def test_fine_tune_learns_keeps_amax_frozen_and_bn_stats_frozen() -> None:
    q, data = _setup()
    amax_before = {n: b.clone() for n, b in q.named_buffers() if n.endswith("amax")}
    bn_before = q.bn1.running_mean.clone()
    before = _accuracy(q, data)
    result = fine_tune(q, data, config=TrainConfig(epochs=3, lr=0.05), device="cpu")
    assert [e.epoch for e in result.epochs] == [1, 2, 3]
    assert result.epochs[-1].loss < result.epochs[0].loss
    assert result.epochs[-1].lr == pytest.approx(0.0, abs=1e-9)  # cosine decays to zero
    assert result.device == "cpu" and result.seconds_per_epoch is not None
    assert _accuracy(q, data) > max(before, 0.9)
    for n, b in q.named_buffers():
        if n.endswith("amax"):
            assert torch.equal(b, amax_before[n]), n
    assert torch.equal(q.bn1.running_mean, bn_before)
    assert not q.training


def test_bn_statistics_update_when_not_frozen() -> None:
    q, data = _setup()
    bn_before = q.bn1.running_mean.clone()
    fine_tune(q, data, config=TrainConfig(epochs=1, freeze_bn=False, max_steps_per_epoch=2), device="cpu")
    assert not torch.equal(q.bn1.running_mean, bn_before)


def test_custom_loss_optimizer_and_scheduler_are_used() -> None:
    q, data = _setup()
    seen: dict[str, int] = {"loss": 0, "sched_total": 0}

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["loss"] += 1
        return nn.functional.cross_entropy(out, y)

    def sched(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LRScheduler:
        seen["sched_total"] = total
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)

    result = fine_tune(
        q, data, config=TrainConfig(epochs=2, max_steps_per_epoch=3), loss_fn=loss_fn,
        optimizer_factory=lambda params: torch.optim.Adam(params, lr=0.01), scheduler_factory=sched, device="cpu",
    )
    assert seen == {"loss": 6, "sched_total": 6}
    assert result.epochs[-1].lr == pytest.approx(0.01 * 0.5**6)
    assert all(e.steps == 3 for e in result.epochs)


def test_checkpoint_every_epoch_and_resume(tmp_path: Path) -> None:
    ckpt = tmp_path / "qat.pt"
    q, data = _setup()
    fine_tune(q, data, config=TrainConfig(epochs=1, max_steps_per_epoch=2), device="cpu", checkpoint=ckpt)
    payload = torch.load(ckpt, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT and payload["epoch"] == 1
    assert "conv1.input_quantizer.amax" in payload["model"]
    # a fresh model continues from epoch 1 of a 2-epoch run
    q2, data2 = _setup()
    result = fine_tune(q2, data2, config=TrainConfig(epochs=2, max_steps_per_epoch=2), device="cpu",
                       checkpoint=ckpt, resume=True)
    assert result.resumed_from == 1
    assert [e.epoch for e in result.epochs] == [1, 2]
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    assert not list(tmp_path.glob(".quant-tmp-*"))  # atomic writes leave nothing behind


def test_resume_without_a_checkpoint_file_starts_fresh(tmp_path: Path) -> None:
    q, data = _setup()
    result = fine_tune(q, data, config=TrainConfig(epochs=1, max_steps_per_epoch=1), device="cpu",
                       checkpoint=tmp_path / "new.pt", resume=True)
    assert result.resumed_from == 0 and (tmp_path / "new.pt").exists()


def test_checkpoint_of_another_model_or_format_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "other.pt"
    other = quantize_model(nn.Sequential(nn.Linear(64, 4)))
    torch.save({"format": CHECKPOINT_FORMAT, "model": other.state_dict(), "epoch": 1}, ckpt)
    q, _ = _setup()
    with pytest.raises(CacheError, match="was made for another model"):
        load_checkpoint(ckpt, q)
    torch.save({"weights": 1}, ckpt)
    with pytest.raises(CacheError, match="is not a quant QAT checkpoint"):
        load_checkpoint(ckpt, q)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(CacheError, match="is unreadable"):
        load_checkpoint(ckpt, q)
    with pytest.raises(CacheError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", q)


def test_non_finite_loss_is_a_training_error() -> None:
    q, data = _setup()
    with pytest.raises(TrainingError, match=r"epoch 1, step 1: the loss is nan; lower the learning rate"):
        fine_tune(q, data, loss_fn=lambda out, y: out.sum() * float("nan"), device="cpu")


def test_fine_tune_needs_a_calibrated_model_and_sized_data() -> None:
    with pytest.raises(CalibrationError, match="has no amax"):
        fine_tune(quantize_model(small_cnn()), [], device="cpu")
    q, data = _setup()
    with pytest.raises(UsageError, match="must have a len"):
        fine_tune(q, iter(data), device="cpu")
    with pytest.raises(UsageError, match="resume needs a checkpoint path"):
        fine_tune(q, data, resume=True, device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "--epochs must be a positive integer"),
        ({"lr": -1.0}, "--lr must be a positive number"),
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"optimizer": "lion"}, "--optimizer must be one of sgd, adam, adamw"),
        ({"schedule": "poly"}, "--schedule must be one of"),
        ({"momentum": 1.5}, "momentum in"),
        ({"max_steps_per_epoch": 0}, "max steps per epoch"),
        ({"grad_clip": 0.0}, "clipping norm must be positive"),
    ],
)
def test_train_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        TrainConfig(**kwargs)  # type: ignore[arg-type]
