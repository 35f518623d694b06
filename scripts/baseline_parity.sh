#!/usr/bin/env bash
# Retrain the explainable baseline (models/mailgrip-baseline) from the corpus and check that the
# daemon reproduces its probabilities and explanations on every corpus mail.
#
#   scripts/baseline_parity.sh            # venv + release build + train + parity test
#   scripts/baseline_parity.sh --test     # parity test only (no Python: what CI runs anyway)
#
# Extra arguments after `--` go to models/training/baseline.py (e.g. -- --version 1.1.0).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--test" ]; then
    exec cargo test --release --test baseline_parity
fi
[ "${1:-}" = "--" ] && shift

venv=models/training/.venv-baseline
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp=$venv/.requirements.sha256
want=$(sha256sum models/training/requirements-baseline.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        -r models/training/requirements-baseline.txt
    echo "$want" > "$stamp"
fi

# Same parser for training as for the test binary below.
cargo build --release
"$venv/bin/python" models/training/baseline.py \
    --corpus models/corpus --out models/mailgrip-baseline \
    --mailgrip target/release/mailgrip "$@"
cargo test --release --test baseline_parity
