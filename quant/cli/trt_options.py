"""Click options for TensorRT engine builds and runs (``quant build/eval --backend tensorrt|tensorrt-rtx``).

Usage in a command::

    @click.command("build")
    ...
    @trt_build_options()            # adds --allow-fp16, --dynamic-range, --calibrator, --workspace-mb,
    def build_command(..., trt_options: TrtCliOptions):   # --timing-cache, --optimization-level,
        opts = trt_options.to_build_options(precision=precision, strict=strict, exclude=exclude)
        build_engine(model, output=output, options=opts, cache=cache, calib_dataset=dataset)

The decorator collapses its options into one ``trt_options`` keyword argument (a
:class:`TrtCliOptions`), so commands keep short signatures. Nothing here imports TensorRT.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from quant.backends.tensorrt.options import (
    CALIBRATORS,
    CalibratorKind,
    EngineBuildOptions,
    Precision,
    ShapeProfile,
    parse_shape_spec,
)
from quant.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


class ShapesType(click.ParamType):
    """``NAME:MIN,OPT,MAX`` (e.g. ``input:1x3x224x224,8x3x224x224,32x3x224x224``) or ``NAME:SHAPE``."""

    name = "NAME:MIN,OPT,MAX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> ShapeProfile:
        if isinstance(value, ShapeProfile):
            return value
        try:
            return parse_shape_spec(str(value))
        except UsageError as exc:
            self.fail(str(exc).removeprefix("--shapes "), param, ctx)


SHAPES = ShapesType()


class ComputeCapabilitiesType(click.ParamType):
    """``8.9,12.0`` / ``sm89,sm120`` / ``current``."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        from quant.backends.tensorrt.flavors import parse_compute_capabilities

        try:
            return parse_compute_capabilities(str(value))
        except UsageError as exc:
            self.fail(str(exc).removeprefix("--compute-capability: "), param, ctx)


COMPUTE_CAPABILITIES = ComputeCapabilitiesType()


@dataclass(frozen=True)
class TrtCliOptions:
    """The values of the options :func:`trt_build_options` (and :func:`trt_runtime_options`) add."""

    allow_fp16: bool = True
    dynamic_range: bool = False
    calibrator: str | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    optimization_level: int | None = None
    shapes: tuple[ShapeProfile, ...] = ()
    plugins: tuple[Path, ...] = ()
    force_cache: bool = False
    device: int = 0
    compute_capabilities: tuple[str, ...] = ()
    warmup: int = 3

    def to_build_options(
        self, *, precision: str, strict: bool = False, exclude: Sequence[str] = ()
    ) -> EngineBuildOptions:
        """:class:`EngineBuildOptions` for one precision. INT8-only options are dropped for FP16 /
        FP32 (``quant eval`` builds all three precisions from one command line)."""
        int8 = precision == "int8"
        return EngineBuildOptions(
            precision=cast(Precision, precision),  # EngineBuildOptions validates it
            allow_fp16=self.allow_fp16,
            dynamic_range=self.dynamic_range and int8,
            calibrator=cast(CalibratorKind | None, self.calibrator) if int8 else None,
            workspace_mb=self.workspace_mb,
            timing_cache=self.timing_cache,
            optimization_level=self.optimization_level,
            shapes=self.shapes,
            plugins=self.plugins,
            force_cache=self.force_cache and int8,
            strict=strict,
            exclude=tuple(exclude),
            device=self.device,
            compute_capabilities=self.compute_capabilities,
        )


_BUILD_KEYS = (
    "allow_fp16",
    "dynamic_range",
    "calibrator",
    "workspace_mb",
    "timing_cache",
    "optimization_level",
    "shapes",
    "plugins",
    "force_cache",
    "device",
    "compute_capabilities",
)
_RUNTIME_KEYS = ("warmup",)


def _collapse(f: F, keys: Sequence[str]) -> F:
    """Wrap ``f`` so that the option values named ``keys`` arrive merged into ``trt_options``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {k: kwargs.pop(k) for k in keys if k in kwargs}
        previous = kwargs.get("trt_options")
        if isinstance(previous, TrtCliOptions):
            base = {k: getattr(previous, k) for k in TrtCliOptions.__dataclass_fields__}
            base.update(values)
            values = base
        values["shapes"] = tuple(values.get("shapes") or ())
        values["plugins"] = tuple(Path(p) for p in values.get("plugins") or ())
        values["compute_capabilities"] = tuple(values.get("compute_capabilities") or ())
        kwargs["trt_options"] = TrtCliOptions(**values)
        return f(*args, **kwargs)

    return cast(F, wrapper)


def trt_build_options() -> Callable[[F], F]:
    """Options of TensorRT engine builds; the command receives ``trt_options: TrtCliOptions``."""
    options = [
        click.option(
            "--allow-fp16/--no-allow-fp16",
            default=True,
            show_default=True,
            help="TensorRT < 11, INT8: let TensorRT also pick FP16 kernels for layers it does not run in "
            "INT8 (trtexec --best); --no-allow-fp16 keeps them in FP32.",
        ),
        click.option(
            "--dynamic-range",
            is_flag=True,
            help="TensorRT 8.6-10.x, INT8: set each tensor's range from --cache with set_dynamic_range "
            "instead of running TensorRT's calibrator.",
        ),
        click.option(
            "--calibrator",
            type=click.Choice(CALIBRATORS),
            default=None,
            help="TensorRT 8.6-10.x, INT8: IInt8EntropyCalibrator2 (entropy2), IInt8MinMaxCalibrator, or the "
            "legacy IInt8EntropyCalibrator. Default: the algorithm the cache header names, else entropy2.",
        ),
        click.option(
            "--force-cache",
            is_flag=True,
            help="Use a cache whose header names another calibration algorithm, rewriting the header "
            "(TensorRT otherwise ignores or rejects it).",
        ),
        click.option(
            "--shapes",
            type=SHAPES,
            multiple=True,
            help="Optimization profile of a dynamic input, e.g. input:1x3x224x224,8x3x224x224,32x3x224x224 "
            "(min,opt,max; INT8 calibration runs at opt). Repeat per input.",
        ),
        click.option(
            "--workspace-mb",
            type=click.IntRange(min=1),
            default=None,
            help="Limit of TensorRT's workspace memory pool in MiB. Default: TensorRT's (the GPU's memory).",
        ),
        click.option(
            "--timing-cache",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Timing cache file, read before and updated after each build (faster rebuilds on the same GPU).",
        ),
        click.option(
            "--optimization-level",
            type=click.IntRange(0, 5),
            default=None,
            help="TensorRT builder optimization level, 0 (fast build) to 5 (slow build, maybe faster "
            "engine). Default: TensorRT's (3).",
        ),
        click.option(
            "--plugins",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            multiple=True,
            help="Plugin library (.so) for custom layers, loaded before parsing. Repeatable.",
        ),
        click.option("--device", type=click.IntRange(min=0), default=0, show_default=True, help="CUDA device index."),
        click.option(
            "--compute-capability",
            "compute_capabilities",
            type=COMPUTE_CAPABILITIES,
            default=None,
            metavar="LIST",
            help="--backend tensorrt-rtx: the target GPUs, e.g. 8.9,12.0 (any of 7.5, 8.0, 8.6, 8.9, 12.0, 12.1), "
            "or current (the GPU of this machine; needs one). Default: TensorRT-RTX's portable set.",
        ),
    ]

    def decorate(f: F) -> F:
        target = _collapse(f, _BUILD_KEYS)
        for opt in reversed(options):
            target = opt(target)
        return target

    return decorate


def trt_runtime_options() -> Callable[[F], F]:
    """Options of engine runs (``quant eval --backend tensorrt``); merged into ``trt_options``."""
    option = click.option(
        "--warmup",
        type=click.IntRange(min=0),
        default=3,
        show_default=True,
        help="Untimed TensorRT runs before timing each new input shape (latency from CUDA events).",
    )

    def decorate(f: F) -> F:
        return option(_collapse(f, _RUNTIME_KEYS))

    return decorate


__all__ = ["COMPUTE_CAPABILITIES", "SHAPES", "ComputeCapabilitiesType", "ShapesType", "TrtCliOptions", "trt_build_options", "trt_runtime_options"]
