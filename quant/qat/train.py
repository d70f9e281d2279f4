"""Fine-tune a fake-quantized model: a short, plain PyTorch training loop.

What is trained: the weights and biases (and BatchNorm affine parameters). Activation amax is
**frozen** at its calibrated value (a buffer, not a parameter), the choice of
pytorch-quantization's default QAT recipe and of TensorRT's QAT guides: the ranges the
calibration picked stay the ranges the engine uses, training only adapts the weights to the
quantization noise, and there is no extra learning rate to tune. Weight amax follows the weights
(per-channel max, see modules.py). BatchNorm running statistics are frozen by default
(``freeze_bn``): the calibrated ranges were measured with them, and small fine-tuning batches
give noisy statistics.

Defaults: SGD with momentum 0.9, learning rate 1e-3 with a cosine decay to 0 over all steps
(per batch), cross-entropy loss; all replaceable (``loss_fn``, ``optimizer_factory``,
``scheduler_factory``). A checkpoint (model, optimizer, scheduler, epoch, history) is written
atomically after every epoch; ``resume=True`` continues from it.
"""

from __future__ import annotations

import logging
import math
import pickle
import sys
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant._io import atomic_output
from quant.errors import CacheError, QuantError, UsageError
from quant.qat.calibrate import _as_args, check_calibrated

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant", "linear")
CHECKPOINT_FORMAT = "quant.qat.checkpoint/1"

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], Any]


class TrainingError(QuantError):
    """Fine-tuning failed (e.g. the loss became NaN or inf)."""


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of :func:`fine_tune` (ignored where a factory replaces them)."""

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    freeze_bn: bool = True
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise UsageError(f"--epochs must be a positive integer, got {self.epochs!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"--lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise UsageError("weight decay must be >= 0 and momentum in [0, 1)")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise UsageError(f"max steps per epoch must be at least 1, got {self.max_steps_per_epoch}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"gradient clipping norm must be positive, got {self.grad_clip}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: mean training loss, training accuracy (classification, else None), time."""

    epoch: int
    steps: int
    samples: int
    loss: float
    accuracy: float | None
    seconds: float
    lr: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        return cls(**{k: d[k] for k in ("epoch", "steps", "samples", "loss", "accuracy", "seconds", "lr")})


@dataclass(frozen=True)
class TrainResult:
    """What :func:`fine_tune` did, epoch by epoch (resumed epochs included)."""

    epochs: tuple[EpochRecord, ...]
    device: str
    resumed_from: int = 0
    checkpoint: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_epoch(self) -> float | None:
        run = [e.seconds for e in self.epochs if e.epoch > self.resumed_from]
        return sum(run) / len(run) if run else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [e.to_dict() for e in self.epochs],
            "device": self.device,
            "resumed_from": self.resumed_from,
            "checkpoint": self.checkpoint,
            "seconds_per_epoch": self.seconds_per_epoch,
            "config": dict(self.config),
        }


def default_device() -> torch.device:
    """CUDA when PyTorch sees a GPU, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_scheduler(opt: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig) -> Any:
    total = max(total_steps, 1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    if cfg.schedule == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_output(path, make_parents=True) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Read a QAT checkpoint and load its weights and amax into ``model``; return the payload."""
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CacheError(f"checkpoint '{p}' does not exist") from exc
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise CacheError(f"checkpoint '{p}' is unreadable ({exc}); delete it to start over") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CacheError(f"checkpoint '{p}' is not a quant QAT checkpoint ({CHECKPOINT_FORMAT}); delete it or choose another path")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CacheError(
            f"checkpoint '{p}' was made for another model ({first}); delete it or choose another --checkpoint"
        ) from exc
    return payload


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    """A tqdm bar on stderr, or a no-op (tqdm is imported only when progress is wanted)."""
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def _batches_per_epoch(data: Any, cfg: TrainConfig) -> int:
    n = len(data) if isinstance(data, Sized) else None
    if n is None:
        raise UsageError("training data must have a len() (batches per epoch), like a DataLoader, for the LR schedule")
    if cfg.max_steps_per_epoch is not None:
        n = min(n, cfg.max_steps_per_epoch)
    return n


def fine_tune(
    model: nn.Module,
    train_data: Iterable[tuple[Any, torch.Tensor]],
    *,
    config: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    optimizer_factory: OptimizerFactory | None = None,
    scheduler_factory: SchedulerFactory | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Fine-tune a calibrated quantized ``model`` in place for ``config.epochs`` epochs.

    ``train_data`` yields ``(inputs, targets)`` per batch (inputs a tensor or a tuple passed
    positionally) and has ``len()``; a ``set_epoch(epoch)`` method, when present, is called
    before each epoch. ``loss_fn(outputs, targets)`` defaults to cross-entropy.
    ``optimizer_factory(params)`` and ``scheduler_factory(optimizer, total_steps)`` (stepped
    after every batch) replace the configured SGD / cosine schedule. The model ends in eval mode
    on ``device`` (default: CUDA when available).
    """
    cfg = config or TrainConfig()
    check_calibrated(model)
    dev = torch.device(device) if device is not None else default_device()
    torch.manual_seed(cfg.seed)
    model.to(dev)
    steps_per_epoch = _batches_per_epoch(train_data, cfg)
    total_steps = steps_per_epoch * cfg.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UsageError("the model has no trainable parameters (all requires_grad=False)")
    opt = optimizer_factory(params) if optimizer_factory else _make_optimizer(params, cfg)
    sched = scheduler_factory(opt, total_steps) if scheduler_factory else _make_scheduler(opt, total_steps, cfg)
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    history: list[EpochRecord] = []
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume:
        if ckpt is None:
            raise UsageError("resume needs a checkpoint path")
        if ckpt.exists():
            payload = load_checkpoint(ckpt, model)
            model.to(dev)
            opt.load_state_dict(payload["optimizer"])
            if sched is not None and payload.get("scheduler") is not None:
                sched.load_state_dict(payload["scheduler"])
            start_epoch = int(payload["epoch"])
            history = [EpochRecord.from_dict(d) for d in payload.get("history", [])]
            log.info("resuming from checkpoint '%s' after epoch %d", ckpt, start_epoch)
        else:
            log.info("checkpoint '%s' does not exist yet; starting from epoch 1", ckpt)

    for epoch in range(start_epoch, cfg.epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        model.train()
        if cfg.freeze_bn:
            _freeze_bn(model)
        t0 = time.perf_counter()
        loss_sum = 0.0
        correct = 0
        counted = 0
        samples = 0
        steps = 0
        bar = _progress_bar(progress, steps_per_epoch, f"qat epoch {epoch + 1}/{cfg.epochs}")
        try:
            for inputs, targets in train_data:
                if steps >= steps_per_epoch:
                    break
                args = tuple(t.to(dev, non_blocking=True) for t in _as_args(inputs))
                y = targets.to(dev, non_blocking=True)
                out = model(*args)
                loss = criterion(out, y)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"QAT epoch {epoch + 1}, step {steps + 1}: the loss is {loss.item()}; "
                        "lower the learning rate (--lr) or check the data and labels"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                if sched is not None:
                    sched.step()
                n = int(y.shape[0])
                loss_sum += float(loss.detach()) * n
                samples += n
                steps += 1
                if isinstance(out, torch.Tensor) and out.dim() == 2 and y.dim() == 1 and not y.is_floating_point():
                    correct += int((out.detach().argmax(1) == y).sum())
                    counted += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / samples:.4f}")
        finally:
            bar.close()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        if samples == 0:
            raise UsageError("training data yielded no batches")
        record = EpochRecord(
            epoch=epoch + 1, steps=steps, samples=samples, loss=loss_sum / samples,
            accuracy=(correct / counted) if counted else None, seconds=seconds,
            lr=float(opt.param_groups[0]["lr"]),
        )
        history.append(record)
        log.info("QAT epoch %d/%d: loss %.4f%s, %.1f s", record.epoch, cfg.epochs, record.loss,
                 f", train accuracy {100 * record.accuracy:.2f} %" if record.accuracy is not None else "", seconds)
        if ckpt is not None:
            _save_checkpoint(ckpt, {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None and hasattr(sched, "state_dict") else None,
                "history": [h.to_dict() for h in history],
                "config": cfg.to_dict(),
            })
        if on_epoch_end is not None:
            on_epoch_end(record)
    model.eval()
    return TrainResult(
        epochs=tuple(history), device=str(dev), resumed_from=start_epoch,
        checkpoint=str(ckpt) if ckpt is not None else None, config=cfg.to_dict(),
    )
