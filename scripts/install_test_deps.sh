#!/usr/bin/env bash
# Installs everything the full test suite needs on a fresh Debian machine with Python >= 3.10.
# The README's test command runs this, then pytest. Every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# PyTorch for the QAT tests: pinned so pip takes the CPU build available here instead of
# resolving the newest CUDA build from the index.
pip install torch==2.13.0
# quant itself (editable) with the test and qat extras.
pip install -e ".[test,qat]"
# Type stubs of the TensorRT 10.x API for the mypy check of the TensorRT backend. The stubs
# package declares a dependency on tensorrt itself, which is only on NVIDIA's index: --no-deps.
pip install --no-deps "tensorrt-stubs>=10.0"
# Debian's Chromium renders the HTML report in the report tests (headless).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null
  fi
fi
