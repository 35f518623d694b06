#!/usr/bin/env bash
# SPDX-License-Identifier: EUPL-1.2
#
# Validate the operations files in deploy/ with the tools this machine has:
#   - deploy/prometheus: promtool check rules + promtool test rules (promtool is installed from
#     Debian's prometheus package if missing; needs root or sudo for that);
#   - deploy/grafana: valid JSON, schemaVersion, ${DS_PROMETHEUS} input, and every PromQL
#     expression parses (checked by promtool as recording rules);
#   - every mailgrip_* metric in the rules and the dashboard exists in src/telemetry/mod.rs
#     (_bucket/_sum/_count only on histograms);
#   - deploy/systemd: systemd-analyze verify (and the offline security score), if available;
#   - deploy/container: the static properties we promise (it cannot be built here).
# Prints one line per check and ends with "N passed, M failed"; exits non-zero on failure.
#
#   tests/deploy/check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TMP=$(mktemp -d /tmp/mailgrip-deploy-check.XXXXXX)
trap 'rm -rf "$TMP"' EXIT

passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/     /' <<<"$2"; }
skip() { echo "skip $1"; }
# check NAME CMD...: run CMD, pass on exit 0, show its output on failure.
check() {
    local name=$1 out; shift
    if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$out"; fi
}

RULES=deploy/prometheus/mailgrip-alerts.yml
RULES_TEST=deploy/prometheus/mailgrip-alerts.test.yml
DASH=deploy/grafana/mailgrip-dashboard.json
UNIT=deploy/systemd/mailgrip.service
CONTAINER=deploy/container/Containerfile
TELEMETRY=src/telemetry/mod.rs

# --- promtool ---------------------------------------------------------------------------------
if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool missing: installing Debian's prometheus package"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    start=$(date +%s)
    if $SUDO apt-get update -qq >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
        echo "installed prometheus (promtool) in $(( $(date +%s) - start )) s"
    fi
fi
if command -v promtool >/dev/null 2>&1; then
    ok "promtool available ($(promtool --version 2>&1 | head -1))"
    check "promtool check rules $RULES" promtool check rules "$RULES"
    # promtool resolves rule_files relative to the test file.
    check "promtool test rules $RULES_TEST" promtool test rules "$RULES_TEST"
else
    fail "promtool available (apt-get install prometheus failed)"
fi

# --- dashboard JSON ---------------------------------------------------------------------------
check "dashboard is valid JSON" python3 -m json.tool "$DASH"
check "dashboard: schemaVersion 39, \${DS_PROMETHEUS} input, unique panel ids" python3 - "$DASH" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d.get("schemaVersion") == 39, f"schemaVersion {d.get('schemaVersion')}"
assert any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in d.get("__inputs", [])), "no DS_PROMETHEUS input"
ids, titles = [], []
def walk(panels):
    for p in panels:
        ids.append(p["id"]); titles.append(p.get("title", ""))
        if p.get("type") != "row":
            ds = p.get("datasource", {})
            assert ds.get("uid") == "${DS_PROMETHEUS}", f"panel {p.get('title')}: datasource {ds}"
            assert p.get("targets"), f"panel {p.get('title')}: no targets"
        walk(p.get("panels", []))
walk(d["panels"])
assert len(ids) == len(set(ids)), "duplicate panel ids"
for want in ("Messages by class", "Decisions by action", "Classification", "Review queue depth",
             "Oldest copy waiting for review", "Errors by stage", "Model info"):
    assert any(want in t for t in titles), f"no panel titled like {want!r}"
PY

# Dashboard PromQL parses: write every expression as a recording rule and let promtool parse it.
python3 - "$DASH" >"$TMP/dashboard-exprs.yml" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            exprs.append(t["expr"])
        walk(p.get("panels", []))
walk(d["panels"])
for v in d["templating"]["list"]:
    q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
    if q.startswith("label_values("):   # label_values(expr, label): check the selector
        inner = q[len("label_values("):q.rindex(",")]
        exprs.append(inner)
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    e = (e.replace("$__rate_interval", "5m").replace("$job", "mailgrip").replace("$instance", ".*"))
    print(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(e)}")
PY
if command -v promtool >/dev/null 2>&1; then
    check "dashboard PromQL parses ($(grep -c 'record:' "$TMP/dashboard-exprs.yml") expressions)" \
        promtool check rules "$TMP/dashboard-exprs.yml"
fi

# --- metric names against src/telemetry/mod.rs ------------------------------------------------
check "every metric in rules, rule tests and dashboard exists in $TELEMETRY" python3 - "$TELEMETRY" "$RULES" "$RULES_TEST" "$DASH" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
defined = set(re.findall(r'"(mailgrip_[a-z0-9_]+)"', src))
# Histograms: registered through hist("name", ...) or HistogramOpts::new("name", ...).
hist = set(re.findall(r'(?:hist\(\s*|HistogramOpts::new\(\s*)"(mailgrip_[a-z0-9_]+)"', src))
assert defined and hist, "could not read metric names from the source"
bad = []
for f in sys.argv[2:]:
    for name in sorted(set(re.findall(r'\b(mailgrip_[a-z0-9_]+)', open(f).read()))):
        if name in defined and name not in hist:
            continue
        base = re.sub(r'_(bucket|sum|count)$', '', name)
        if base in hist and base != name:
            continue
        bad.append(f"{f}: {name}" + (" (histogram: use _bucket/_sum/_count)" if name in hist else ""))
if bad:
    print("\n".join(bad)); sys.exit(1)
PY
check "labels used with each metric exist in $TELEMETRY" python3 - "$TELEMETRY" "$RULES" "$DASH" <<'PY'
import re, sys
src = open(sys.argv[1]).read()
labels = {}
# The label list is the first &["a", "b"] after the name and before the next metric name:
# counter("name", "help", &["a"]), Opts::new("name", ...), &["a"], HistogramOpts::new(...), &["mode"].
for name in set(re.findall(r'"(mailgrip_[a-z0-9_]+)"', src)):
    i = src.index(f'"{name}"')
    tail = src[i:i + 400]
    m = re.search(r'&\[([^\]]*)\]', tail)
    nxt = re.search(r'"mailgrip_', tail[1:])
    if m and (not nxt or m.start() < nxt.start() + 1):
        labels[name] = set(re.findall(r'"([a-z_]+)"', m.group(1)))
    else:
        labels[name] = set()
common = {"job", "instance", "le"}
bad = []
for f in sys.argv[2:]:
    text = open(f).read().replace('\\"', '"')
    for name, sel in re.findall(r'\b(mailgrip_[a-z0-9_]+)\{([^}]*)\}', text):
        base = re.sub(r'_(bucket|sum|count)$', '', name)
        known = labels.get(name, labels.get(base, set())) | common
        for lab in re.findall(r'([a-z_]+)\s*(?:=~|!~|!=|=)', sel):
            if lab not in known:
                bad.append(f"{f}: {name}{{{lab}}} (known: {sorted(known - common)})")
if bad:
    print("\n".join(sorted(set(bad)))); sys.exit(1)
PY

# --- systemd unit -----------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify wants ExecStart's binary to exist; where mailgrip is not installed, check the unit
    # with /bin/true in its place (the rest of the file unchanged).
    mkdir -p "$TMP/unit"
    if [ -x /usr/local/bin/mailgrip ]; then
        cp "$UNIT" "$TMP/unit/mailgrip.service"
    else
        sed 's#^ExecStart=/usr/local/bin/mailgrip #ExecStart=/bin/true #' "$UNIT" >"$TMP/unit/mailgrip.service"
    fi
    # verify exits 0 on unknown keys and bad values (it only warns): any output is a failure.
    check "systemd-analyze verify $UNIT (no warnings)" bash -c \
        'out=$(systemd-analyze verify "$1" 2>&1); rc=$?; [ -n "$out" ] && echo "$out"; [ $rc -eq 0 ] && [ -z "$out" ]' _ "$TMP/unit/mailgrip.service"
    if systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
        check "systemd-analyze security --offline: exposure <= 2.0" \
            systemd-analyze security --offline=true --threshold=20 --no-pager "$TMP/unit/mailgrip.service"
    fi
else
    skip "systemd-analyze verify (systemd-analyze not installed)"
fi
check "unit: hardening directives present" bash -c '
    u='"$UNIT"'
    for d in "^User=mailgrip$" "^StateDirectory=mailgrip$" "^ProtectSystem=strict$" "^ProtectHome=yes$" \
             "^PrivateTmp=yes$" "^NoNewPrivileges=yes$" "^RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX$" \
             "^SystemCallFilter=@system-service$" "^CapabilityBoundingSet=$" "^#AmbientCapabilities=CAP_NET_BIND_SERVICE$" \
             "^Restart=on-failure$" "^ExecStart=/usr/local/bin/mailgrip serve --config /etc/mailgrip/mailgrip.toml$" \
             "^#Environment=ORT_DYLIB_PATH="; do
        grep -q -- "$d" "$u" || { echo "missing: $d"; exit 1; }
    done
    t=$(sed -n "s/^TimeoutStopSec=\([0-9]*\)s\?$/\1/p" "$u")
    grace=$(sed -n "s/.*SHUTDOWN_GRACE: Duration = Duration::from_secs(\([0-9]*\)).*/\1/p" src/lib.rs)
    [ -n "$t" ] && [ -n "$grace" ] && [ "$t" -gt "$grace" ] || { echo "TimeoutStopSec=$t not above SHUTDOWN_GRACE=$grace s"; exit 1; }'

# --- container --------------------------------------------------------------------------------
check "Containerfile: stages, non-root user, ports, ORT library (static check; not built here)" bash -c '
    c='"$CONTAINER"'
    grep -q "^FROM docker.io/library/rust:1.95-bookworm AS build" "$c" &&
    grep -q "^FROM docker.io/library/debian:bookworm-slim" "$c" &&
    grep -q "^USER mailgrip" "$c" &&
    grep -q "^EXPOSE 10025 9925$" "$c" &&
    grep -q "libonnxruntime.so" "$c" &&
    grep -qi "not built" "$c" || { echo "Containerfile lacks an expected line"; exit 1; }
    v=$(sed -n "s/^ORT_VERSION=//p" scripts/setup.sh); a=$(sed -n "s/^ARG ORT_VERSION=//p" "$c")
    [ "$v" = "$a" ] || { echo "ORT_VERSION $a differs from scripts/setup.sh ($v)"; exit 1; }
    grep -q "libonnxruntime.so.$v" "$c" || { echo "ORT_DYLIB_PATH does not name libonnxruntime.so.$v"; exit 1; }'

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
