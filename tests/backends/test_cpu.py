"""CPU classes for INT8: parsing /proc/cpuinfo, the class, the ONNX Runtime form's weight type."""

from __future__ import annotations

from pathlib import Path

import pytest

from quant.backends import cpu
from quant.errors import UsageError

EPYC_ROME = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse4_1 sse4_2 avx avx2 fma bmi2\n\n"
XEON_SPR = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: avx2 avx512f avx512_vnni avx_vnni amx_int8 amx_tile\n\nprocessor\t: 1\nflags\t\t: avx2\n"
)
GRAVITON = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd crc32 atomics asimddp i8mm bf16\nCPU part\t: 0xd4f\n"


def test_parse_x86_without_vnni() -> None:
    info = cpu.parse_cpuinfo(EPYC_ROME, "x86_64")
    assert info.model == "AMD EPYC 7B12"
    assert info.features == ("avx2",)
    assert info.int8_class == "avx2"
    assert cpu.weight_type_for(info.int8_class) == "uint8"
    assert "16-bit saturating" in cpu.fused_kernel_path(info, "int8")
    assert "exact int32" in cpu.fused_kernel_path(info, "uint8")


def test_parse_x86_with_vnni_and_amx_reads_the_first_processor_only() -> None:
    info = cpu.parse_cpuinfo(XEON_SPR, "x86_64")
    assert info.features == ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    assert info.int8_class == "vnni"
    assert cpu.weight_type_for("vnni") == "int8"
    assert info.to_dict()["int8_class"] == "vnni"


def test_parse_arm_features() -> None:
    info = cpu.parse_cpuinfo(GRAVITON, "aarch64")
    assert info.features == ("asimddp", "i8mm")
    assert info.int8_class == "arm"
    assert cpu.weight_type_for("arm") == "int8"
    assert cpu.fused_kernel_path(info, "int8") == "exact int32 (ARM)"


def test_unknown_architecture() -> None:
    assert cpu.cpu_class("riscv64", ()) == "other"


def test_resolve_auto_reads_the_cpuinfo_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text(EPYC_ROME)
    monkeypatch.setenv("QUANT_CPUINFO", str(fake))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    cpu.host_cpu.cache_clear()
    try:
        assert cpu.resolve_cpu("auto") == "avx2"
        assert cpu.resolve_cpu("vnni") == "vnni"
    finally:
        cpu.host_cpu.cache_clear()


def test_bad_choices_name_the_choices() -> None:
    with pytest.raises(UsageError, match="--cpu must be one of auto, vnni, avx2, arm"):
        cpu.resolve_cpu("sse")
    with pytest.raises(UsageError, match="unknown CPU class"):
        cpu.weight_type_for("auto")
