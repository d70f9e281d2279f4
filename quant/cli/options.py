"""Option groups shared by several commands, and click parameter types."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from quant.config import CALIBRATION_METHODS, DataOptions

F = TypeVar("F", bound=Callable[..., Any])


class CommaList(click.ParamType):
    """``a,b,c`` (the option may also be repeated); yields a tuple of non-empty strings."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        return tuple(v.strip() for v in str(value).split(",") if v.strip())


COMMA_LIST = CommaList()


def flatten(values: tuple[tuple[str, ...], ...] | tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if isinstance(v, tuple):
            out.extend(v)
        else:
            out.append(v)
    return tuple(out)


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def data_options(*, batch_default: int, prefix: str = "", required: bool = False) -> Callable[[F], F]:
    """--data, --max-samples, --seed, --batch-size, --preprocess, --on-bad-image, --workers."""
    return _compose(
        click.option(
            "--data",
            "data",
            required=required,
            metavar="PATH",
            help="Image folder (one subfolder per class gives labels), .npy, .npz (keys = input names, "
            "optional 'labels'), or demo:calib / demo:eval.",
        ),
        click.option("--max-samples", type=click.IntRange(min=0), default=None, help="Use a seeded random subset of this many samples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed for --max-samples sampling."),
        click.option("--batch-size", type=click.IntRange(min=1), default=batch_default, show_default=True),
        click.option(
            "--preprocess",
            metavar="SPEC",
            default=None,
            help="Preset (imagenet, imagenet-caffe, unit, raw, tf) or key=value,... overrides "
            "(resize=256,mean=0.485/0.456/0.406,std=...,color=bgr,layout=nhwc,scale=1). "
            "Default: size, channels and layout from the model input, pixels scaled to [0,1].",
        ),
        click.option(
            "--on-bad-image",
            type=click.Choice(["fail", "skip"]),
            default="fail",
            show_default=True,
            help="A corrupt image stops the run (naming it) or is skipped and counted.",
        ),
        click.option("--workers", type=click.IntRange(min=1), default=None, help="Image decoding threads (default: CPU count)."),
    )


def make_data_options(
    data: str,
    *,
    max_samples: int | None,
    seed: int,
    batch_size: int,
    preprocess: str | None,
    on_bad_image: str,
    workers: int | None,
) -> DataOptions:
    if max_samples == 0:
        raise click.BadParameter("must be at least 1", param_hint="--max-samples")
    return DataOptions(
        path=data,
        preprocess=preprocess,
        max_samples=max_samples,
        seed=seed,
        batch_size=batch_size,
        on_bad_image=on_bad_image,  # type: ignore[arg-type]
        workers=workers,
    )


def method_options(default: str = "entropy") -> Callable[[F], F]:
    """--method (``default``: entropy for calibrate, auto for run), --percentile, --auto-budget,
    --trt-version, --scope."""
    return _compose(
        click.option("--method", type=click.Choice(CALIBRATION_METHODS), default=default, show_default=True,
                     help="entropy = TensorRT EntropyCalibration2 (KL divergence); minmax; percentile; mse; "
                     "auto = per tensor the method whose ranges give the outputs the best measured SQNR "
                     "(scored on calibration samples held aside; docs/CALIBRATION.md)."),
        click.option("--auto-budget", type=click.FloatRange(min=0, min_open=True), default=2.5, show_default=True,
                     help="For --method auto: the search's cost bound, in forward passes over the calibration set."),
        click.option("--percentile", type=click.FloatRange(min=0, max=100, min_open=True), default=99.99,
                     show_default=True, help="For --method percentile."),
        click.option("--trt-version", default=None, metavar="X.Y",
                     help="TensorRT version the cache header is written for (e.g. 8.6, 10.3). Default: 10.13."),
        click.option("--scope", type=click.Choice(["all", "qdq"]), default="all", show_default=True,
                     help="Calibrate every activation (a complete TensorRT cache) or only the Q/DQ inputs (faster)."),
    )


def cpu_option() -> Callable[[F], F]:
    """``--cpu``: the CPU class the ONNX Runtime deployment form (``--target onnxruntime``,
    precision ``int8-ort``) is built for."""
    from quant.backends.cpu import CPU_CHOICES

    return click.option(
        "--cpu", type=click.Choice(CPU_CHOICES), default="auto", show_default=True,
        help="CPU class of the ONNX Runtime INT8 form: vnni (x86 with AVX-512 VNNI / AVX-VNNI / AMX) and arm "
        "get signed INT8 weights; avx2 (x86 without VNNI) gets unsigned weights with zero point 128, the same "
        "grid, which its integer kernels compute without 16-bit saturation. auto: this machine's class.",
    )


def progress_option() -> Callable[[F], F]:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bars on stderr (default: when stderr is a terminal).",
    )


def want_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def verbose_option() -> Callable[[F], F]:
    """Accept -v/--verbose after the subcommand too (main() reads it for tracebacks)."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        if value:
            import logging

            logging.getLogger("quant").setLevel(logging.DEBUG)
        return value

    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=callback,
                        help="Debug logging and tracebacks.")


def echo(text: str = "") -> None:
    click.echo(text)
