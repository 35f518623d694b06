#!/usr/bin/env bash
# Create the training venv (models/training/.venv) with the pinned dependencies of
# models/training/requirements.txt. About 4 minutes and 5 GB on a bare machine (PyPI's torch is
# the CUDA build). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x models/training/.venv/bin/python ]; then
    python3 -m venv models/training/.venv
fi
stamp=models/training/.venv/.requirements.sha256
want=$(sha256sum models/training/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    models/training/.venv/bin/pip install --quiet --disable-pip-version-check -r models/training/requirements.txt
    echo "$want" > "$stamp"
fi
