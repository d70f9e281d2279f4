"""Engine build options and optimization-profile shapes (pure: no TensorRT import).

The CLI (:mod:`quant.cli.trt_options`) parses its options into :class:`EngineBuildOptions`;
:func:`quant.backends.tensorrt.builder.build_engine` consumes it. Shapes follow trtexec's spirit,
one input per ``--shapes`` option::

    --shapes input:1x3x224x224,8x3x224x224,32x3x224x224     # min, opt, max
    --shapes input:8x3x224x224                               # min = opt = max
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from quant.backends.base import TensorSpec
from quant.errors import UsageError

Precision = Literal["fp32", "fp16", "int8"]
CalibratorKind = Literal["entropy2", "minmax", "entropy"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: quant's names for TensorRT's calibrators: IInt8EntropyCalibrator2 (TensorRT's recommendation
#: for CNNs), IInt8MinMaxCalibrator (recommended for NLP), IInt8EntropyCalibrator (legacy entropy).
CALIBRATORS: tuple[str, ...] = ("entropy2", "minmax", "entropy")
#: TensorRT's builder optimization levels (8.6+): 0 fastest build ... 5 slowest build; 3 is the default.
OPTIMIZATION_LEVELS = range(0, 6)


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shape of one network input for TensorRT's optimization profile."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("--shapes: empty input name; write it as NAME:MIN,OPT,MAX")
        ranks = {len(self.min), len(self.opt), len(self.max)}
        if len(ranks) != 1:
            raise UsageError(
                f"--shapes {self.text}: min, opt and max must have the same number of dimensions"
            )
        for label, shape in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
                raise UsageError(f"--shapes {self.text}: {label} dimensions must be positive integers")
        for i, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max, strict=True)):
            if not lo <= mid <= hi:
                raise UsageError(
                    f"--shapes {self.text}: dimension {i} must satisfy min <= opt <= max "
                    f"(got {lo}, {mid}, {hi})"
                )

    @property
    def text(self) -> str:
        """The ``NAME:MIN,OPT,MAX`` form."""
        return f"{self.name}:{_fmt(self.min)},{_fmt(self.opt)},{_fmt(self.max)}"

    @property
    def is_fixed(self) -> bool:
        return self.min == self.opt == self.max

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeProfile:
        try:
            return cls(
                name=str(d["name"]),
                min=tuple(int(x) for x in d["min"]),
                opt=tuple(int(x) for x in d["opt"]),
                max=tuple(int(x) for x in d["max"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"shape profile record {dict(d)!r} is malformed ({exc})") from exc


def _parse_dims(text: str, spec: str) -> tuple[int, ...]:
    parts = text.strip().lower().split("x")
    dims: list[int] = []
    for p in parts:
        p = p.strip()
        if not p.isdigit():
            raise UsageError(
                f"--shapes '{spec}': '{text}' is not a shape; write dimensions separated by 'x', "
                f"e.g. 1x3x224x224"
            )
        dims.append(int(p))
    return tuple(dims)


def parse_shape_spec(spec: str) -> ShapeProfile:
    """``NAME:MIN,OPT,MAX`` or ``NAME:SHAPE`` to a :class:`ShapeProfile`.

    The name is split off at the *last* colon, so names such as ``input:0`` work
    (``input:0:1x3x224x224``).
    """
    name, sep, shapes = spec.strip().rpartition(":")
    if not sep or not name or not shapes:
        raise UsageError(
            f"--shapes '{spec}': expected NAME:MIN,OPT,MAX such as "
            f"input:1x3x224x224,8x3x224x224,32x3x224x224 (or NAME:SHAPE for a fixed shape)"
        )
    parts = shapes.split(",")
    if len(parts) == 1:
        dims = _parse_dims(parts[0], spec)
        return ShapeProfile(name, dims, dims, dims)
    if len(parts) != 3:
        raise UsageError(
            f"--shapes '{spec}': give one shape or three (min,opt,max), got {len(parts)}"
        )
    lo, mid, hi = (_parse_dims(p, spec) for p in parts)
    return ShapeProfile(name, lo, mid, hi)


def _fmt_dynamic(shape: Sequence[object]) -> str:
    """``(None, 3, None, None)`` -> ``?x3x?x?``."""
    return "x".join("?" if _is_dynamic(d) else str(d) for d in shape)


def _is_dynamic(dim: object) -> bool:
    return not (isinstance(dim, int) and not isinstance(dim, bool) and dim > 0)


def _suggest(spec: TensorSpec) -> str:
    def pick(i: int, d: object, batch: int) -> str:
        if not _is_dynamic(d):
            return str(d)
        return str(batch) if i == 0 else "<size>"

    shapes = [
        "x".join(pick(i, d, b) for i, d in enumerate(spec.shape)) for b in (1, 8, 32)
    ]
    return f"--shapes {spec.name}:{','.join(shapes)}"


def resolve_profiles(
    inputs: Sequence[TensorSpec], shapes: Sequence[ShapeProfile]
) -> tuple[ShapeProfile, ...]:
    """Check ``shapes`` against the network inputs; return the profiles of the dynamic inputs.

    Every input with a dynamic dimension needs a profile; a profile must name an input, have its
    rank and agree with its fixed dimensions. Profiles given for fully static inputs are checked
    and dropped (TensorRT makes their profile itself).
    """
    by_name = {s.name: s for s in inputs}
    given: dict[str, ShapeProfile] = {}
    for given_prof in shapes:
        if given_prof.name in given:
            raise UsageError(f"--shapes names input '{given_prof.name}' twice; give one profile per input")
        if given_prof.name not in by_name:
            known = ", ".join(repr(n) for n in by_name) or "none"
            raise UsageError(
                f"--shapes names input '{given_prof.name}', which the model does not have (inputs: {known})"
            )
        given[given_prof.name] = given_prof
    out: list[ShapeProfile] = []
    for spec in inputs:
        prof = given.get(spec.name)
        dynamic = any(_is_dynamic(d) for d in spec.shape)
        if prof is None:
            if dynamic:
                raise UsageError(
                    f"input '{spec.name}' has a dynamic shape ({_fmt_dynamic(spec.shape)}); "
                    f"TensorRT needs its min/opt/max, e.g. {_suggest(spec)}"
                )
            continue
        if len(prof.min) != len(spec.shape):
            raise UsageError(
                f"--shapes {prof.text}: input '{spec.name}' has {len(spec.shape)} dimensions, "
                f"the profile has {len(prof.min)}"
            )
        for i, d in enumerate(spec.shape):
            if not _is_dynamic(d) and not (prof.min[i] == prof.opt[i] == prof.max[i] == d):
                raise UsageError(
                    f"--shapes {prof.text}: dimension {i} of input '{spec.name}' is fixed at {d} in "
                    f"the model; use {d} for min, opt and max"
                )
        if dynamic:
            out.append(prof)
    return tuple(out)


def default_batch_profiles(
    inputs: Sequence[TensorSpec], shapes: Sequence[ShapeProfile]
) -> tuple[tuple[ShapeProfile, ...], tuple[ShapeProfile, ...]]:
    """``shapes`` plus a batch profile 1 / 8 / 32 for each input whose only dynamic dimension is
    the first (the batch) and that ``shapes`` does not name. Returns (all, added). Inputs with
    other dynamic dimensions (H, W, sequence) are left to :func:`resolve_profiles`, which asks for
    ``--shapes``: no size can be guessed for them."""
    named = {p.name for p in shapes}
    added: list[ShapeProfile] = []
    for spec in inputs:
        if spec.name in named or not spec.shape or spec.shape[0] is not None:
            continue
        rest = spec.shape[1:]
        if any(d is None for d in rest):
            continue  # H/W dynamic: resolve_profiles asks for --shapes
        fixed = tuple(int(d) for d in rest if d is not None)
        added.append(ShapeProfile(spec.name, (1, *fixed), (8, *fixed), (32, *fixed)))
    return (*shapes, *added), tuple(added)


def calibration_shapes(
    inputs: Sequence[TensorSpec], profiles: Sequence[ShapeProfile]
) -> dict[str, tuple[int, ...]]:
    """The shape of each input during INT8 calibration: fixed shape, or the profile's opt shape
    (TensorRT calibrates at the calibration profile's opt dimensions)."""
    by_name = {p.name: p for p in profiles}
    out: dict[str, tuple[int, ...]] = {}
    for spec in inputs:
        if spec.name in by_name:
            out[spec.name] = by_name[spec.name].opt
        elif any(_is_dynamic(d) for d in spec.shape):
            raise UsageError(
                f"input '{spec.name}' has a dynamic shape and no profile; give {_suggest(spec)}"
            )
        else:
            out[spec.name] = tuple(int(cast(int, d)) for d in spec.shape)
    return out


# --------------------------------------------------------------------------------------------
# Build options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineBuildOptions:
    """How to build a TensorRT engine. Defaults suit a first INT8 build.

    - ``precision``: int8 | fp16 | fp32.
    - ``allow_fp16``: INT8 builds on TensorRT < 11 also let TensorRT pick FP16 kernels for layers
      it does not run in INT8 (trtexec's ``--best``); off: those layers run in FP32.
    - ``dynamic_range``: INT8 from the cache's ranges via ``ITensor.set_dynamic_range``, no
      calibrator (TensorRT 8.6-10.x only).
    - ``calibrator``: entropy2 | minmax | entropy; None picks the algorithm the cache's header
      names (entropy2 when there is no cache).
    - ``workspace_mb``: limit of TensorRT's workspace memory pool; None keeps TensorRT's default
      (the GPU's memory).
    - ``timing_cache``: file loaded before and saved after the build (reused across builds).
    - ``optimization_level``: 0-5; None keeps TensorRT's default (3).
    - ``shapes``: optimization-profile shapes of the dynamic inputs.
    - ``plugins``: plugin libraries loaded before parsing.
    - ``force_cache``: use a cache whose header names another calibration algorithm, rewriting
      the header.
    - ``strict``: fail instead of warning on cache/model mismatches (ranges missing for network
      tensors with ``dynamic_range``, cache entries that are not network tensors).
    - ``exclude``: node names or op types kept in float when quant inserts Q/DQ (TensorRT 11).
    - ``device``: CUDA device index.
    - ``compute_capabilities``: TensorRT-RTX only: the target GPUs (``("8.9", "12.0")``, or
      ``("current",)`` for this machine's GPU); () keeps TensorRT-RTX's default set.
    """

    precision: Precision = "int8"
    allow_fp16: bool = True
    dynamic_range: bool = False
    calibrator: CalibratorKind | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = None
    shapes: tuple[ShapeProfile, ...] = ()
    plugins: tuple[Path, ...] = ()
    force_cache: bool = False
    strict: bool = False
    exclude: tuple[str, ...] = ()
    device: int = 0
    compute_capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.calibrator is not None and self.calibrator not in CALIBRATORS:
            raise UsageError(f"--calibrator must be one of {', '.join(CALIBRATORS)}, got {self.calibrator!r}")
        if self.precision != "int8":
            for flag, on in (
                ("--dynamic-range", self.dynamic_range),
                ("--calibrator", self.calibrator is not None),
                ("--force-cache", self.force_cache),
            ):
                if on:
                    raise UsageError(f"{flag} only applies to --precision int8 (got --precision {self.precision})")
        if self.dynamic_range and self.calibrator is not None:
            raise UsageError(
                "--dynamic-range sets ranges from the cache without any calibrator; drop --calibrator "
                "or --dynamic-range"
            )
        if self.workspace_mb is not None and (isinstance(self.workspace_mb, bool) or self.workspace_mb < 1):
            raise UsageError(f"--workspace-mb must be a positive number of MiB, got {self.workspace_mb!r}")
        if self.optimization_level is not None and self.optimization_level not in OPTIMIZATION_LEVELS:
            raise UsageError(f"--optimization-level must be 0 to 5, got {self.optimization_level!r}")
        if isinstance(self.device, bool) or self.device < 0:
            raise UsageError(f"--device must be a CUDA device index >= 0, got {self.device!r}")
        from quant.backends.tensorrt.flavors import parse_compute_capabilities

        if tuple(parse_compute_capabilities(",".join(self.compute_capabilities))) != tuple(self.compute_capabilities):
            raise UsageError(
                f"compute capabilities must be written like 8.9 or current, got {list(self.compute_capabilities)}"
            )
        seen: set[str] = set()
        for prof in self.shapes:
            if prof.name in seen:
                raise UsageError(f"--shapes names input '{prof.name}' twice; give one profile per input")
            seen.add(prof.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "allow_fp16": self.allow_fp16,
            "dynamic_range": self.dynamic_range,
            "calibrator": self.calibrator,
            "workspace_mb": self.workspace_mb,
            "timing_cache": None if self.timing_cache is None else str(self.timing_cache),
            "optimization_level": self.optimization_level,
            "shapes": [p.to_dict() for p in self.shapes],
            "plugins": [str(p) for p in self.plugins],
            "force_cache": self.force_cache,
            "strict": self.strict,
            "exclude": list(self.exclude),
            "device": self.device,
            "compute_capabilities": list(self.compute_capabilities),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineBuildOptions:
        known = {
            "precision", "allow_fp16", "dynamic_range", "calibrator", "workspace_mb", "timing_cache",
            "optimization_level", "shapes", "plugins", "force_cache", "strict", "exclude", "device",
            "compute_capabilities",
        }
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"engine build options have unknown keys {unknown}; expected some of {sorted(known)}")
        try:
            tc = d.get("timing_cache")
            return cls(
                precision=d.get("precision", "int8"),
                allow_fp16=bool(d.get("allow_fp16", True)),
                dynamic_range=bool(d.get("dynamic_range", False)),
                calibrator=d.get("calibrator"),
                workspace_mb=d.get("workspace_mb"),
                timing_cache=None if tc is None else Path(tc),
                optimization_level=d.get("optimization_level"),
                shapes=tuple(ShapeProfile.from_dict(p) for p in d.get("shapes", ())),
                plugins=tuple(Path(p) for p in d.get("plugins", ())),
                force_cache=bool(d.get("force_cache", False)),
                strict=bool(d.get("strict", False)),
                exclude=tuple(str(x) for x in d.get("exclude", ())),
                device=int(d.get("device", 0)),
                compute_capabilities=tuple(str(x) for x in d.get("compute_capabilities", ())),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"engine build options are malformed ({exc})") from exc


__all__ = [
    "CALIBRATORS",
    "OPTIMIZATION_LEVELS",
    "PRECISIONS",
    "CalibratorKind",
    "EngineBuildOptions",
    "Precision",
    "ShapeProfile",
    "calibration_shapes",
    "default_batch_profiles",
    "parse_shape_spec",
    "resolve_profiles",
]
