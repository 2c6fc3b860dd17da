#!/bin/bash
# orderctl against tests/tools/fake_admin.py (the admin API and Order API
# shapes, with an in-memory dead-letter list): status table, dead-letter
# list/show/replay/purge, submit summaries and exit statuses, an unreachable
# daemon, usage errors.  orderctl-daemon.sh runs it against the real daemon.
. "$(dirname "$0")/lib.sh"

: "${ORDERCTL_BIN:?run through make check}"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
unset ORDERCTL_ADMIN ORDERCTL_API ORDERCTL_API_KEY

# start_fake NAME ARGS... : ports in $AP (admin) and $OP (orders)
start_fake() {
    local name=$1; shift
    "$PY" "$TESTS_SRCDIR/tools/fake_admin.py" "$@" > "$T/$name.ports" 2> "$T/$name.log" &
    PIDS+=($!)
    FAKEPID=$!
    wait_until 10 grep -q '^ORDERS ' "$T/$name.ports" || { fail "$name did not start"; finish; }
    AP=$(sed -n 's/^ADMIN //p' "$T/$name.ports")
    OP=$(sed -n 's/^ORDERS //p' "$T/$name.ports")
}
stop_fake() { kill -TERM "$FAKEPID" 2>/dev/null; wait "$FAKEPID" 2>/dev/null; }

# octl NAME ARGS... : runs orderctl, stdout in $T/NAME.out, stderr in $T/NAME.err, status in $RC
octl() {
    local name=$1; shift
    "$ORDERCTL_BIN" "$@" > "$T/$name.out" 2> "$T/$name.err"
    RC=$?
}
out_has() { grep -q -- "$2" "$T/$1.out"; }
err_has() { grep -q -- "$2" "$T/$1.err"; }

start_fake fake --dead 523 --stuck 2 --replayed "$T/replayed.txt" --log "$T/orders.log" --api-key s3cret
export ORDERCTL_ADMIN=127.0.0.1:$AP

# ---- status
octl status status
check "status exits 0" [ "$RC" -eq 0 ]
check "status names the version" out_has status '^orderd 0.1.0, ready'
check "status pipeline row (in flight, queue, spool, dead letters)" \
    grep -Eq '^orders +3 +1 +5 rec / 1.5 MiB +523$' "$T/status.out"
check "status shows a pipeline without spool" grep -Eq '^audit +0 +0 +- +0$' "$T/status.out"
check "status stage counters" grep -Eq '^  validate +validate +transform +1200 +1177 +4 +23 +0 +0$' "$T/status.out"
octl status-json status --json
check "status --json is the API's JSON" out_has status-json '"dead_letters": 523'
octl status-a -a "127.0.0.1:$AP" status
check "-a overrides \$ORDERCTL_ADMIN" [ "$RC" -eq 0 ]

# ---- dead-letter list / show
octl counts dead-letter list
check "list without pipeline: counts" grep -Eq '^orders +523$' "$T/counts.out"
octl list dead-letter list orders
check "list exits 0" [ "$RC" -eq 0 ]
check "list has every entry (paged)" [ "$(grep -c ' dl-' "$T/list.out")" -eq 523 ]
check "list row: index, id, stage, ISO time, truncated reason" \
    grep -Eq "^ +0  dl-0001  validate  2026-11-23T23:16:11\.783Z  field 'customerId' is required by the order schema and wa\.\.\.$" "$T/list.out"
check "list total line" out_has list '^orders: 523 dead letters$'
octl list3 dead-letter list orders --limit 3
check "list --limit" [ "$(grep -c ' dl-' "$T/list3.out")" -eq 3 ]
octl show dead-letter show orders 4
check "show by index" out_has show '"id": "dl-0005"'
check "show pretty-prints" out_has show '^  "body": {'
octl show-id dead-letter show orders dl-0300
check "show by id" out_has show-id '"index": 299'
octl show-none dead-letter show orders 9999
check "show missing index exits 1" [ "$RC" -eq 1 ]
check "show missing index quotes the problem" err_has show-none 'Not Found (HTTP 404): no dead letter 9999'
octl show-noid dead-letter show orders dl-nope
check "show missing id exits 1" [ "$RC" -eq 1 ]
octl list-nope dead-letter list nope
check "unknown pipeline exits 1 with the detail" sh -c "[ $RC -eq 1 ] && grep -q \"no pipeline named 'nope'\" '$T/list-nope.err'"

# ---- replay
octl replay-ids dead-letter replay orders --id dl-0001 --id dl-0002
check "replay --id exits 0" [ "$RC" -eq 0 ]
check "replay --id replays exactly those" [ "$(sort "$T/replayed.txt" | tr '\n' ' ')" = "dl-0001 dl-0002 " ]
check "replay --id summary" out_has replay-ids 'replayed 2 of 2 dead letters, 0 failed, 521 remaining'
octl replay dead-letter replay orders --all --batch 100
check "replay --all exits 1 when some failed" [ "$RC" -eq 1 ]
check "replay progress lines" sh -c "grep -q '^replayed 100/521\.\.\.$' '$T/replay.err' && grep -q '^replayed 521/521\.\.\.$' '$T/replay.err'"
check "replay in batches of --batch" [ "$(grep -c '^replayed ' "$T/replay.err")" -eq 6 ]
check "replay summary" out_has replay 'replayed 519 of 521 dead letters, 2 failed, 2 remaining'
check "every replayable entry replayed once" [ "$(sort -u "$T/replayed.txt" | wc -l)" -eq 521 ] && \
    check "no entry replayed twice" [ "$(wc -l < "$T/replayed.txt")" -eq 521 ]

# ---- purge
octl purge-no dead-letter purge orders
check "purge without --yes refused (64)" [ "$RC" -eq 64 ]
check "purge refusal says --yes" err_has purge-no 'add --yes'
octl counts2 dead-letter list --json
check "nothing purged without --yes" out_has counts2 '"pipeline": "orders", "count": 2'
octl purge-one dead-letter purge orders --id dl-0522 --yes --json
check "purge --id (--json totals)" out_has purge-one '^{"pipeline":"orders","purged":1,"remaining":1}$'
octl purge dead-letter purge orders -y
check "purge all" sh -c "[ $RC -eq 0 ] && grep -q 'purged 1 dead letter, 0 remaining' '$T/purge.out'"
octl replay-empty dead-letter replay orders --all
check "replay of an empty pipeline is fine" sh -c "[ $RC -eq 0 ] && grep -q 'no dead letters to replay' '$T/replay-empty.out'"

# ---- submit
{
    for i in $(seq 1 200); do
        case $i in
            7|150) printf '{"id":"o%d","bad":true}\n' "$i" ;;
            9) printf 'not json\n' ;;
            50) printf '\n' ;;
            *) printf '{"id":"o%d"}\n' "$i" ;;
        esac
    done
} > "$T/orders.ndjson"
API="--api http://127.0.0.1:$OP"
octl sub-noauth submit "$T/orders.ndjson" $API
check "submit without the key: all rejected 401, exit 2" sh -c "[ $RC -eq 2 ] && grep -q 'rejected 199 (by status: 401 x199)' '$T/sub-noauth.out'"
check "submit lists at most 20 failing lines" [ "$(grep -c '^line ' "$T/sub-noauth.out")" -eq 20 ]
: > "$T/orders.log"
octl sub submit "$T/orders.ndjson" $API --api-key s3cret --concurrency 4 --idempotency
check "submit with rejections exits 2" [ "$RC" -eq 2 ]
check "submit summary" out_has sub '^submitted 199, accepted 196, rejected 3 (by status: 400 x1, 422 x2), failed 0$'
check "submit names failing lines with status and detail" sh -c "grep -q '^line 7: 422 order o7 failed validation$' '$T/sub.out' && grep -q '^line 9: 400 the body is not a JSON object$' '$T/sub.out'"
check "submit progress on stderr" err_has sub '^submitted 199/199$'
check "submit sends the bearer key" [ "$(grep -c '"auth": "Bearer s3cret"' "$T/orders.log")" -eq 199 ]
check "submit skips blank lines" [ "$(wc -l < "$T/orders.log")" -eq 199 ]
check "idempotency key is line number + hash" grep -q '"idem": "orderctl-200-[0-9a-f]\{16\}"' "$T/orders.log"
curl -s "http://127.0.0.1:$OP/__orders" > "$T/created1.json"
printf 's3cret\n' > "$T/key"
octl sub-again submit - $API --api-key-file "$T/key" --idempotency < "$T/orders.ndjson"
check "re-run with the same keys: same summary" out_has sub-again 'accepted 196, rejected 3'
curl -s "http://127.0.0.1:$OP/__orders" > "$T/created2.json"
check "re-run created nothing twice" sh -c "grep -q '\"created\": 196,' '$T/created1.json' && grep -q '\"created\": 196,' '$T/created2.json'"
grep -v 'bad\|not json' "$T/orders.ndjson" > "$T/good.ndjson"
octl sub-good submit "$T/good.ndjson" $API --api-key s3cret --concurrency 1
check "all accepted exits 0" sh -c "[ $RC -eq 0 ] && grep -q '^submitted 196, accepted 196, rejected 0, failed 0$' '$T/sub-good.out'"
octl sub-missing submit "$T/nonexistent.ndjson" $API
check "missing file exits 1" sh -c "[ $RC -eq 1 ] && grep -q 'cannot open' '$T/sub-missing.err'"

# ---- transport failures: nothing listening
stop_fake
octl down status
check "unreachable daemon exits 1" [ "$RC" -eq 1 ]
check "unreachable daemon message" err_has down "^orderctl: cannot reach orderd admin API at 127.0.0.1:$AP: Connection refused$"
octl down-dl dead-letter list orders
check "unreachable daemon: dead-letter exits 1" [ "$RC" -eq 1 ]
octl sub-down submit "$T/good.ndjson" $API
check "submit to nothing exits 1" sh -c "[ $RC -eq 1 ] && grep -q 'failed 196$' '$T/sub-down.out' && grep -q 'not sent: Connection refused' '$T/sub-down.out'"

# ---- usage errors: 64, nothing sent
for args in "" "bogus" "--frob status" "status extra" "status --all" "dead-letter" "dead-letter frob x" \
            "dead-letter show orders" "dead-letter replay orders" "dead-letter replay orders --all --id x" \
            "dead-letter replay orders --all --batch 0" "dead-letter list a b" "submit" "submit a b" \
            "submit f --api https://x" "submit f --api-key a --api-key-file b" "-a nocolon status" "status -a"; do
    # shellcheck disable=SC2086
    octl usage $args
    check "usage error '$args' exits 64" [ "$RC" -eq 64 ]
    check "usage error '$args' explains" err_has usage "Try 'orderctl --help'"
done
octl help --help
check "--help exits 0 and lists commands" sh -c "[ $RC -eq 0 ] && grep -q 'dead-letter replay' '$T/help.out'"
octl version --version
check "--version" out_has version '^orderctl (orderd) [0-9]'
finish
