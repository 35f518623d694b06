#!/usr/bin/env bash
# Install what the console's real-browser test (tests/console/browser_test.py) needs, on a bare
# Debian/Ubuntu machine, as root. Idempotent and non-interactive: a second run finds everything
# present and does nothing.
#
#   chromium         Debian's Chromium, run headless by the test
#   chromium-driver  its matching chromedriver (/usr/bin/chromedriver), driven by Selenium
#   python3-venv     for the test's own small venv with Selenium (tests/console/.venv, from PyPI)
#
# Debian's driver and browser come from the same source package, so their versions always match;
# Selenium is told the driver's path and never downloads one (Selenium Manager stays offline).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "install-browser.sh: must run as root" >&2
    exit 1
fi

packages=(chromium chromium-driver python3-venv)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-browser.sh: all present (${packages[*]})"
else
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt run (unattended upgrades, a parallel install script) instead of failing.
    apt-get -o DPkg::Lock::Timeout=600 update -q
    apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

# Selenium in its own venv, so that the test does not depend on the system's Python packages.
# Debian's python3 is used on purpose (python3-venv above makes sure it can create venvs).
venv=tests/console/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import selenium' 2>/dev/null; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'selenium>=4.20,<5'
fi
echo "install-browser.sh: $(chromium --version 2>/dev/null || echo chromium?), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2), selenium $("$venv/bin/python" -c 'import selenium; print(selenium.__version__)')"
