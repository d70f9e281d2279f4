"""model.engine.json: round trip, reading errors, and the portability check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quant.backends.tensorrt.sidecar import (
    ENGINE_SIDECAR_SCHEMA,
    EngineSidecar,
    GpuInfo,
    check_engine_compatible,
    engine_sidecar_path,
    read_engine_sidecar,
    sha256_file,
    write_engine_sidecar,
)
from quant.errors import ModelError

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 81559)
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", 81251)


def _sidecar(**kw: object) -> EngineSidecar:
    base: dict[str, object] = {
        "trt_version": "10.3.0.26",
        "gpu": H100,
        "precision": "int8",
        "mode": "int8-calibrator",
        "model": "model.onnx",
        "model_sha256": "ab" * 32,
        "cache": "model.cache",
        "cache_sha256": "cd" * 32,
        "engine_sha256": "ef" * 32,
        "build_options": {"precision": "int8", "workspace_mb": 1024},
        "messages": ("TensorRT used the cache",),
        "quant_version": "0.1.0",
    }
    base.update(kw)
    return EngineSidecar(**base)  # type: ignore[arg-type]


def test_path() -> None:
    assert engine_sidecar_path("out/model.engine") == Path("out/model.engine.json")


def test_roundtrip(tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    side = _sidecar()
    path = write_engine_sidecar(engine, side)
    assert path == tmp_path / "model.engine.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == ENGINE_SIDECAR_SCHEMA and doc["schema_version"] == 2
    assert doc["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_mb": 81559}
    assert read_engine_sidecar(engine) == side


def test_missing_sidecar_is_none(tmp_path: Path) -> None:
    assert read_engine_sidecar(tmp_path / "model.engine") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"schema": "something else"}', "is not a quant engine sidecar"),
        (json.dumps({"schema": ENGINE_SIDECAR_SCHEMA}), "no valid schema_version"),
        (json.dumps({"schema": ENGINE_SIDECAR_SCHEMA, "schema_version": 99}), "newer than this quant understands"),
        (json.dumps({"schema": ENGINE_SIDECAR_SCHEMA, "schema_version": 1, "trt_version": "10.3"}), "is malformed"),
    ],
)
def test_read_errors(tmp_path: Path, content: str, message: str) -> None:
    engine = tmp_path / "model.engine"
    engine_sidecar_path(engine).write_text(content)
    with pytest.raises(ModelError, match=message):
        read_engine_sidecar(engine)


def test_compatible_same_version_and_gpu() -> None:
    check_engine_compatible(_sidecar(), engine="m.engine", trt_version="10.3.0.26", gpu=H100)
    # A version without a build number matches any build of the same patch release.
    check_engine_compatible(_sidecar(trt_version="10.3.0"), engine="m.engine", trt_version="10.3.0.26", gpu=H100)


def test_other_trt_version_fails_clearly() -> None:
    with pytest.raises(ModelError) as err:
        check_engine_compatible(_sidecar(), engine="m.engine", trt_version="10.8.0.43", gpu=H100)
    msg = str(err.value)
    assert "engine 'm.engine' was built for TensorRT 10.3.0.26 (this machine has 10.8.0.43)" in msg
    assert "not portable" in msg and "calibration caches are" in msg
    assert "quant build model.onnx --cache model.cache --backend tensorrt --precision int8" in msg


def test_other_build_number_fails() -> None:
    with pytest.raises(ModelError, match="TensorRT 10.3.0.26"):
        check_engine_compatible(_sidecar(), engine="m.engine", trt_version="10.3.0.30", gpu=H100)


def test_other_gpu_fails_clearly() -> None:
    with pytest.raises(ModelError) as err:
        check_engine_compatible(_sidecar(cache=None), engine="m.engine", trt_version="10.3.0.26", gpu=A100)
    msg = str(err.value)
    assert "GPU NVIDIA H100 80GB HBM3 (sm_90) (this machine has NVIDIA A100-SXM4-80GB (sm_80))" in msg
    assert "--cache" not in msg


def test_both_differ() -> None:
    with pytest.raises(ModelError, match=r"TensorRT .* and GPU "):
        check_engine_compatible(_sidecar(), engine="m.engine", trt_version="8.6.1", gpu=A100)


def test_sha256_file(tmp_path: Path) -> None:
    f = tmp_path / "x"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
