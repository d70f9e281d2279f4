"""``model.engine.json``: what an engine was built with and for (pure checks + small I/O).

A TensorRT engine runs only with the TensorRT version that built it and on the GPU model it was
built for (calibration caches are portable; engines are not). A TensorRT-RTX engine runs with the
TensorRT-RTX version that built it, on GPUs of its target compute capabilities. The sidecar
records the TensorRT flavour (``tensorrt`` / ``tensorrt-rtx``) and version, the GPU name and
compute capability (TensorRT) or the target compute capabilities (TensorRT-RTX), the precision,
the build options, the engine's size and build time, and fingerprints of the model and cache, so that loading an engine elsewhere fails with a message that says why
and what to do, instead of TensorRT's deserialization error.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant._io import atomic_write, check_schema_header
from quant.errors import ModelError

ENGINE_SIDECAR_SCHEMA = "quant.engine-sidecar"
ENGINE_SIDECAR_VERSION = 2
# Version 2 added trt_flavor, compute_capabilities, engine_bytes and build_seconds; a version-1
# sidecar reads as a TensorRT (not TensorRT-RTX) engine.


@dataclass(frozen=True)
class GpuInfo:
    """A GPU model: name (``NVIDIA H100 80GB HBM3``), compute capability (``9.0``), memory."""

    name: str
    compute_capability: str
    memory_mb: int = 0

    def describe(self) -> str:
        return f"{self.name} (sm_{self.compute_capability.replace('.', '')})"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": self.compute_capability, "memory_mb": self.memory_mb}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GpuInfo:
        return cls(
            name=str(d["name"]),
            compute_capability=str(d["compute_capability"]),
            memory_mb=int(d.get("memory_mb", 0) or 0),
        )


@dataclass(frozen=True)
class EngineSidecar:
    """What ``model.engine.json`` holds."""

    trt_version: str
    gpu: GpuInfo
    precision: str
    mode: str
    model: str
    model_sha256: str | None = None
    cache: str | None = None
    cache_sha256: str | None = None
    engine_sha256: str | None = None
    build_options: dict[str, Any] = field(default_factory=dict)
    messages: tuple[str, ...] = ()
    quant_version: str = ""
    trt_flavor: str = "tensorrt"
    compute_capabilities: tuple[str, ...] = ()
    engine_bytes: int | None = None
    build_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": ENGINE_SIDECAR_SCHEMA,
            "schema_version": ENGINE_SIDECAR_VERSION,
            "trt_flavor": self.trt_flavor,
            "trt_version": self.trt_version,
            "compute_capabilities": list(self.compute_capabilities),
            "engine_bytes": self.engine_bytes,
            "build_seconds": self.build_seconds,
            "gpu": self.gpu.to_dict(),
            "precision": self.precision,
            "mode": self.mode,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "cache": self.cache,
            "cache_sha256": self.cache_sha256,
            "engine_sha256": self.engine_sha256,
            "build_options": dict(self.build_options),
            "messages": list(self.messages),
            "quant_version": self.quant_version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "engine sidecar") -> EngineSidecar:
        check_schema_header(
            dict(d) if isinstance(d, Mapping) else d, schema=ENGINE_SIDECAR_SCHEMA,
            max_version=ENGINE_SIDECAR_VERSION, label=f"'{source}'", kind="quant engine sidecar",
            fix="rebuild the engine", error=ModelError,
        )
        try:
            return cls(
                trt_version=str(d["trt_version"]),
                gpu=GpuInfo.from_dict(d["gpu"]),
                precision=str(d["precision"]),
                mode=str(d["mode"]),
                model=str(d["model"]),
                model_sha256=d.get("model_sha256"),
                cache=d.get("cache"),
                cache_sha256=d.get("cache_sha256"),
                engine_sha256=d.get("engine_sha256"),
                build_options=dict(d.get("build_options") or {}),
                messages=tuple(str(m) for m in d.get("messages") or ()),
                quant_version=str(d.get("quant_version", "")),
                trt_flavor=str(d.get("trt_flavor", "tensorrt")),
                compute_capabilities=tuple(str(c) for c in d.get("compute_capabilities") or ()),
                engine_bytes=None if d.get("engine_bytes") is None else int(d["engine_bytes"]),
                build_seconds=None if d.get("build_seconds") is None else float(d["build_seconds"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"'{source}' is malformed ({exc!r}); rebuild the engine") from exc


def engine_sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(os.fspath(engine_path) + ".json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_engine_sidecar(engine_path: str | os.PathLike[str], sidecar: EngineSidecar) -> Path:
    path = engine_sidecar_path(engine_path)
    atomic_write(path, json.dumps(sidecar.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return path


def read_engine_sidecar(engine_path: str | os.PathLike[str]) -> EngineSidecar | None:
    """The engine's sidecar, or None when there is none. ModelError when it is unreadable."""
    path = engine_sidecar_path(engine_path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"engine sidecar '{path}' cannot be read ({exc}); delete it or rebuild the engine") from exc
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"engine sidecar '{path}' is not valid JSON (line {exc.lineno}: {exc.msg}); delete it or "
            f"rebuild the engine"
        ) from exc
    return EngineSidecar.from_dict(doc, source=str(path))


def _same_trt(a: str, b: str) -> bool:
    """Engines are tied to major.minor.patch; the build number is compared when both have one."""
    from quant.backends.tensorrt.versions import TrtVersion
    from quant.errors import UsageError

    try:
        va, vb = TrtVersion.parse(a), TrtVersion.parse(b)
    except UsageError:
        return a == b
    if (va.major, va.minor, va.patch) != (vb.major, vb.minor, vb.patch):
        return False
    return not (va.build and vb.build and va.build != vb.build)


def rtx_runs_on(sidecar: EngineSidecar, compute_capability: str) -> bool:
    """Whether a TensorRT-RTX engine of ``sidecar`` loads on a GPU of ``compute_capability``: one
    of its targets, or (default targets) one of the capabilities TensorRT-RTX engines run on."""
    from quant.backends.tensorrt.flavors import RTX_RUNTIME_COMPUTE_CAPABILITIES

    targets = [c for c in sidecar.compute_capabilities if c != "current"]
    if targets:
        return compute_capability in targets
    if "current" in sidecar.compute_capabilities:
        return True  # built for the building machine's GPU: TensorRT-RTX checks it when loading
    return compute_capability in RTX_RUNTIME_COMPUTE_CAPABILITIES


def check_engine_compatible(
    sidecar: EngineSidecar,
    *,
    engine: str | os.PathLike[str],
    trt_version: str,
    gpu: GpuInfo,
    trt_flavor: str = "tensorrt",
) -> None:
    """ModelError when the engine was built by another TensorRT flavour or version, or for another
    GPU (TensorRT) / for compute capabilities that exclude this GPU (TensorRT-RTX)."""
    label = {"tensorrt": "TensorRT", "tensorrt-rtx": "TensorRT-RTX"}
    problems: list[str] = []
    if sidecar.trt_flavor != trt_flavor:
        problems.append(f"{label.get(sidecar.trt_flavor, sidecar.trt_flavor)} (this is {label.get(trt_flavor, trt_flavor)})")
    elif not _same_trt(sidecar.trt_version, trt_version):
        problems.append(f"{label.get(trt_flavor, trt_flavor)} {sidecar.trt_version} (this machine has {trt_version})")
    if sidecar.trt_flavor == "tensorrt-rtx":
        if not rtx_runs_on(sidecar, gpu.compute_capability):
            targets = ", ".join(sidecar.compute_capabilities) or "TensorRT-RTX's default set"
            problems.append(f"compute capabilities {targets} (this machine has {gpu.describe()})")
    elif sidecar.gpu.compute_capability != gpu.compute_capability or sidecar.gpu.name != gpu.name:
        problems.append(f"GPU {sidecar.gpu.describe()} (this machine has {gpu.describe()})")
    if problems:
        cache = f" --cache {sidecar.cache}" if sidecar.cache else ""
        if sidecar.trt_flavor == "tensorrt-rtx":
            fix = (
                f"rebuild it with 'quant build {sidecar.model}{cache} --backend tensorrt-rtx "
                f"--compute-capability {gpu.compute_capability}' (any machine can build it)"
            )
        else:
            fix = (
                f"rebuild it here with 'quant build {sidecar.model}{cache} --backend tensorrt "
                f"--precision {sidecar.precision}'"
            )
        raise ModelError(
            f"engine '{engine}' was built for {' and '.join(problems)}; engines are not portable across "
            f"TensorRT versions or GPUs (calibration caches are): {fix}"
        )


__all__ = [
    "ENGINE_SIDECAR_SCHEMA",
    "ENGINE_SIDECAR_VERSION",
    "EngineSidecar",
    "GpuInfo",
    "check_engine_compatible",
    "rtx_runs_on",
    "engine_sidecar_path",
    "read_engine_sidecar",
    "sha256_file",
    "write_engine_sidecar",
]
