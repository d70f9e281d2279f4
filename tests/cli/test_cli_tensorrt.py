"""`--backend tensorrt` and engine inspection through the CLI: without TensorRT each fails with
one line naming the extra to install, exit 1, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant.backends.tensorrt import tensorrt_available
from quant.cli.main import main
from quant.demo import demo_model_path

pytestmark = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed: the GPU suite covers these paths")


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    _out, err = capsys.readouterr()
    return int(exc.value.code or 0), err


@pytest.mark.parametrize(
    "args",
    [
        ["build", "{model}", "--backend", "tensorrt", "--precision", "fp16", "-o", "{tmp}/m.engine"],
        ["build", "{model}", "--backend", "tensorrt", "--precision", "int8", "--cache", "{tmp}/none.cache",
         "--shapes", "input:1x1x28x28,8x1x28x28,32x1x28x28", "-o", "{tmp}/m.engine"],
        ["eval", "{model}", "--data", "demo:eval", "--backend", "tensorrt", "--engine-dir", "{tmp}/engines"],
    ],
)
def test_tensorrt_backend_without_tensorrt(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(model=demo_model_path(), tmp=tmp_path) for a in args]
    code, err = _run(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "pip install 'quant[tensorrt]'" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_inspect_engine_without_tensorrt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    code, err = _run(["inspect", str(engine)], capsys)
    assert code == 1
    assert "pip install 'quant[tensorrt]'" in err and len(err.strip().splitlines()) == 1


def test_bad_shapes_spec_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["build", str(demo_model_path()), "--backend", "tensorrt", "--shapes", "input:1x2,oops",
                      "-o", str(tmp_path / "m.engine")], capsys)
    assert code == 2
    assert "--shapes" in err and len(err.strip().splitlines()) == 1


def test_tensorrt_rtx_backend_without_tensorrt_rtx(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # as if the extra were not installed
    code, err = _run(["build", str(demo_model_path()), "--backend", "tensorrt-rtx", "-o", str(tmp_path / "m.engine")], capsys)
    assert code == 1
    assert err.strip() == "quant: error: TensorRT-RTX is not installed: pip install 'quant[tensorrt-rtx]' (no GPU needed to build engines)"
    assert list(tmp_path.iterdir()) == []
