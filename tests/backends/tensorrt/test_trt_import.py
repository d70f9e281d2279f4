"""Lazy imports, versions, and the one-line error every entry point gives without TensorRT."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

import quant.backends.tensorrt as trt_pkg
from quant.backends.tensorrt import TRT_MISSING, import_tensorrt, tensorrt_available
from quant.backends.tensorrt.versions import MIN_SUPPORTED, TrtVersion
from quant.errors import BackendUnavailableError, UsageError

# --------------------------------------------------------------------------------------------
# Versions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.3.0.26", TrtVersion(10, 3, 0, 26)),
        ("8.6.1", TrtVersion(8, 6, 1)),
        ("10.13", TrtVersion(10, 13)),
        ("11.4.0.106", TrtVersion(11, 4, 0, 106)),
        ("10.8.0.post1", TrtVersion(10, 8, 0)),
    ],
)
def test_version_parse(text: str, expected: TrtVersion) -> None:
    assert TrtVersion.parse(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10", "v10.3"])
def test_version_parse_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="not a TensorRT version"):
        TrtVersion.parse(text)


def test_version_text_and_order() -> None:
    assert str(TrtVersion(10, 3, 0, 26)) == "10.3.0.26"
    assert str(TrtVersion(8, 6, 1)) == "8.6.1"
    assert TrtVersion(10, 3, 0, 26).short == "10.3.0"
    assert TrtVersion(8, 6, 1) < TrtVersion(10, 0) < TrtVersion(10, 13) < TrtVersion(11, 0)
    assert TrtVersion(8, 6) == MIN_SUPPORTED


@pytest.mark.parametrize(
    ("version", "number"),
    [
        (TrtVersion(8, 6, 1, 6), 8601),
        (TrtVersion(8, 6, 0), 8600),
        (TrtVersion(7, 2, 3), 7203),
        (TrtVersion(10, 3, 0, 26), 100300),
        (TrtVersion(10, 12, 0), 101200),
        (TrtVersion(10, 13, 1), 101301),
    ],
)
def test_cache_header_number(version: TrtVersion, number: int) -> None:
    """7/8: major*1000+minor*100+patch; 10: major*10000+minor*100+patch (build ignored)."""
    assert version.cache_header_number == number


def test_capabilities_per_version() -> None:
    v86, v10, v11 = TrtVersion(8, 6, 1), TrtVersion(10, 3), TrtVersion(11, 0)
    assert v86.supported and v10.supported and v11.supported
    assert not TrtVersion(8, 5, 3).supported
    assert v86.has_implicit_int8 and v10.has_implicit_int8 and not v11.has_implicit_int8
    assert v86.has_precision_flags and not v11.has_precision_flags
    assert v11.always_strongly_typed and not v10.always_strongly_typed
    assert v86.needs_explicit_batch_flag and not v10.needs_explicit_batch_flag
    assert v86.has_engine_inspector and not TrtVersion(8, 0).has_engine_inspector


# --------------------------------------------------------------------------------------------
# import_tensorrt
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_cached_trt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trt_pkg, "_trt_module", None)


def test_import_fails_with_the_one_line_message(monkeypatch: pytest.MonkeyPatch, no_cached_trt: None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendUnavailableError) as err:
        import_tensorrt()
    assert str(err.value) == TRT_MISSING
    assert "\n" not in str(err.value)
    assert "pip install 'quant[tensorrt]'" in str(err.value) and "8.6" in str(err.value)


def test_import_rejects_the_stub_only_namespace_package(monkeypatch: pytest.MonkeyPatch, no_cached_trt: None) -> None:
    """tensorrt-stubs installs an importable `tensorrt` without any API: not TensorRT."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        import_tensorrt()
    assert not tensorrt_available()


def test_import_rejects_old_versions(monkeypatch: pytest.MonkeyPatch, no_cached_trt: None) -> None:
    fake = types.ModuleType("tensorrt")
    fake.Builder = object  # type: ignore[attr-defined]
    fake.__version__ = "8.5.3.1"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.5\.3\.1 is too old: quant needs TensorRT 8\.6\.0"):
        import_tensorrt()


def test_import_accepts_a_supported_module(monkeypatch: pytest.MonkeyPatch, no_cached_trt: None) -> None:
    fake = types.ModuleType("tensorrt")
    fake.Builder = object  # type: ignore[attr-defined]
    fake.__version__ = "10.3.0.26"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    assert import_tensorrt() is fake
    assert trt_pkg.installed_version() == TrtVersion(10, 3, 0, 26)


def test_importing_quant_does_not_import_tensorrt_tensorrt_rtx_or_cuda() -> None:
    code = (
        "import sys, quant, quant.backends.tensorrt as t, quant.cli.trt_options, "
        "quant.backends.tensorrt.options, quant.backends.tensorrt.builder, quant.backends.tensorrt.runner, "
        "quant.backends.tensorrt.inspect, quant.backends.tensorrt.calibrator, quant.backends.tensorrt.cuda, "
        "quant.backends.tensorrt.flavors, quant.backends.tensorrt.network, quant.backends.tensorrt.check, "
        "quant.backends.tensorrt.qdq_rules, quant.cli.main\n"
        "bad = [m for m in ('tensorrt', 'tensorrt_bindings', 'tensorrt_rtx', 'tensorrt_rtx_bindings', 'cuda', "
        "'cuda.bindings') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "t.EngineBuildOptions; t.TrtVersion\n"
        "assert 'tensorrt' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, timeout=120)


def test_lazy_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = trt_pkg.no_such_thing


# --------------------------------------------------------------------------------------------
# Every entry point without TensorRT
# --------------------------------------------------------------------------------------------

needs_no_trt = pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")


@needs_no_trt
def test_build_engine_without_tensorrt(tmp_path: Path) -> None:
    from quant.backends.tensorrt import build_engine

    with pytest.raises(BackendUnavailableError) as err:
        build_engine(tmp_path / "m.onnx", output=tmp_path / "m.engine")
    assert str(err.value) == TRT_MISSING
    assert not (tmp_path / "m.engine").exists()


@needs_no_trt
def test_runner_without_tensorrt(tmp_path: Path) -> None:
    from quant.backends.tensorrt import TrtRunner

    with pytest.raises(BackendUnavailableError) as err:
        TrtRunner(tmp_path / "m.engine")
    assert str(err.value) == TRT_MISSING


@needs_no_trt
def test_inspect_without_tensorrt(tmp_path: Path) -> None:
    from quant.backends.tensorrt import inspect_engine

    with pytest.raises(BackendUnavailableError) as err:
        inspect_engine(tmp_path / "m.engine")
    assert str(err.value) == TRT_MISSING


@needs_no_trt
def test_calibrator_without_tensorrt() -> None:
    import numpy as np

    from quant.backends.tensorrt.calibrator import CalibratorCore, create_calibrator

    core = CalibratorCore(kind="entropy2", dataset=None, input_shapes={"x": (1, 2)}, input_dtypes={"x": np.float32})
    with pytest.raises(BackendUnavailableError) as err:
        create_calibrator(core)
    assert str(err.value) == TRT_MISSING
