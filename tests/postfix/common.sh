# Shared plumbing for the real-Postfix tests milter.sh and proxy.sh (sourced, not run):
# result counting, a throw-away Postfix instance under a temp dir, smtp-sink as next hop,
# waiting, and starting mailgrip. The caller sets REPO, HOST, KEEP_TMP and the ports first;
# e2e.sh sources it too and overrides cleanup, start_mailgrip and scan_sink with its own.

passed=0
failed=0
ok()   { passed=$((passed + 1)); echo "ok     $*"; }
fail() { failed=$((failed + 1)); echo "FAIL   $*"; }
# check "description" command...: passes when the command succeeds; returns its verdict.
check() { local what=$1; shift; if "$@"; then ok "$what"; else fail "$what"; return 1; fi; }
info() { echo "       $*"; }
# finish: the last line of output is always "N passed, M failed".
FINISHED=0
finish() {
    FINISHED=1
    if [ -n "${TMP:-}" ] && { [ "$failed" -ne 0 ] || [ "$KEEP_TMP" = 1 ]; }; then
        info "kept $TMP (maillog: $PF/log/maillog, mailgrip log: $TMP/mailgrip.log)"
    fi
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit $?
}
die() { fail "$*"; finish; }
stop_here() { info "stopping: $*"; finish; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# preflight TOOL...: root, the tools, the binary, free ports ($PORTS).
preflight() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master runs as root); try sudo"
    local tool p
    for tool in postfix postconf postmap script timeout awk curl "$@"; do
        command -v "$tool" >/dev/null || die "$tool not found: run scripts/install-postfix.sh"
    done
    [ -x "$MAILGRIP" ] || die "mailgrip binary $MAILGRIP not found or not executable (cargo build --release, or set MAILGRIP)"
    for p in $PORTS; do
        (exec 3<>"/dev/tcp/$HOST/$p") 2>/dev/null && die "port $HOST:$p is already in use"
    done
    return 0
}

# make_instance NAME: temp dir with Postfix dirs and a sink folder; sets TMP, PF, SINK.
make_instance() {
    TMP=$(mktemp -d "/tmp/mailgrip-postfix-$1.XXXXXX") || die "mktemp"
    chmod 755 "$TMP"               # user postfix must traverse it
    PF=$TMP/postfix
    SINK=$TMP/sink
    mkdir -p "$PF/etc" "$PF/spool" "$PF/data" "$PF/log" "$SINK" "$TMP/archive"
    chown postfix "$PF/data" "$SINK"    # config and queue dirs stay root's (Postfix insists)
}

SINK_PID= MG_PID= PF_STARTED=0 EXTRA_PIDS=
# stop_pid PID: SIGTERM, up to 10 s to exit (mailgrip drains its sessions), then SIGKILL.
stop_pid() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}
cleanup() {
    local rc=$?
    for pid in $EXTRA_PIDS $MG_PID $SINK_PID; do
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

# base_main_cf NAME: the instance plumbing (paths, logging, next hop = smtp-sink, fast retries).
# The mailgrip wiring is appended by the caller, from deploy/postfix/.
base_main_cf() {
    cat <<EOF
# --- test instance (tests/postfix/$1) ---
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
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
transport_retry_time = 1s
EOF
}

# base_master_cf NAME: Debian's services with chroot n, without a public smtpd line.
base_master_cf() {
    cat <<EOF
# --- test instance (tests/postfix/$1): Debian's services, chroot n ---
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
EOF
}

# wait_for SECONDS description command...: polls every 0.1 s.
wait_for() {
    local limit=$1 what=$2 t0
    shift 2
    t0=$(date +%s)
    until "$@"; do
        if [ $(($(date +%s) - t0)) -ge "$limit" ]; then
            info "timed out after ${limit}s waiting for $what"
            return 1
        fi
        sleep 0.1
    done
}
banner_220() (  # subshell: a failed exec redirection must not end the test
    exec 3<>"/dev/tcp/$HOST/$1" || exit 1
    read -r -t 5 line <&3 || exit 1
    printf 'QUIT\r\n' >&3
    [ "${line:0:3}" = 220 ]
)

postfix_check_and_start() {
    local out rc
    out=$(timeout 60 script -qec "postfix -c $PF/etc check" /dev/null 2>&1)
    check "postfix check accepts the config" test $? -eq 0
    [ -n "$out" ] && info "postfix check: $(echo "$out" | tr -d '\r' | head -5)"
    smtp-sink -u postfix -d "$SINK/%H%M%S." "$HOST:$SINK_PORT" 256 >"$TMP/smtp-sink.log" 2>&1 &
    SINK_PID=$!
    out=$(timeout 60 script -qec "postfix -c $PF/etc start" /dev/null 2>&1)
    rc=$?
    PF_STARTED=1
    [ "$rc" -eq 0 ] || { info "$(echo "$out" | tr -d '\r')"; die "postfix start"; }
}

# start_mailgrip VAR=VALUE...: mailgrip serve with the given environment; ready once /healthz
# answers 200 (served after the model is loaded) and the process is still ours.
start_mailgrip() {
    env MAILGRIP__METRICS__LISTEN="$HOST:$METRICS_PORT" \
        MAILGRIP__MODEL__DIR="$MODEL_DIR" \
        MAILGRIP__ARCHIVE__DIR="$TMP/archive" \
        MAILGRIP__ARCHIVE__RESTRICTED_DIR="$TMP/archive-restricted" \
        MAILGRIP__REVIEW__DIR="$TMP/review" \
        MAILGRIP__AUDIT__PATH="$TMP/audit/audit.jsonl" \
        MAILGRIP__AUDIT__REVIEW_PATH="$TMP/audit/review.jsonl" \
        "$@" "$MAILGRIP" serve >>"$TMP/mailgrip.log" 2>&1 &
    MG_PID=$!
    local t0 s0
    t0=$(now)
    s0=$(date +%s)
    while [ $(($(date +%s) - s0)) -lt 60 ]; do
        if ! kill -0 "$MG_PID" 2>/dev/null; then
            wait "$MG_PID"
            info "mailgrip exited with status $? before it was ready"
            break
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$HOST:$METRICS_PORT/healthz")" = 200 ] &&
            kill -0 "$MG_PID" 2>/dev/null; then
            info "mailgrip (pid $MG_PID) ready after $(elapsed "$t0") s"
            return 0
        fi
        sleep 0.1
    done
    info "mailgrip log tail ($TMP/mailgrip.log):"
    tail -n 20 "$TMP/mailgrip.log" | sed 's/^/         /'
    return 1
}
mg_alive() { [ -n "$MG_PID" ] && kill -0 "$MG_PID" 2>/dev/null; }
sink_count() { find "$SINK" -type f | wc -l; }
queue_count() {
    find "$PF/spool/maildrop" "$PF/spool/incoming" "$PF/spool/active" \
        "$PF/spool/deferred" "$PF/spool/hold" -type f 2>/dev/null | wc -l
}
maillog_count() { grep -c -- "$1" "$PF/log/maillog" 2>/dev/null || true; }
metric() {  # metric NAME LABEL-FILTER: sum of a counter on mailgrip's /metrics
    curl -s --max-time 5 "http://$HOST:$METRICS_PORT/metrics" |
        awk -v n="$1" -v f="$2" 'index($0, n) == 1 && index($0, f) { s += $NF } END { print s + 0 }'
}

# scan_sink: one line per delivered file into $TMP/delivered.txt:
#   <key> <n Class> <n Scores> <n Model> <n Id> <n Action> <n X-Mailgrip-* in all> <Id value> <forged marks>
# key: the envelope recipient smtp-sink recorded in X-Rcpt-Args (smtp-source -N numbers them:
# 17burst1 for <17burst1@corp.example>; swaks mail uses <forgedK@corp.example>), "-" otherwise.
# forged marks: how many header lines (continuations included) contain "FORGED".
scan_sink() {
    find "$SINK" -type f -print0 | xargs -0 -r awk '
        function emit() {
            if (fname != "")
                print (key == "" ? "-" : key), h["x-mailgrip-class"] + 0, h["x-mailgrip-scores"] + 0,
                      h["x-mailgrip-model"] + 0, h["x-mailgrip-id"] + 0, h["x-mailgrip-action"] + 0,
                      all + 0, (id == "" ? "-" : id), forged + 0
        }
        FNR == 1 { emit(); fname = FILENAME; inhdr = 1; key = ""; id = ""; all = 0; forged = 0; split("", h) }
        inhdr {
            sub(/\r$/, "")
            if ($0 == "") { inhdr = 0; next }
            l = tolower($0)
            if (l ~ /^x-rcpt-args:/ && match(l, /<[0-9a-z]+@corp/))
                key = substr(l, RSTART + 1, RLENGTH - 6)
            if (l ~ /^x-mailgrip-[a-z]+:/) { name = l; sub(/:.*/, "", name); h[name]++; all++ }
            if (l ~ /^x-mailgrip-id:/) { id = $0; sub(/^[^:]*: */, "", id) }
            if ($0 ~ /FORGED/) forged++
        }
        END { emit() }' >"$TMP/delivered.txt"
}
