"""Typed configuration shared by the Python API and the CLI.

Every option a command takes lives in one of these frozen dataclasses, so the CLI is a thin
parser and every command is callable from Python with the same knobs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from quant.errors import UsageError

Method = Literal["entropy", "minmax", "percentile", "mse", "auto"]
Scope = Literal["all", "qdq"]
Target = Literal["tensorrt", "onnxruntime"]
OnBadImage = Literal["fail", "skip"]

METHODS: tuple[str, ...] = ("entropy", "minmax", "percentile", "mse")  # one method for every tensor
#: What --method takes: the four methods, or "auto" (per tensor, by measured fidelity).
CALIBRATION_METHODS: tuple[str, ...] = (*METHODS, "auto")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8-ort")


@dataclass(frozen=True)
class DataOptions:
    """Where samples come from and how they are turned into model inputs.

    ``path`` is an image folder, a .npy / .npz file, or ``demo:calib`` / ``demo:eval``.
    ``preprocess`` is a preset name or ``key=value,...`` overrides (see quant.datasets.preprocess);
    None takes everything from the model's input shape with the ``unit`` preset.
    """

    path: str
    preprocess: str | None = None
    max_samples: int | None = None
    seed: int = 0
    batch_size: int = 8
    on_bad_image: OnBadImage = "fail"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples <= 0:
            raise UsageError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.on_bad_image not in ("fail", "skip"):
            raise UsageError(f"--on-bad-image must be 'fail' or 'skip', got {self.on_bad_image!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class CalibrationOptions:
    """How activation ranges are computed and how the cache is written.

    ``method="auto"`` picks a method per tensor by the measured fidelity of the model's outputs on
    held-out calibration samples (docs/CALIBRATION.md); ``auto_budget`` bounds that search in
    forward passes over the calibration set, ``auto_seed`` seeds the held-out split."""

    method: Method = "entropy"
    percentile: float = 99.99
    num_bins: int = 2048
    scope: Scope = "all"
    trt_version: str | None = None  # e.g. "10.3" or "8.6"; None = quant's default TensorRT 10 header
    auto_budget: float = 2.5
    auto_seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise UsageError(f"--method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise UsageError(f"--percentile must be in (0, 100], got {self.percentile}")
        if not self.auto_budget > 0 or self.auto_budget == float("inf"):
            raise UsageError(f"--auto-budget must be a positive number of forward passes, got {self.auto_budget}")
        if self.scope not in ("all", "qdq"):
            raise UsageError(f"--scope must be 'all' or 'qdq', got {self.scope!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class BuildOptions:
    """How the INT8 (or FP16) ONNX model is built from a model and a cache.

    ``cpu`` is the CPU class the ``onnxruntime`` target is built for (``auto``: this machine's;
    ``vnni``, ``avx2``, ``arm``; see quant/backends/cpu.py); the TensorRT target ignores it."""

    precision: Literal["int8", "fp16", "fp32"] = "int8"
    target: Target = "tensorrt"
    exclude: tuple[str, ...] = ()
    strict: bool = False
    cpu: str = "auto"

    def __post_init__(self) -> None:
        if self.precision not in ("int8", "fp16", "fp32"):
            raise UsageError(f"--precision must be int8, fp16 or fp32, got {self.precision!r}")
        if self.target not in ("tensorrt", "onnxruntime"):
            raise UsageError(f"--target must be 'tensorrt' or 'onnxruntime', got {self.target!r}")
        from quant.backends.cpu import CPU_CHOICES

        if self.cpu not in CPU_CHOICES:
            raise UsageError(f"--cpu must be one of {', '.join(CPU_CHOICES)}, got {self.cpu!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class FallbackOptions:
    """Automatic mixed precision for ``quant build``: keep the most sensitive layers in float until
    the INT8 model loses at most ``accuracy_budget`` points of top-1 against FP32 (accuracy on
    labels when the data has them, else 100 - top-1 agreement) and/or its worst output SQNR is at
    least ``min_sqnr`` dB, measured on the build's ``--data`` (at most 512 samples unless its
    ``max_samples`` says otherwise); layers are ranked on the first ``rank_samples`` of them
    (default 128). ``report`` is the fallback file (default ``<output>.fallback.json``). See
    docs/SENSITIVITY.md."""

    accuracy_budget: float | None = None
    min_sqnr: float | None = None
    report: str | None = None
    classifier_output: str | None = None
    threads: int | None = None
    rank_samples: int | None = None  # samples the ranking uses (None: quant.sensitivity.DEFAULT_MAX_SAMPLES)

    def __post_init__(self) -> None:
        if self.accuracy_budget is not None and not 0.0 <= self.accuracy_budget <= 100.0:
            raise UsageError(f"--accuracy-budget must be between 0 and 100 points, got {self.accuracy_budget}")
        if self.rank_samples is not None and self.rank_samples < 1:
            raise UsageError(f"rank_samples must be at least 1, got {self.rank_samples}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")

    @property
    def active(self) -> bool:
        """True when a budget is set (the build then measures and falls back)."""
        return self.accuracy_budget is not None or self.min_sqnr is not None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class EvalOptions:
    """Which precisions are evaluated and how."""

    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    warmup: int = 1
    threads: int | None = None
    classifier_output: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    cpu: str = "auto"  # the CPU class int8-ort is built for (quant/backends/cpu.py)

    def __post_init__(self) -> None:
        from quant.backends.cpu import CPU_CHOICES

        if self.cpu not in CPU_CHOICES:
            raise UsageError(f"--cpu must be one of {', '.join(CPU_CHOICES)}, got {self.cpu!r}")
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise UsageError(
                f"--precisions: unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}"
            )
        if not self.precisions:
            raise UsageError("--precisions must name at least one precision")
        if len(set(self.precisions)) != len(self.precisions):
            raise UsageError("--precisions lists a precision twice")


def parse_precisions(text: str) -> tuple[str, ...]:
    """Parse ``fp32,fp16,int8`` into a validated tuple (fp32 always first when present)."""
    items = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    EvalOptions(precisions=items)  # validates
    return items
