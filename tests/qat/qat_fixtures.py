"""Tiny PyTorch models and data for the QAT tests (import only from torch-marked tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from quant.qat.modules import Add


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, a residual block through quant.qat.Add, ConvTranspose, MaxPool, Linear."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.add = Add()
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.add(self.bn2(self.conv2(y)), y))
        y = self.pool(torch.relu(self.up(y)))
        return self.fc(torch.flatten(y, 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics (negative scales included) and eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            stats: Any = m
            stats.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            stats.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def small_cnn(seed: int = 0) -> Any:
    """A SmallCNN with random weights and BatchNorm statistics, in eval mode (typed Any: tests
    reach into its submodules, which nn.Module's typing cannot express)."""
    torch.manual_seed(seed)
    return randomize_bn(SmallCNN(), seed)


def blobs(n: int, seed: int = 0, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A learnable toy task: class k has a bright blob in quadrant k of an 8x8 image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.normal(0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    for i, k in enumerate(y):
        r, c = divmod(int(k), 2)
        x[i, 0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] += 1.5
    return x, y.astype(np.int64)
