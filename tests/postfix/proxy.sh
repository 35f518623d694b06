#!/usr/bin/env bash
# Real-Postfix test for mailgrip as a before-queue filter (smtpd_proxy_filter).
#
#   swaks / smtp-source -> Postfix smtpd :2525 --proxy--> mailgrip :10025
#     -> after-filter smtpd :10026 -> queue -> relayhost smtp-sink :2626 -> $TMP/sink
#
# The instance's filter wiring is deploy/postfix/master.cf.proxy as shipped (ports
# substituted). One addition, for (b) only: the after-filter smtpd rejects one recipient
# through a check_recipient_access map.
#
# (a) The client sees mailgrip's own reply to end of DATA, live: "250 2.0.0 Ok: <id>
#     <class> <action>"; the delivered message carries that id. N more through smtp-source
#     arrive, each tagged once.
# (b) A recipient the after-filter smtpd rejects with 550: the client gets the 550 at end of
#     DATA (nothing was queued, so this is a reject, not a bounce); nothing is delivered or
#     bounced.
#
# Needs root and Postfix (scripts/install-postfix.sh). Usage: tests/postfix/proxy.sh
# Environment (defaults): MAILGRIP=target/release/mailgrip  N=100  TIMEOUT=120 (s, per wait)
#   MODEL_DIR=tests/fixtures/tiny-model  KEEP_TMP=0 (1: keep the temp dir even on success)
#   SMTP_PORT=2525 FILTER_PORT=10025 REINJECT_PORT=10026 SINK_PORT=2626 METRICS_PORT=9925
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2

MAILGRIP=${MAILGRIP:-target/release/mailgrip}
MODEL_DIR=${MODEL_DIR:-tests/fixtures/tiny-model}
N=${N:-100}
TIMEOUT=${TIMEOUT:-120}
KEEP_TMP=${KEEP_TMP:-0}
SMTP_PORT=${SMTP_PORT:-2525}
FILTER_PORT=${FILTER_PORT:-10025}
REINJECT_PORT=${REINJECT_PORT:-10026}
SINK_PORT=${SINK_PORT:-2626}
METRICS_PORT=${METRICS_PORT:-9925}
HOST=127.0.0.1
PORTS="$SMTP_PORT $FILTER_PORT $REINJECT_PORT $SINK_PORT $METRICS_PORT"
SNIPPET=deploy/postfix/master.cf.proxy

# shellcheck source=tests/postfix/common.sh
. "$REPO/tests/postfix/common.sh"

preflight smtp-source smtp-sink swaks
[ -f "$SNIPPET" ] || die "$SNIPPET missing"
make_instance proxy
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- Postfix instance
base_main_cf proxy.sh >"$PF/etc/main.cf"
{
    base_master_cf proxy.sh
    echo "# --- shipped snippet: $SNIPPET (public smtpd on $HOST:$SMTP_PORT) ---"
    sed -e "s/^smtp\( \+\)inet/$HOST:$SMTP_PORT inet/" \
        -e "s/127\.0\.0\.1:10025/$HOST:$FILTER_PORT/g" \
        -e "s/127\.0\.0\.1:10026/$HOST:$REINJECT_PORT/g" "$SNIPPET"
} >"$PF/etc/master.cf"

# (b): the after-filter smtpd refuses one recipient, as a mailbox server would.
printf 'nobody@corp.example 550 5.1.1 <nobody@corp.example>: no such user here\n' >"$PF/etc/rcpt_reject"
postmap -c "$PF/etc" "hash:$PF/etc/rcpt_reject" || die "postmap"
postconf -c "$PF/etc" -P \
    "$HOST:$REINJECT_PORT/inet/smtpd_recipient_restrictions=check_recipient_access,hash:$PF/etc/rcpt_reject,permit_mynetworks,reject" || die "postconf -P"

wired() {
    postconf -c "$PF/etc" -P "$HOST:$SMTP_PORT/inet/smtpd_proxy_filter" | grep -q "= $HOST:$FILTER_PORT\$" &&
        postconf -c "$PF/etc" -P "$HOST:$SMTP_PORT/inet/smtpd_proxy_options" | grep -q "= speed_adjust\$" &&
        postconf -c "$PF/etc" -M "$HOST:$REINJECT_PORT/inet" | grep -q smtpd &&
        [ -z "$(postconf -c "$PF/etc" -h content_filter)" ]
}
check "Postfix config built from $SNIPPET (smtpd_proxy_filter $HOST:$FILTER_PORT, after-filter smtpd :$REINJECT_PORT)" \
    wired || true
postfix_check_and_start
wait_for 30 "Postfix on :$SMTP_PORT" banner_220 "$SMTP_PORT" 2>/dev/null &&
    wait_for 30 "after-filter smtpd on :$REINJECT_PORT" banner_220 "$REINJECT_PORT" 2>/dev/null &&
    wait_for 30 "smtp-sink on :$SINK_PORT" banner_220 "$SINK_PORT" 2>/dev/null
check "Postfix (:$SMTP_PORT, :$REINJECT_PORT) and smtp-sink (:$SINK_PORT) up" test $? -eq 0 ||
    stop_here "the Postfix stack is not up (see $PF/log/maillog)"

check "mailgrip serve starts on :$FILTER_PORT, relaying to :$REINJECT_PORT" start_mailgrip \
    MAILGRIP__SMTP__LISTEN="$HOST:$FILTER_PORT" \
    MAILGRIP__RELAY__MODE=smtp \
    MAILGRIP__RELAY__NEXT_HOP="$HOST:$REINJECT_PORT" ||
    stop_here "mailgrip did not start"

# ---------------------------------------------------------------- (a) live reply
echo "--- (a) the client sees mailgrip's reply to end of DATA"
t0=$(now)
timeout 60 swaks --server "$HOST:$SMTP_PORT" --from a@x.example --to live1@corp.example \
    --header "Subject: proxy live reply" --body "Tot morgen bij de vergadering." >"$TMP/swaks.live.log" 2>&1
rc=$?
info "swaks finished in $(elapsed "$t0")s; reply to end of DATA: $(grep -A0 '^<-  250.*Ok:' "$TMP/swaks.live.log" | tail -1)"
check "swaks: the transaction succeeded (exit $rc)" test "$rc" -eq 0
reply=$(grep -E '^<-  250 2\.0\.0 Ok: [0-9a-f]{32} [a-z-]+ (none|archive|archive-restricted|review)$' "$TMP/swaks.live.log" | tail -1)
check "the 250 is mailgrip's: decision id, class and action (not Postfix's 'queued as')" test -n "$reply"
id=$(echo "$reply" | awk '{ print $5 }')
wait_for "$TIMEOUT" "the message at the sink" eval '[ "$(sink_count)" -ge 1 ]'
scan_sink
delivered_id=$(awk '$1 == "live1" { print $8 }' "$TMP/delivered.txt")
check "delivered, tagged once, with the id of the live reply (${delivered_id:-none} = ${id:-none})" \
    eval '[ -n "$id" ] && [ "$delivered_id" = "$id" ] && awk '\''$1 == "live1" && $2 == 1 && $7 == 6 { f = 1 } END { exit !f }'\'' "$TMP/delivered.txt"'

echo "--- (a) $N messages with smtp-source through the proxy"
t0=$(now)
timeout "$TIMEOUT" smtp-source -N -s 10 -m "$N" -l 2048 -S "mailgrip proxy burst" \
    -f sender@x.example -t "burst1@corp.example" "$HOST:$SMTP_PORT" >"$TMP/smtp-source.log" 2>&1
check "smtp-source: all $N accepted (each waited for mailgrip)" test $? -eq 0
t_burst=$(elapsed "$t0")
wait_for "$TIMEOUT" "$((N + 1)) messages at the sink" eval '[ "$(sink_count)" -ge $((N + 1)) ]'
wait_for "$TIMEOUT" "an empty Postfix queue" eval '[ "$(queue_count)" -eq 0 ]'
sleep 0.5
scan_sink
burst=$(awk '$1 ~ /^[0-9]+burst1$/' "$TMP/delivered.txt" | sort -u | wc -l)
check "all $N arrived ($burst distinct; $(sink_count) files in all)" test "$burst" -eq "$N" -a "$(sink_count)" -eq $((N + 1))
bad=$(awk '$2 != 1 || $7 != 6' "$TMP/delivered.txt" | wc -l)
check "every message tagged exactly once ($bad not)" test "$bad" -eq 0
info "$N messages in ${t_burst}s through smtpd -> mailgrip -> smtpd ($(awk -v n="$N" -v t="$t_burst" 'BEGIN { printf "%.0f", n / t }') msg/s, 10 clients)"

# ---------------------------------------------------------------- (b) next-hop 5xx, live
echo "--- (b) a recipient the after-filter smtpd rejects: 550 reaches the client at end of DATA"
before=$(sink_count)
bounced_before=$(maillog_count "status=bounced")
timeout 60 swaks --server "$HOST:$SMTP_PORT" --from a@x.example --to nobody@corp.example \
    --header "Subject: proxy reject" >"$TMP/swaks.reject.log" 2>&1
rc=$?
info "swaks exit $rc; $(grep -E '^<\*\* ' "$TMP/swaks.reject.log" | tail -1)"
check "the client gets the after-filter smtpd's 550 5.1.1 after DATA (swaks exit $rc)" \
    grep -qE '^<\*\* +550 5\.1\.1 .*no such user here' "$TMP/swaks.reject.log"
check "the RCPT itself was accepted (250): the reject came at end of DATA" \
    awk '/^ -> RCPT TO:<nobody@corp.example>/ { getline; ok = /^<-  250/ } END { exit !ok }' "$TMP/swaks.reject.log"
# Postfix logs both ends: the after-filter smtpd refused the RCPT before queueing anything
# (NOQUEUE), and the public smtpd passed mailgrip's reply on (proxy-reject).
wait_for 30 "the rejects in the maillog" eval \
    'grep -q "NOQUEUE: reject: RCPT .*<nobody@corp.example>" "$PF/log/maillog" && grep -q "proxy-reject: END-OF-MESSAGE: 550 5.1.1" "$PF/log/maillog"'
check "maillog: NOQUEUE reject in the after-filter smtpd, proxy-reject END-OF-MESSAGE in the public one" test $? -eq 0
check "nothing queued, delivered or bounced for it (queue $(queue_count), sink +$(($(sink_count) - before)))" \
    test "$(queue_count)" -eq 0 -a "$(sink_count)" -eq "$before" -a "$(maillog_count 'status=bounced')" -eq "$bounced_before"
refused=$(metric mailgrip_messages_total 'outcome="rejected"')
check "mailgrip counted it as rejected by the next hop ($refused)" test "$refused" -eq 1

finish
