#!/usr/bin/env bash
# Real-Postfix end-to-end test for mailgrip as an after-queue content filter.
#
#   smtp-source -> Postfix :2525 -> content_filter scan:[127.0.0.1]:10025 (mailgrip)
#     -> Postfix re-injection smtpd 127.0.0.1:10026 -> relayhost smtp-sink :2626 -> $TMP/sink
#
# The Postfix instance is a throw-away one under a temp dir, built from the snippets we
# ship in deploy/postfix/ (ports substituted), so this test tries what operators paste.
#
# (a) N messages: all arrive, each tagged with exactly one X-Mailgrip-Class header.
# (b) N more: mailgrip is killed with SIGKILL mid-stream and restarted; every message of
#     both bursts still arrives (duplicates are reported, not failures; losses fail).
#
# Needs root and Postfix (scripts/install-postfix.sh). Usage: tests/postfix/e2e.sh
# Environment (defaults): MAILGRIP=target/release/mailgrip  N=500  TIMEOUT=120 (s, per wait)
#   MODEL_DIR=tests/fixtures/tiny-model  KEEP_TMP=0 (1: keep the temp dir even on success)
#   KILL_AFTER=N/5 (burst-2 messages delivered before the kill)  DOWN_FOR=2 (s mailgrip is down)
#   SMTP_PORT=2525 FILTER_PORT=10025 REINJECT_PORT=10026 SINK_PORT=2626 METRICS_PORT=9925
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2

MAILGRIP=${MAILGRIP:-target/release/mailgrip}
MODEL_DIR=${MODEL_DIR:-tests/fixtures/tiny-model}
N=${N:-500}
TIMEOUT=${TIMEOUT:-120}
KILL_AFTER=${KILL_AFTER:-$((N / 5))}
DOWN_FOR=${DOWN_FOR:-2}
KEEP_TMP=${KEEP_TMP:-0}
SMTP_PORT=${SMTP_PORT:-2525}
FILTER_PORT=${FILTER_PORT:-10025}
REINJECT_PORT=${REINJECT_PORT:-10026}
SINK_PORT=${SINK_PORT:-2626}
METRICS_PORT=${METRICS_PORT:-9925}
HOST=127.0.0.1

# Result counting, process and wait helpers shared with milter.sh and proxy.sh.
. "$REPO/tests/postfix/common.sh"
# finish: the last line of output is always "N passed, M failed".


# ---------------------------------------------------------------- preflight
[ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master runs as root); try sudo"
for tool in postfix postconf smtp-source smtp-sink script timeout awk; do
    command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-postfix.sh"
done
[ -x "$MAILGRIP" ] || die "mailgrip binary $MAILGRIP not found or not executable (cargo build --release, or set MAILGRIP)"
for f in deploy/postfix/main.cf deploy/postfix/master.cf; do
    [ -f "$f" ] || die "$f missing"
done
port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
for p in "$SMTP_PORT" "$FILTER_PORT" "$REINJECT_PORT" "$SINK_PORT" "$METRICS_PORT"; do
    port_busy "$p" && die "port $HOST:$p is already in use"
done

TMP=$(mktemp -d /tmp/mailgrip-postfix-e2e.XXXXXX) || die "mktemp"
chmod 755 "$TMP"               # user postfix must traverse it
PF=$TMP/postfix
SINK=$TMP/sink
mkdir -p "$PF/etc" "$PF/spool" "$PF/data" "$PF/log" "$SINK" "$TMP/archive"
chown postfix "$PF/data" "$SINK"    # config and queue dirs stay root's (Postfix insists)

SINK_PID= MG_PID= SRC_PID= PF_STARTED=0
cleanup() {
    local rc=$?
    for pid in $SRC_PID $MG_PID $SINK_PID; do
        stop_pid "$pid"
    done
    if [ "$PF_STARTED" = 1 ]; then
        timeout 30 script -qec "postfix -c $PF/etc stop" /dev/null >/dev/null 2>&1
        # postfix stop returns before master has exited; wait (bounded), then force it.
        local master
        master=$(tr -d ' ' <"$PF/spool/pid/master.pid" 2>/dev/null)
        for _ in $(seq 50); do
            [ -n "$master" ] && kill -0 "$master" 2>/dev/null || break
            sleep 0.1
        done
        [ -n "$master" ] && kill -9 "$master" 2>/dev/null
    fi
    if [ "$rc" -eq 0 ] && [ "$KEEP_TMP" != 1 ]; then
        rm -rf "$TMP"
    elif [ "$FINISHED" = 0 ]; then
        info "interrupted; kept $TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- Postfix instance
# Instance plumbing (paths, logging, next hop, fast retries) comes from here; the
# content-filter wiring comes only from deploy/postfix/, with its ports substituted.
template() {
    sed -e "s/127\.0\.0\.1\]:10025/$HOST]:$FILTER_PORT/g" \
        -e "s/127\.0\.0\.1:10026/$HOST:$REINJECT_PORT/g" "$1"
}

cat >"$PF/etc/main.cf" <<EOF
# --- test instance (tests/postfix/e2e.sh) ---
compatibility_level = 3.6
queue_directory = $PF/spool
data_directory = $PF/data
myhostname = gw.test.invalid
mydestination =
inet_interfaces = $HOST
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
relayhost = [$HOST]:$SINK_PORT
smtp_host_lookup = native
smtp_dns_support_level = disabled
maillog_file_prefixes = $TMP
maillog_file = $PF/log/maillog
smtputf8_enable = yes
biff = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
# Deferred mail (mailgrip down) is retried within seconds, not minutes.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
transport_retry_time = 1s
# --- shipped snippet: deploy/postfix/main.cf ---
EOF
template deploy/postfix/main.cf >>"$PF/etc/main.cf"

cat >"$PF/etc/master.cf" <<EOF
# --- test instance (tests/postfix/e2e.sh): Debian's services, chroot n ---
$HOST:$SMTP_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
# --- shipped snippet: deploy/postfix/master.cf ---
EOF
template deploy/postfix/master.cf >>"$PF/etc/master.cf"

# The substitution must have hit, or we would be testing something else than we think.
wired() {
    [ "$(postconf -c "$PF/etc" -h content_filter)" = "scan:[$HOST]:$FILTER_PORT" ] &&
        postconf -c "$PF/etc" -M "$HOST:$REINJECT_PORT/inet" | grep -q smtpd &&
        postconf -c "$PF/etc" -M scan/unix | grep -q smtp
}
check "Postfix config built from deploy/postfix/ (content_filter, scan, re-injection :$REINJECT_PORT)" wired ||
    true
out=$(timeout 60 script -qec "postfix -c $PF/etc check" /dev/null 2>&1)
check "postfix check accepts the config" test $? -eq 0
[ -n "$out" ] && info "postfix check: $(echo "$out" | tr -d '\r' | head -5)"

smtp-sink -u postfix -d "$SINK/%H%M%S." "$HOST:$SINK_PORT" 256 >"$TMP/smtp-sink.log" 2>&1 &
SINK_PID=$!

out=$(timeout 60 script -qec "postfix -c $PF/etc start" /dev/null 2>&1)
rc=$?
PF_STARTED=1
[ "$rc" -eq 0 ] || { info "$(echo "$out" | tr -d '\r')"; die "postfix start"; }

banner_220() (  # subshell: a failed exec redirection must not end the test
    exec 3<>"/dev/tcp/$HOST/$1" || exit 1
    read -r -t 5 line <&3 || exit 1
    printf 'QUIT\r\n' >&3
    [ "${line:0:3}" = 220 ]
)
wait_for 30 "Postfix on :$SMTP_PORT" banner_220 "$SMTP_PORT" 2>/dev/null &&
    wait_for 30 "re-injection smtpd on :$REINJECT_PORT" banner_220 "$REINJECT_PORT" 2>/dev/null &&
    wait_for 30 "smtp-sink on :$SINK_PORT" banner_220 "$SINK_PORT" 2>/dev/null
check "Postfix (:$SMTP_PORT, :$REINJECT_PORT) and smtp-sink (:$SINK_PORT) up" test $? -eq 0 ||
    stop_here "the Postfix stack is not up (see $PF/log/maillog)"

# ---------------------------------------------------------------- mailgrip
start_mailgrip() {
    env MAILGRIP__SMTP__LISTEN="$HOST:$FILTER_PORT" \
        MAILGRIP__RELAY__MODE=smtp \
        MAILGRIP__RELAY__NEXT_HOP="$HOST:$REINJECT_PORT" \
        MAILGRIP__ARCHIVE__DIR="$TMP/archive" \
        MAILGRIP__METRICS__LISTEN="$HOST:$METRICS_PORT" \
        MAILGRIP__MODEL__DIR="$MODEL_DIR" \
        "$MAILGRIP" serve >>"$TMP/mailgrip.log" 2>&1 &
    MG_PID=$!
    local t0 s0
    t0=$(now)
    s0=$(date +%s)
    while [ $(($(date +%s) - s0)) -lt 60 ]; do
        if ! kill -0 "$MG_PID" 2>/dev/null; then
            wait "$MG_PID"
            info "mailgrip exited with status $? before greeting"
            break
        fi
        # Still ours after the banner: a 220 from some other listener must not count.
        if banner_220 "$FILTER_PORT" 2>/dev/null && kill -0 "$MG_PID" 2>/dev/null; then
            info "mailgrip (pid $MG_PID) answering on :$FILTER_PORT after $(elapsed "$t0") s"
            return 0
        fi
        sleep 0.1
    done
    info "mailgrip log tail ($TMP/mailgrip.log):"
    tail -n 20 "$TMP/mailgrip.log" | sed 's/^/         /'
    return 1
}
check "mailgrip serve starts and greets on :$FILTER_PORT" start_mailgrip || stop_here "mailgrip did not start"
if command -v curl >/dev/null; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$HOST:$METRICS_PORT/readyz")
    info "mailgrip /readyz: HTTP $code"
fi

# ---------------------------------------------------------------- helpers on results
# One line per delivered file: "<key> <n Class> <n Scores> <n Model> <n Id> <n Action>"
# where key is the envelope recipient smtp-sink recorded (smtp-source -N numbers them:
# 17burst2 for <17burst2@corp.example>), "-" for mail that is not ours (a bounce, for instance).
# Only the header section is read; mailgrip's headers are prepended above Postfix's.
scan_sink() {
    find "$SINK" -type f -print0 | xargs -0 -r awk '
        function emit() {
            if (fname != "")
                print (key == "" ? "-" : key), h["x-mailgrip-class"] + 0, h["x-mailgrip-scores"] + 0,
                      h["x-mailgrip-model"] + 0, h["x-mailgrip-id"] + 0, h["x-mailgrip-action"] + 0
        }
        FNR == 1 { emit(); fname = FILENAME; inhdr = 1; key = ""; split("", h) }
        inhdr {
            sub(/\r$/, "")
            if ($0 == "") { inhdr = 0; next }
            l = tolower($0)
            if (l ~ /^x-rcpt-args:/ && match(l, /<[0-9]+burst[0-9]+@/))
                key = substr(l, RSTART + 1, RLENGTH - 2)
            if (l ~ /^x-mailgrip-[a-z]+:/) { name = l; sub(/:.*/, "", name); h[name]++ }
        }
        END { emit() }' >"$TMP/delivered.txt"
}
# Keys 1burstB..NburstB that are absent from delivered.txt.
missing_of() {
    local b=$1
    seq 1 "$N" | sed "s/\$/burst$b/" | sort >"$TMP/expected.$b"
    awk '{ print $1 }' "$TMP/delivered.txt" | sort -u | comm -23 "$TMP/expected.$b" -
}
burst_count() { awk -v b="burst$1" '$1 ~ ("^[0-9]+" b "$") { n++ } END { print n + 0 }' "$TMP/delivered.txt"; }
dupes_of() {
    awk -v b="burst$1" '$1 ~ ("^[0-9]+" b "$") { c[$1]++ }
        END { for (k in c) if (c[k] > 1) d += c[k] - 1; print d + 0 }' "$TMP/delivered.txt"
}

send_burst() {  # send_burst B: N messages, 10 parallel sessions, recipients <i>burstB@corp.example
    timeout "$TIMEOUT" smtp-source -N -s 10 -m "$N" -l 2048 -S "mailgrip e2e burst $1" \
        -f sender@x.example -t "burst$1@corp.example" "$HOST:$SMTP_PORT" >"$TMP/smtp-source.$1.log" 2>&1
}

# ---------------------------------------------------------------- (a) N messages
echo "--- (a) $N messages through Postfix -> mailgrip -> Postfix -> smtp-sink"
t0=$(now)
send_burst 1
check "smtp-source: Postfix accepted all $N messages of burst 1" test $? -eq 0
t_sent=$(elapsed "$t0")
wait_for "$TIMEOUT" "$N messages at the sink" eval '[ "$(sink_count)" -ge "$N" ] || ! mg_alive'
t_a=$(elapsed "$t0")
wait_for "$TIMEOUT" "an empty Postfix queue" eval '[ "$(queue_count)" -eq 0 ] || ! mg_alive'
check "mailgrip still running after burst 1" mg_alive
sleep 0.5
scan_sink
got=$(burst_count 1)
info "burst 1: queued by Postfix in ${t_sent}s; $got at the sink after ${t_a}s ($(awk -v n="$N" -v t="$t_a" 'BEGIN { printf "%.0f", n / t }') msg/s end to end)"
lost=$(missing_of 1 | wc -l)
check "burst 1: none lost ($lost of $N missing)" test "$lost" -eq 0
[ "$lost" -gt 0 ] && info "missing: $(missing_of 1 | head -10 | tr '\n' ' ')"
dup_a=$(dupes_of 1)
check "burst 1: no duplicates without a failure ($dup_a)" test "$dup_a" -eq 0
bad=$(awk '$1 != "-" && $2 != 1' "$TMP/delivered.txt" | wc -l)
check "burst 1: every message has exactly one X-Mailgrip-Class header ($bad do not)" test "$bad" -eq 0
[ "$bad" -gt 0 ] && info "e.g. key/Class count: $(awk '$1 != "-" && $2 != 1 { print $1 "=" $2 }' "$TMP/delivered.txt" | head -5 | tr '\n' ' ')"
bad=$(awk '$1 != "-" && ($3 != 1 || $4 != 1 || $5 != 1 || $6 != 1)' "$TMP/delivered.txt" | wc -l)
check "burst 1: every message has exactly one X-Mailgrip-Scores/-Model/-Id/-Action ($bad do not)" test "$bad" -eq 0
foreign=$(awk '$1 == "-"' "$TMP/delivered.txt" | wc -l)
bounced=$(maillog_count "status=bounced")
check "burst 1: no bounces (sink: $foreign foreign messages; maillog: $bounced status=bounced)" \
    test "$foreign" -eq 0 -a "$bounced" -eq 0
sample=$(find "$SINK" -type f | head -1)
[ -n "$sample" ] && info "sample tags: $(grep -i -m1 '^X-Mailgrip-Class:' "$sample" | tr -d '\r'); $(grep -i -m1 '^X-Mailgrip-Model:' "$sample" | tr -d '\r')"

# ---------------------------------------------------------------- (b) kill -9 mid-stream
echo "--- (b) $N more; kill -9 mailgrip after $KILL_AFTER of them are through, restart after ${DOWN_FOR}s"
base=$(sink_count)
deferred_before=$(maillog_count "status=deferred")
t0=$(now)
send_burst 2 &
SRC_PID=$!
wait_for "$TIMEOUT" "$KILL_AFTER burst-2 messages at the sink" eval '[ $(( $(sink_count) - base )) -ge "$KILL_AFTER" ] || ! mg_alive'
kill -9 "$MG_PID" 2>/dev/null
wait "$MG_PID" 2>/dev/null
at_kill=$(($(sink_count) - base))
MG_PID=
info "SIGKILL after $(elapsed "$t0")s, when $at_kill of burst 2 had arrived; Postfix queue held $(queue_count)"
check "the kill landed mid-stream (0 < $at_kill < $N delivered)" test "$at_kill" -gt 0 -a "$at_kill" -lt "$N"
sleep "$DOWN_FOR"
check "mailgrip restarts after kill -9" start_mailgrip
wait "$SRC_PID"
check "smtp-source: Postfix accepted all $N messages of burst 2 (mailgrip down or not)" test $? -eq 0
SRC_PID=
wait_for "$TIMEOUT" "an empty Postfix queue after the restart" eval '[ "$(queue_count)" -eq 0 ] || ! mg_alive'
check "restarted mailgrip still running after burst 2" mg_alive
check "Postfix queue drains after the restart (left: $(queue_count))" test "$(queue_count)" -eq 0
t_b=$(elapsed "$t0")
sleep 0.5
scan_sink
lost1=$(missing_of 1 | wc -l)
lost2=$(missing_of 2 | wc -l)
dup2=$(dupes_of 2)
info "burst 2: $(burst_count 2) copies at the sink after ${t_b}s, $dup2 duplicates (at-least-once; not a failure)"
info "maillog: $(($(maillog_count "status=deferred") - deferred_before)) deferrals during burst 2;" \
    "$(grep -c "postfix/smtp\[.*:$FILTER_PORT,.*may be sent more than once" "$PF/log/maillog")" \
    "deliveries into mailgrip cut off after end-of-DATA by the kill"
check "after kill -9: every message of both bursts arrived (missing: $lost1 of burst 1, $lost2 of burst 2)" \
    test "$lost1" -eq 0 -a "$lost2" -eq 0
[ "$lost2" -gt 0 ] && info "missing: $(missing_of 2 | head -10 | tr '\n' ' ')"
bad=$(awk '$1 != "-" && $2 != 1' "$TMP/delivered.txt" | wc -l)
check "after kill -9: every delivered copy has exactly one X-Mailgrip-Class header ($bad do not)" test "$bad" -eq 0
foreign=$(awk '$1 == "-"' "$TMP/delivered.txt" | wc -l)
bounced=$(maillog_count "status=bounced")
check "after kill -9: nothing bounced (sink: $foreign foreign messages; maillog: $bounced status=bounced)" \
    test "$foreign" -eq 0 -a "$bounced" -eq 0

info "Postfix warnings in maillog: $(maillog_count "warning:"); mailgrip archive: $(find "$TMP/archive" -type f | wc -l) files"
echo "--- summary: burst 1 ${t_a}s, burst 2 with kill/restart ${t_b}s; $(sink_count) files at the sink for $((2 * N)) messages"
finish
