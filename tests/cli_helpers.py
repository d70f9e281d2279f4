"""Running quant's CLI in-process from tests: exit code, stdout and stderr of one command."""

from __future__ import annotations

import pytest

from quant.cli.main import main


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``quant ARGS`` through :func:`quant.cli.main.main`: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 0), out, err
