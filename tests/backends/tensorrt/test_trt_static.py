"""mypy over the TensorRT backend against the typed TensorRT 10.x API (tensorrt-stubs).

Without TensorRT on this machine, this is what checks that the backend calls TensorRT's API with
the right names and argument types. Skipped when tensorrt-stubs is not installed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from trt_stubs import fix_def, fix_stub_text, prepare_stubs

ROOT = Path(__file__).resolve().parents[3]
CONFIG = Path(__file__).parent / "mypy_tensorrt.ini"
TARGETS = ["quant/backends/tensorrt", "quant/cli/trt_options.py"]


def test_fix_def_repairs_generated_stub_lines() -> None:
    assert fix_def("    def f(self, in: list[int], out: int) -> int:") == "    def f(self, in_: list[int], out: int) -> int:"
    assert fix_def("    def g(self, a: int = 1, b: int) -> bool:") == (
        "    def g(self, a: int = 1, b: int = ...) -> builtins.bool:"
    )
    assert fix_def("    def h(self, c: capsule) -> ...:") == "    def h(self, c: typing.Any) -> typing.Any:"
    assert fix_def("x = 1") == "x = 1"
    assert fix_stub_text("a\nb").startswith("import builtins\nimport typing\n")


@pytest.fixture(scope="module")
def stub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorrt_stubs", reason="tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    pytest.importorskip("mypy")
    return prepare_stubs(tmp_path_factory.mktemp("trt-stubs"))


def _mypy(stub_dir: Path, cache: Path, *targets: str) -> tuple[str, int]:
    from mypy import api

    old = os.environ.get("MYPYPATH")
    os.environ["MYPYPATH"] = str(stub_dir)
    try:
        out, err, status = api.run(
            ["--config-file", str(CONFIG), "--cache-dir", str(cache), "--no-error-summary", *targets]
        )
    finally:
        if old is None:
            del os.environ["MYPYPATH"]
        else:
            os.environ["MYPYPATH"] = old
    return out + err, status


@pytest.mark.slow
def test_backend_is_clean_against_the_tensorrt_stubs(stub_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    # The stubs really are in use: a wrong call is caught.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import tensorrt as trt\n"
        "def f(config: trt.IBuilderConfig) -> None:\n"
        "    config.set_memory_pool_limit('WORKSPACE', 1 << 30)\n"
    )
    out, status = _mypy(stub_dir, tmp_path / "cache", str(probe))
    assert status == 1 and 'has incompatible type "str"; expected "MemoryPoolType"' in out, out
    out, status = _mypy(stub_dir, tmp_path / "cache", *TARGETS)
    assert status == 0, out
