"""The `quant` command: a thin click layer over quant.api.

Error policy: a QuantError prints one line on stderr and exits with its exit code (1 for a
failure, 2 for bad usage); click's usage errors exit 2 with one line; an unexpected exception
prints one line naming it; tracebacks only with --verbose. Ctrl-C exits 130, SIGTERM 143, both
after the temporary file of any write in progress is removed (previous outputs stay intact).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import NoReturn

import click

from quant import __version__
from quant.cli.build import build_command
from quant.cli.calibrate import calibrate_command
from quant.cli.compare import compare_command
from quant.cli.eval import eval_command
from quant.cli.inspect import inspect_command
from quant.cli.report import report_command
from quant.cli.run import run_command
from quant.errors import QuantError

EPILOG = """\b
Typical use:
  quant run                                      # the embedded MNIST demo, end to end
  quant calibrate model.onnx --data calib/ --cache model.cache
  quant build model.onnx --cache model.cache -o model.int8.onnx
  quant eval model.onnx --data val/ --cache model.cache --report report.json
  quant compare baseline.json report.json --max-drop 0.5
"""


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        order = ["run", "calibrate", "build", "eval", "report", "compare", "inspect", "qat", "sensitivity", "merge-stats"]
        names = list(self.commands)
        return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="quant")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """quant: INT8 calibration for TensorRT, verified on CPU with ONNX Runtime.

    Calibrates an ONNX model on your images or tensors, writes a TensorRT calibration cache
    (for TensorRT 8.6-10.x) and a Q/DQ INT8 ONNX model (for TensorRT 10.x/11.x explicit
    quantization), and measures INT8 against FP32 and FP16 on the same samples.
    """
    ctx.ensure_object(dict)
    _configure_logging(verbose=verbose, quiet=quiet)


def _configure_logging(*, verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    root = logging.getLogger("quant")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"quant: warning: {msg}"
        return f"quant: {msg}"


for _cmd in (run_command, calibrate_command, build_command, eval_command, report_command, compare_command, inspect_command):
    cli.add_command(_cmd)


def _register_optional_commands() -> None:
    """Commands owned by optional subsystems register here (their heavy imports stay lazy)."""
    import importlib

    for module, attr in (
        ("quant.cli.qat", "qat_command"),
        ("quant.cli.sensitivity", "sensitivity_command"),
        ("quant.cli.merge_stats", "merge_stats_command"),
        ("quant.cli.merge_reports", "merge_reports_command"),
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        cli.add_command(getattr(mod, attr))


_register_optional_commands()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``), raised like Ctrl-C so that temporary files are cleaned up."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def _process_state() -> Iterator[None]:
    """What the command-line process sets up around a command, undone afterwards.

    SIGTERM raises :class:`Terminated` (exit 143 after cleanup, like Ctrl-C's 130). Two library
    warnings that would add raw lines to stderr are silenced: Pillow's DecompressionBombWarning
    (quant refuses such images itself, with a one-line error naming the file) and NumPy's note on
    .npy headers written by Python 2 (harmless: the file is read correctly).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=r"Reading `\.npy` or `\.npz` file required additional header")
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread: leave signals alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: BaseException) -> NoReturn:
    if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
        click.echo("quant: terminated; no half-written file was left behind", err=True)
        sys.exit(143)
    click.echo("quant: interrupted; no half-written file was left behind", err=True)
    sys.exit(130)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI and map errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "-v" in args or "--verbose" in args
    try:
        with _process_state():
            code = cli.main(args=args, prog_name="quant", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        where = f"quant {exc.ctx.info_name}" if exc.ctx is not None and exc.ctx.info_name != "quant" else "quant"
        click.echo(f"{where}: error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"quant: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except QuantError as exc:
        if verbose:
            traceback.print_exc()
        click.echo(f"quant: error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - last-resort boundary of the CLI
        if verbose:
            traceback.print_exc()
        click.echo(
            f"quant: internal error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(rerun with --verbose for the traceback, and please report it)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
