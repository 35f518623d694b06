#!/usr/bin/env bash
# Install the packages that the Postfix end-to-end test (tests/postfix/e2e.sh) needs,
# on a bare Debian/Ubuntu machine, as root. Idempotent and non-interactive: a second
# run finds everything present and does nothing.
#
#   postfix     the MTA, plus smtp-source (load generator) and smtp-sink (fake next hop)
#   swaks       hand-driven SMTP sessions (README tour, debugging)
#   bsdutils    `script`, which gives `postfix start` a tty so that its errors are shown
#   curl        reads mailgrip's /readyz (reported by the test, and used in the README tour)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-postfix.sh: must run as root" >&2
    exit 1
fi

packages=(postfix swaks bsdutils curl)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-postfix.sh: all present (${packages[*]})"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# Without this answer the postfix package asks which "mail configuration" to use.
# "No configuration" leaves /etc/postfix/main.cf absent; the test builds its own instance.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "postfix postfix/mailname string gw.test.invalid" | debconf-set-selections

apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# Where an init system runs, the package may also start a system-wide Postfix on port 25
# (with "No configuration" it normally has no main.cf and does not). The test does not
# use it and does not touch it: it runs its own instance on other ports.
if command -v postconf >/dev/null; then
    echo "install-postfix.sh: $(postconf -d mail_version 2>/dev/null || echo postfix) installed"
fi
