"""quant.cli.trt_options: click options, the --shapes type, and the collapse into TrtCliOptions."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from quant.backends.tensorrt.options import ShapeProfile
from quant.cli.trt_options import SHAPES, TrtCliOptions, trt_build_options, trt_runtime_options
from quant.errors import UsageError

SEEN: list[TrtCliOptions] = []


@click.command()
@click.argument("model")
@click.option("--precision", default="int8")
@trt_build_options()
@trt_runtime_options()
def cmd(model: str, precision: str, trt_options: TrtCliOptions) -> None:
    SEEN.append(trt_options)
    click.echo(f"{model} {precision} ok")


@click.command()
@trt_runtime_options()
@trt_build_options()
def cmd_reversed(trt_options: TrtCliOptions) -> None:
    SEEN.append(trt_options)


def _run(*args: str, command: click.Command = cmd) -> click.testing.Result:
    SEEN.clear()
    return CliRunner().invoke(command, list(args))


def test_defaults() -> None:
    r = _run("m.onnx")
    assert r.exit_code == 0, r.output
    assert [TrtCliOptions()] == SEEN
    assert "m.onnx int8 ok" in r.output


def test_all_options(tmp_path: Path) -> None:
    lib = tmp_path / "libplugin.so"
    lib.write_bytes(b"")
    r = _run(
        "m.onnx",
        "--no-allow-fp16",
        "--calibrator", "minmax",
        "--force-cache",
        "--shapes", "input:1x3x224x224,8x3x224x224,32x3x224x224",
        "--shapes", "mask:8x10",
        "--workspace-mb", "2048",
        "--timing-cache", str(tmp_path / "timing.cache"),
        "--optimization-level", "5",
        "--plugins", str(lib),
        "--device", "1",
        "--warmup", "0",
    )
    assert r.exit_code == 0, r.output
    (o,) = SEEN
    assert not o.allow_fp16 and o.calibrator == "minmax" and o.force_cache
    assert o.shapes == (
        ShapeProfile("input", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)),
        ShapeProfile("mask", (8, 10), (8, 10), (8, 10)),
    )
    assert o.workspace_mb == 2048 and o.optimization_level == 5 and o.device == 1 and o.warmup == 0
    assert o.timing_cache == tmp_path / "timing.cache" and o.plugins == (lib,)


def test_decorator_order_does_not_matter() -> None:
    r = _run("--warmup", "7", "--dynamic-range", command=cmd_reversed)
    assert r.exit_code == 0, r.output
    assert SEEN[0].warmup == 7 and SEEN[0].dynamic_range


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shapes", "input:1x3,2x3"], "give one shape or three"),
        (["--shapes", "1x3x224x224"], "expected NAME:MIN,OPT,MAX"),
        (["--optimization-level", "9"], "--optimization-level"),
        (["--workspace-mb", "0"], "--workspace-mb"),
        (["--calibrator", "legacy"], "--calibrator"),
        (["--plugins", "/no/such/lib.so"], "--plugins"),
    ],
)
def test_bad_values_exit_2(args: list[str], message: str) -> None:
    r = _run("m.onnx", *args)
    assert r.exit_code == 2
    assert message in r.output


def test_help_lists_the_options() -> None:
    r = CliRunner().invoke(cmd, ["--help"])
    assert r.exit_code == 0
    for opt in (
        "--allow-fp16", "--dynamic-range", "--calibrator", "--force-cache", "--shapes", "--workspace-mb",
        "--timing-cache", "--optimization-level", "--plugins", "--device", "--warmup",
    ):
        assert opt in r.output


def test_shapes_type_passes_profiles_through() -> None:
    p = ShapeProfile("x", (1,), (2,), (4,))
    assert SHAPES.convert(p, None, None) is p


def test_to_build_options() -> None:
    cli = TrtCliOptions(
        dynamic_range=True, force_cache=True, workspace_mb=512, shapes=(ShapeProfile("x", (1, 2), (2, 2), (4, 2)),)
    )
    int8 = cli.to_build_options(precision="int8", strict=True, exclude=["Softmax"])
    assert int8.dynamic_range and int8.force_cache and int8.strict and int8.exclude == ("Softmax",)
    assert int8.workspace_mb == 512 and int8.shapes == cli.shapes
    # eval builds every precision from one command line: INT8-only options are dropped.
    fp16 = TrtCliOptions(calibrator="minmax", dynamic_range=True, force_cache=True).to_build_options(precision="fp16")
    assert fp16.precision == "fp16" and not fp16.dynamic_range and fp16.calibrator is None and not fp16.force_cache
    with pytest.raises(UsageError, match="--precision must be one of"):
        cli.to_build_options(precision="int4")
    with pytest.raises(UsageError, match="drop --calibrator or --dynamic-range"):
        TrtCliOptions(calibrator="minmax", dynamic_range=True).to_build_options(precision="int8")
