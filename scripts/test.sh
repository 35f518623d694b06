#!/usr/bin/env bash
# Run every test of mailgrip on a fresh Debian machine (as root, as CI does):
# installs what is missing (Postfix for the end-to-end tests, Chromium for the console test,
# the ONNX Runtime wheel, the training venv), then runs the Rust tests, the real-Postfix tests
# (content filter, milter, before-queue proxy), the console's browser test and the training
# smoke test. Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

step "install: Postfix and SMTP tools, xmllint (MDTO schema validation)"
scripts/install-postfix.sh
if ! command -v xmllint >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libxml2-utils
fi

step "install: Chromium, chromedriver and Selenium (console browser test)"
scripts/install-browser.sh

step "install: ONNX Runtime venv and release build"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "Rust unit and integration tests"
cargo test --release --locked

step "Postfix end-to-end (content filter, kill -9 mid-stream)"
tests/postfix/e2e.sh

step "Postfix milter (smtpd_milters: tags, forged fields deleted, archive copies)"
tests/postfix/milter.sh

step "Postfix before-queue proxy (smtpd_proxy_filter: live 250 and live 5xx)"
tests/postfix/proxy.sh

step "archivist console in a real browser (headless Chromium: log in, open, decide, archived)"
tests/console/.venv/bin/python tests/console/browser_test.py

step "deploy kit: Prometheus rules (promtool), Grafana dashboard, systemd unit"
tests/deploy/check.sh

if [ -f models/training/tests/test_smoke.py ]; then
    step "training smoke test (tiny local BERT: fine-tune, export, ONNX == torch)"
    scripts/setup-training.sh
    models/training/.venv/bin/python -m pytest -q models/training/tests
fi
