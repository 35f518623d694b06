#!/usr/bin/env bash
# Real-Postfix test for mailgrip as a milter.
#
#   smtp-source / swaks -> Postfix smtpd :2525 --smtpd_milters--> mailgrip milter :8891
#     -> Postfix queue -> relayhost smtp-sink :2626 -> $TMP/sink
#
# The Postfix instance is a throw-away one under a temp dir; its milter wiring is
# deploy/postfix/main.cf.milter as shipped (port substituted). mailgrip runs milter-only
# (smtp.listen = "") and archives every class, so each message must leave a copy.
#
# (a) N messages (smtp-source) plus F with forged X-Mailgrip-* fields (swaks; one folded):
#     all arrive, each with exactly one of each X-Mailgrip-* field, no forged field or
#     continuation line left; one archive copy per message with the same decision id; the
#     Postfix queue id (macro i) reaches mailgrip.
# (b) milter.quarantine_review with a policy that reviews everything: Postfix puts the
#     message in its hold queue (milter-hold); released, it arrives tagged "review".
# (c) mailgrip stopped: a message still arrives, untagged (milter_default_action = accept).
#
# Needs root and Postfix (scripts/install-postfix.sh). Usage: tests/postfix/milter.sh
# Environment (defaults): MAILGRIP=target/release/mailgrip  N=500  F=5  TIMEOUT=120 (s, per wait)
#   MODEL_DIR=tests/fixtures/tiny-model  KEEP_TMP=0 (1: keep the temp dir even on success)
#   SMTP_PORT=2525 MILTER_PORT=8891 SINK_PORT=2626 METRICS_PORT=9925
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 2

MAILGRIP=${MAILGRIP:-target/release/mailgrip}
MODEL_DIR=${MODEL_DIR:-tests/fixtures/tiny-model}
N=${N:-500}
F=${F:-5}
TIMEOUT=${TIMEOUT:-120}
KEEP_TMP=${KEEP_TMP:-0}
SMTP_PORT=${SMTP_PORT:-2525}
MILTER_PORT=${MILTER_PORT:-8891}
SINK_PORT=${SINK_PORT:-2626}
METRICS_PORT=${METRICS_PORT:-9925}
HOST=127.0.0.1
PORTS="$SMTP_PORT $MILTER_PORT $SINK_PORT $METRICS_PORT"
SNIPPET=deploy/postfix/main.cf.milter

# shellcheck source=tests/postfix/common.sh
. "$REPO/tests/postfix/common.sh"

preflight smtp-source smtp-sink swaks
[ -f "$SNIPPET" ] || die "$SNIPPET missing"
make_instance milter
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- Postfix instance
{
    base_main_cf milter.sh
    echo "# --- shipped snippet: $SNIPPET ---"
    sed -e "s/127\.0\.0\.1:8891/$HOST:$MILTER_PORT/g" "$SNIPPET"
} >"$PF/etc/main.cf"
{
    echo "$HOST:$SMTP_PORT inet n - n - - smtpd"
    base_master_cf milter.sh
} >"$PF/etc/master.cf"

wired() {
    [ "$(postconf -c "$PF/etc" -h smtpd_milters)" = "inet:$HOST:$MILTER_PORT" ] &&
        [ "$(postconf -c "$PF/etc" -h milter_default_action)" = accept ] &&
        [ -z "$(postconf -c "$PF/etc" -h content_filter)" ]
}
check "Postfix config built from $SNIPPET (smtpd_milters inet:$HOST:$MILTER_PORT, default action accept)" wired ||
    true
postfix_check_and_start
wait_for 30 "Postfix on :$SMTP_PORT" banner_220 "$SMTP_PORT" 2>/dev/null &&
    wait_for 30 "smtp-sink on :$SINK_PORT" banner_220 "$SINK_PORT" 2>/dev/null
check "Postfix (:$SMTP_PORT) and smtp-sink (:$SINK_PORT) up" test $? -eq 0 ||
    stop_here "the Postfix stack is not up (see $PF/log/maillog)"

# ---------------------------------------------------------------- mailgrip, milter only
check "mailgrip serve starts milter-only on :$MILTER_PORT" start_mailgrip \
    MAILGRIP__SMTP__LISTEN= \
    MAILGRIP__MILTER__LISTEN="$HOST:$MILTER_PORT" \
    MAILGRIP__POLICY__STRATEGY=classes \
    MAILGRIP__ARCHIVE__CLASSES=functioneel,prive,niet-functioneel,personeelsvertrouwelijk,partijpolitiek ||
    stop_here "mailgrip did not start"

# ---------------------------------------------------------------- (a) N + F messages
echo "--- (a) $N messages (smtp-source) and $F with forged X-Mailgrip-* fields (swaks) through the milter"
# Postfix warnings from here on count (the readiness probe above ran before mailgrip was up).
log_mark=$(wc -l <"$PF/log/maillog")
t0=$(now)
timeout "$TIMEOUT" smtp-source -N -s 10 -m "$N" -l 2048 -S "mailgrip milter burst" \
    -f sender@x.example -t "burst1@corp.example" "$HOST:$SMTP_PORT" >"$TMP/smtp-source.log" 2>&1
check "smtp-source: Postfix accepted all $N messages (each waited for the milter)" test $? -eq 0
t_sent=$(elapsed "$t0")

swaks_fail=0
for k in $(seq 1 "$F"); do
    # A pre-tagged message: four forged fields, one folded over two lines, mixed case, one
    # name twice (deletions address the n-th field of a name).
    # Every forged line carries the mark FORGED, so any leftover is found.
    printf '%s\r\n' \
        "X-Mailgrip-Class: functioneel FORGED" \
        "From: mallory@x.example" \
        "To: forged$k@corp.example" \
        "x-mailgrip-scores: functioneel=1.0 FORGED;" \
        "  prive=0.0 FORGED-CONTINUATION" \
        "Subject: vervalst $k" \
        "X-MAILGRIP-ACTION: archive FORGED" \
        "X-Mailgrip-Class: tweede FORGED" \
        "" \
        "Gewoon archiveren, zegt de afzender." \
        "X-Mailgrip-Class: in de body blijft dit staan" >"$TMP/forged.eml"
    timeout 30 swaks --server "$HOST:$SMTP_PORT" --from mallory@x.example --to "forged$k@corp.example" \
        --data @"$TMP/forged.eml" >>"$TMP/swaks.log" 2>&1 || swaks_fail=$((swaks_fail + 1))
done
check "swaks: Postfix accepted all $F forged messages ($swaks_fail failed)" test "$swaks_fail" -eq 0
total=$((N + F))
wait_for "$TIMEOUT" "$total messages at the sink" eval '[ "$(sink_count)" -ge "$total" ]'
wait_for "$TIMEOUT" "an empty Postfix queue" eval '[ "$(queue_count)" -eq 0 ]'
t_a=$(elapsed "$t0")
check "mailgrip still running" mg_alive
sleep 0.5
scan_sink
info "queued by Postfix in ${t_sent}s (through the milter); $(sink_count) at the sink after ${t_a}s"

burst=$(awk '$1 ~ /^[0-9]+burst1$/' "$TMP/delivered.txt" | sort -u | wc -l)
forged_got=$(awk '$1 ~ /^forged[0-9]+$/' "$TMP/delivered.txt" | sort -u | wc -l)
check "all $N smtp-source messages arrived ($burst distinct)" test "$burst" -eq "$N"
check "all $F forged messages arrived ($forged_got distinct)" test "$forged_got" -eq "$F"
check "no duplicates and nothing foreign ($(sink_count) files for $total messages)" test "$(sink_count)" -eq "$total"
bad=$(awk '$2 != 1 || $3 != 1 || $4 != 1 || $5 != 1 || $6 != 1 || $7 != 6' "$TMP/delivered.txt" | wc -l)
check "every message tagged exactly once: one each of Class/Scores/Model/Id/Action (+Policy), nothing else ($bad not)" \
    test "$bad" -eq 0
[ "$bad" -gt 0 ] && info "e.g.: $(awk '$2 != 1 || $7 != 6' "$TMP/delivered.txt" | head -3 | tr '\n' ';')"
leftover=$(awk '$9 != 0' "$TMP/delivered.txt" | wc -l)
check "forged fields gone, continuation lines included ($leftover messages still carry FORGED)" test "$leftover" -eq 0
sample=$(grep -l -m1 '^Subject: vervalst 1' -r "$SINK" | head -1)
if [ -n "$sample" ]; then
    info "a forged message as delivered (header):"
    awk '{ sub(/\r$/, "") } $0 == "" { exit } { print "         " $0 }' "$sample"
    check "the body of a forged message is untouched" grep -q '^X-Mailgrip-Class: in de body blijft dit staan' "$sample"
else
    fail "forged message 1 not found at the sink"
fi

# Archive: one copy per message, with the id the delivered message carries.
find "$TMP/archive" -name '*.eml' -printf '%f\n' | sed 's/\.eml$//' | sort >"$TMP/archived.ids"
awk '{ print $8 }' "$TMP/delivered.txt" | sort >"$TMP/delivered.ids"
archived=$(wc -l <"$TMP/archived.ids")
check "one archive copy per message ($archived for $total)" test "$archived" -eq "$total"
check "archive ids = X-Mailgrip-Id of the delivered messages" cmp -s "$TMP/archived.ids" "$TMP/delivered.ids"
# The sidecar keeps the envelope; the queue id is its ["IDENT", "..."] pair.
qid=$(find "$TMP/archive" -name '*.json' -exec cat {} + 2>/dev/null | tr -d ' \n' |
    grep -o '"IDENT","[^"]*"' | head -1 | cut -d'"' -f4)
check "the Postfix queue id (macro i) reached mailgrip: ${qid:-none} in a sidecar and in the maillog" \
    eval '[ -n "$qid" ] && grep -q "$qid: " "$PF/log/maillog"'
accepted=$(metric mailgrip_messages_total 'outcome="accepted"')
milter_errors=$(metric mailgrip_errors_total 'stage="milter"')
check "metrics: $accepted messages accepted by the milter, $milter_errors milter errors" \
    test "$accepted" -eq "$total" -a "$milter_errors" -eq 0
milter_warnings=$(tail -n +"$((log_mark + 1))" "$PF/log/maillog" | grep -c -i 'warning:.*milter')
check "no milter warnings in the maillog ($milter_warnings)" test "$milter_warnings" -eq 0

# ---------------------------------------------------------------- (b) quarantine
echo "--- (b) milter.quarantine_review = true, a policy that reviews everything: Postfix holds the mail"
stop_pid "$MG_PID"
MG_PID=
# Review costs nothing, every other action something: every message is held for review.
check "mailgrip restarts with milter.quarantine_review = true" start_mailgrip \
    MAILGRIP__SMTP__LISTEN= \
    MAILGRIP__MILTER__LISTEN="$HOST:$MILTER_PORT" \
    MAILGRIP__MILTER__QUARANTINE_REVIEW=true \
    MAILGRIP__POLICY__COSTS__FUNCTIONEEL__REVIEW=0 \
    MAILGRIP__POLICY__COSTS__PRIVE__REVIEW=0 \
    MAILGRIP__POLICY__COSTS__NIET_FUNCTIONEEL__REVIEW=0 \
    MAILGRIP__POLICY__COSTS__PERSONEELSVERTROUWELIJK__REVIEW=0 \
    MAILGRIP__POLICY__COSTS__PARTIJPOLITIEK__REVIEW=0 ||
    stop_here "mailgrip did not restart"
before=$(sink_count)
timeout 30 swaks --server "$HOST:$SMTP_PORT" --from a@x.example --to held1@corp.example \
    --header "Subject: twijfelgeval" >>"$TMP/swaks.log" 2>&1
check "Postfix accepts the message" test $? -eq 0
held() { [ "$(find "$PF/spool/hold" -type f 2>/dev/null | wc -l)" -eq 1 ]; }
wait_for "$TIMEOUT" "the message in the hold queue" held
check "it is in Postfix's hold queue, not delivered (sink +$(($(sink_count) - before)))" \
    eval 'held && [ "$(sink_count)" -eq "$before" ]'
wait_for 30 "milter-hold in the maillog" eval \
    'grep -q "milter-hold: END-OF-MESSAGE .*milter triggers HOLD action.*to=<held1@corp.example>" "$PF/log/maillog"'
check "maillog: milter-hold (milter triggers HOLD action) for it" test $? -eq 0
timeout 30 script -qec "postsuper -c $PF/etc -H ALL" /dev/null >/dev/null 2>&1
wait_for "$TIMEOUT" "the released message at the sink" eval '[ "$(sink_count)" -gt "$before" ]'
scan_sink
review=$(awk '$1 == "held1"' "$TMP/delivered.txt")
sample=$(grep -l -r '^X-Rcpt-Args: <held1@corp.example>' "$SINK" | head -1)
check "released with postsuper -H, it arrives tagged once with X-Mailgrip-Action: review" \
    eval '[ -n "$sample" ] && echo "$review" | awk '\''$2 == 1 && $7 == 6 { f = 1 } END { exit !f }'\'' && grep -q "^X-Mailgrip-Action: review" "$sample"'
check "its copy waits in the review queue" eval '[ "$(find "$TMP/review" -name "*.eml" | wc -l)" -eq 1 ]'

# ---------------------------------------------------------------- (c) mailgrip down
echo "--- (c) mailgrip stopped: milter_default_action = accept delivers untagged"
stop_pid "$MG_PID"
MG_PID=
before=$(sink_count)
timeout 30 swaks --server "$HOST:$SMTP_PORT" --from a@x.example --to down1@corp.example \
    --header "Subject: mailgrip is down" >>"$TMP/swaks.log" 2>&1
check "Postfix accepts mail while mailgrip is down" test $? -eq 0
wait_for "$TIMEOUT" "the message at the sink" eval '[ "$(sink_count)" -gt "$before" ]'
scan_sink
down=$(awk '$1 == "down1" { print $7 }' "$TMP/delivered.txt")
check "it arrived, untagged (X-Mailgrip-* fields: ${down:-missing})" test "${down:-x}" = 0

echo "--- summary: $total messages through the milter in ${t_a}s ($(awk -v n="$total" -v t="$t_a" 'BEGIN { printf "%.0f", n / t }') msg/s end to end)"
finish
