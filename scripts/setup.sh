#!/usr/bin/env bash
# Set up a fresh machine to build and run mailgrip: a Python venv with the ONNX Runtime shared
# library (from the PyPI wheel; mailgrip loads it at run time) and a release build.
# Idempotent; run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
ORT_VERSION=1.31.1
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so* >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --disable-pip-version-check "onnxruntime==${ORT_VERSION}" "numpy<3"
fi
cargo build --release --locked 2>&1 | tail -n 2
