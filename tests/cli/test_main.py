"""CLI plumbing: help texts, error policy (one line, exit codes), import hygiene."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from quant.cli.main import cli
from tests.cli_helpers import run_main

COMMANDS = ["run", "calibrate", "build", "eval", "report", "compare", "inspect"]




@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    assert f"quant {command}" in result.output


def test_missing_model_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(
        ["build", str(tmp_path / "nope.onnx"), "--precision", "fp16", "-o", str(tmp_path / "o.onnx")], capsys
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "nope.onnx" in lines[0] and "no such file" in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_bad_option_value_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["calibrate", "m.onnx", "--data", "x", "--method", "magic"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "--method" in lines[0] and "magic" in lines[0]


def test_unknown_option_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["eval", "--no-such-option"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--no-such-option" in err


def test_unknown_precision_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_main(["eval", "m.onnx", "--data", "d", "--precisions", "fp32,int4"], capsys)
    assert code == 2
    assert "int4" in err and len(err.strip().splitlines()) == 1


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_main(["--version"], capsys)
    assert code == 0
    assert "quant" in out


def test_import_and_help_stay_light() -> None:
    """`import quant` and `quant --help` load none of the heavy or optional libraries."""
    probe = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "import quant\n"
        "from quant.cli.main import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for c in ['run','calibrate','build','eval','report','compare','inspect']:\n"
        "    assert CliRunner().invoke(cli, [c, '--help']).exit_code == 0\n"
        "heavy = [m for m in ('torch', 'tensorrt', 'onnxruntime', 'matplotlib', 'cuda') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
