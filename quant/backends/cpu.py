"""What this CPU offers INT8 arithmetic, and which ONNX Runtime CPU deployment form suits it.

ONNX Runtime's fused integer kernels (MLAS) pick their inner loop by the CPU's instructions:

- x86 with AVX-512 VNNI or AVX-VNNI (``vpdpbusd``) or AMX: u8 x s8 products accumulate exactly
  in int32, as TensorRT's do.
- x86 with AVX2 but no VNNI: u8 x s8 pairs go through ``vpmaddubsw``, a 16-bit *saturating*
  multiply-add: two products of large activations and large weights overflow int16 and are
  clipped. u8 x u8 goes through a widening path (``vpmaddwd`` on 16-bit values) that is exact.
- ARM64 (NEON, dotprod, i8mm): widening multiply-accumulates, exact in int32.

So the CPU deployment form (``--target onnxruntime``) is built for a *CPU class*: ``vnni``
and ``arm`` get signed INT8 weights (the fastest path there), ``avx2`` gets unsigned weights with
zero point 128, which is exactly TensorRT's symmetric grid shifted by 128 and is computed without
saturation. Everything that predicts TensorRT runs Q/DQ as float maths instead
(:data:`quant.backends.onnxruntime.EXACT_INT8_SESSION_CONFIG`) and does not depend on the CPU.

The parsing is pure (:func:`parse_cpuinfo`); :func:`host_cpu` reads ``/proc/cpuinfo`` once.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from quant.errors import UsageError

#: The int8-relevant feature flags quant reports (x86 names from /proc/cpuinfo's ``flags``; ARM
#: names from its ``Features``: asimddp is the dot-product extension, i8mm the int8 matrix one).
INT8_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")

#: CPU classes of the ONNX Runtime deployment form. ``auto`` means the building machine's.
CPU_CLASSES = ("vnni", "avx2", "arm")
CPU_CHOICES = ("auto", *CPU_CLASSES)

_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuInfo:
    """The machine's architecture, CPU model name and int8-relevant features."""

    arch: str
    model: str
    features: tuple[str, ...] = field(default_factory=tuple)

    @property
    def int8_class(self) -> str:
        """``vnni``, ``avx2``, ``arm`` or ``other`` (see the module docstring)."""
        return cpu_class(self.arch, self.features)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "model": self.model, "int8_features": list(self.features),
                "int8_class": self.int8_class}


def cpu_class(arch: str, features: tuple[str, ...] | frozenset[str] | set[str]) -> str:
    """The CPU class for ONNX Runtime's integer kernels, from the architecture and feature flags."""
    a = arch.lower()
    if a in ("aarch64", "arm64") or a.startswith("armv8"):
        return "arm"
    if a in ("x86_64", "amd64", "i686", "x86"):
        if _VNNI_FLAGS & set(features):
            return "vnni"
        # No VNNI: AVX2 (or older SSE4.1 paths, which saturate the same way) is the class whose
        # u8 x s8 kernels saturate.
        return "avx2"
    return "other"


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """A :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (its first processor's entry)."""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        k = key.strip().lower()
        if k in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif k in ("flags", "features") and not flags:
            flags = set(value.split())
    features = tuple(f for f in INT8_FEATURES if f in flags)
    return CpuInfo(arch=arch, model=model or platform.processor() or arch, features=features)


@functools.lru_cache(maxsize=1)
def host_cpu() -> CpuInfo:
    """This machine's :class:`CpuInfo` (``/proc/cpuinfo`` on Linux; the architecture elsewhere).

    ``QUANT_CPUINFO`` names another file to read instead: for a CPU emulator such as
    ``qemu-x86_64 -cpu EPYC-Rome``, whose CPUID is the emulated CPU's while /proc/cpuinfo stays
    the host's (the tests use it to run the AVX2-only kernels on any x86 machine)."""
    arch = platform.machine() or "unknown"
    path = os.environ.get("QUANT_CPUINFO") or "/proc/cpuinfo"
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:  # not Linux: no feature flags to read
        return CpuInfo(arch=arch, model=platform.processor() or arch)
    return parse_cpuinfo(text, arch)


def resolve_cpu(cpu: str) -> str:
    """The CPU class to build the ONNX Runtime form for: ``auto`` is this machine's class
    (``other`` architectures get ``vnni``'s signed form, which ORT runs everywhere)."""
    if cpu not in CPU_CHOICES:
        raise UsageError(f"--cpu must be one of {', '.join(CPU_CHOICES)} (got {cpu!r})")
    if cpu != "auto":
        return cpu
    cls = host_cpu().int8_class
    return cls if cls in CPU_CLASSES else "vnni"


def weight_type_for(cpu_cls: str) -> str:
    """``int8`` or ``uint8``: the weight type of the ONNX Runtime form for CPU class ``cpu_cls``."""
    if cpu_cls not in CPU_CLASSES:
        raise UsageError(f"unknown CPU class {cpu_cls!r}; choose one of {', '.join(CPU_CLASSES)}")
    return "uint8" if cpu_cls == "avx2" else "int8"


def fused_kernel_path(cpu: CpuInfo, weight_type: str) -> str:
    """How ONNX Runtime's fused integer kernels multiply on ``cpu`` with weights of ``weight_type``:
    a short phrase for reports (``exact int32`` or ``16-bit saturating``)."""
    cls = cpu.int8_class
    if cls == "avx2" and weight_type == "int8":
        return "u8 x s8, 16-bit saturating (no VNNI)"
    if cls == "vnni":
        return f"{'u8 x s8' if weight_type == 'int8' else 'u8 x u8'}, exact int32 (VNNI)"
    if cls == "avx2":
        return "u8 x u8, exact int32 (widening, no VNNI)"
    if cls == "arm":
        return "exact int32 (ARM)"
    return "unknown kernels"
