"""The runner interface that eval uses; ONNX Runtime and TensorRT runners are interchangeable."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None or a string for a dynamic dimension) and numpy dtype of a model input/output."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d > 0 for d in self.shape)


class Runner(Protocol):
    """open on construction or __enter__; infer(feed) -> outputs by name; close releases memory."""

    def __enter__(self) -> Runner: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def input_specs(self) -> list[TensorSpec]: ...

    def output_names(self) -> list[str]: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...
