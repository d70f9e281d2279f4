"""The demo's LeNet-5 style CNN in PyTorch, and its exact ONNX form built with onnx.helper.

Importing this module imports PyTorch (the ``qat`` extra); ``quant.demo`` itself does not import
it. ``scripts/train_demo.py`` trains :class:`LeNet` and writes :func:`to_onnx`'s model as
``quant/demo/model.onnx``; QAT code can rebuild the PyTorch module from that file with
:func:`from_onnx` (initializer names are the PyTorch state-dict keys).

Architecture: input float32 [batch, 1, 28, 28] in [0, 1] ->
Conv 5x5 (16, pad 2) -> BatchNorm -> ReLU -> MaxPool 2 -> Conv 5x5 (32) -> BatchNorm -> ReLU ->
MaxPool 2 -> Flatten (800) -> Gemm 120 -> ReLU -> Gemm 84 -> ReLU -> Gemm 10 ("logits").
Dropout is used in training only and does not appear in the ONNX graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import ModelProto, TensorProto, helper, numpy_helper
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
IR_VERSION = 8  # loadable by every ONNX Runtime that quant supports (>= 1.17)


class LeNet(nn.Module):
    """LeNet-5 style digit classifier with BatchNorm after each convolution."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        x = self.pool(self.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.drop(self.relu(self.fc1(x)))
        x = self.drop(self.relu(self.fc2(x)))
        return self.fc3(x)


def to_onnx(model: LeNet, *, doc_string: str = "") -> ModelProto:
    """The trained model (eval mode semantics) as an ONNX ModelProto, opset 17, dynamic batch."""
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    inits = [
        numpy_helper.from_array(np.ascontiguousarray(v, dtype=np.float32), name=k)
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    ]
    n = helper.make_node
    nodes = []
    x = INPUT_NAME
    for i, bn in ((1, model.bn1), (2, model.bn2)):
        nodes += [
            n(
                "Conv",
                [x, f"conv{i}.weight", f"conv{i}.bias"],
                [f"conv{i}_out"],
                name=f"conv{i}",
                kernel_shape=[5, 5],
                pads=[2, 2, 2, 2] if i == 1 else [0, 0, 0, 0],
                strides=[1, 1],
            ),
            n(
                "BatchNormalization",
                [f"conv{i}_out", f"bn{i}.weight", f"bn{i}.bias", f"bn{i}.running_mean", f"bn{i}.running_var"],
                [f"bn{i}_out"],
                name=f"bn{i}",
                epsilon=float(bn.eps),
            ),
            n("Relu", [f"bn{i}_out"], [f"relu{i}_out"], name=f"relu{i}"),
            n(
                "MaxPool",
                [f"relu{i}_out"],
                [f"pool{i}_out"],
                name=f"pool{i}",
                kernel_shape=[2, 2],
                strides=[2, 2],
            ),
        ]
        x = f"pool{i}_out"
    nodes.append(n("Flatten", [x], ["flatten_out"], name="flatten", axis=1))
    x = "flatten_out"
    for i in (1, 2, 3):
        out = OUTPUT_NAME if i == 3 else f"fc{i}_out"
        nodes.append(n("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}", transB=1))
        if i < 3:
            nodes.append(n("Relu", [out], [f"relu_fc{i}_out"], name=f"relu_fc{i}"))
            x = f"relu_fc{i}_out"
    num_classes = model.fc3.out_features
    graph = helper.make_graph(
        nodes,
        "lenet_mnist",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="quant scripts/train_demo.py",
        doc_string=doc_string,
    )
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    return proto


def from_onnx(proto: ModelProto) -> LeNet:
    """Rebuild the PyTorch module from the demo ONNX model (weights by initializer name)."""
    arrays = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    num_classes = int(arrays["fc3.weight"].shape[0]) if "fc3.weight" in arrays else 10
    model = LeNet(num_classes=num_classes)
    state = model.state_dict()
    missing = [k for k in state if not k.endswith("num_batches_tracked") and k not in arrays]
    if missing:
        raise ValueError(f"ONNX model lacks LeNet weights {missing}; is it quant's demo model?")
    model.load_state_dict(
        {k: torch.from_numpy(np.array(arrays[k])) if k in arrays else v for k, v in state.items()}
    )
    return model.eval()
