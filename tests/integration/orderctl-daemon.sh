#!/bin/bash
# orderctl against the real daemon: a file input and a testkit stage that
# rejects "poison" orders.  status shows the counters, dead-letter
# list/show name the rejecting stage, replay re-injects every entry at that
# stage (which rejects it again, so the entries come back: that proves they
# went through the pipeline), and purge empties the dead-letter file.
. "$(dirname "$0")/lib.sh"

: "${ORDERCTL_BIN:?run through make check}"
unset ORDERCTL_ADMIN ORDERCTL_API ORDERCTL_API_KEY

octl() {    # octl NAME ARGS... : stdout in $T/NAME.out, stderr in $T/NAME.err, status in $RC
    local name=$1; shift
    "$ORDERCTL_BIN" -a "127.0.0.1:$ODPORT" "$@" > "$T/$name.out" 2> "$T/$name.err"
    RC=$?
}
rejects() {  # rejects N : the checker stage has rejected N messages so far
    octl poll status --json
    grep -q '"name":"checker","plugin":"testkit","kind":"transform","in":[0-9]*,"ok":[0-9]*,"retry":0,"reject":'"$1"',' \
        "$T/poll.out"
}
dead() {     # dead N : the pipeline holds N dead letters
    octl poll dead-letter list
    grep -Eq "^orders +$1\$" "$T/poll.out"
}

make_lines "$T/in.ndjson" 1 60
sed -i '0~10 s/}$/,"poison":true}/' "$T/in.ndjson"     # o10, o20, ... o60
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "orders";
  input = { plugin = "file"; path = "in.ndjson"; };
  transforms = ( { plugin = "testkit"; name = "checker"; reject_field = "poison";
                   reject_reason = "poison order refused"; } );
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; fsync = "always"; } ); } );
CONF
start_orderd run "$T/p.conf" || finish
check "admin port found in the log" [ -n "$ODPORT" ]
check "54 good orders published" wait_until 30 has_lines "$T/out.ndjson" 54
check "6 dead letters" wait_until 20 dead 6

octl status status
check "status exits 0" [ "$RC" -eq 0 ]
check "status: ready" grep -q '^orderd [0-9.]*, ready$' "$T/status.out"
check "status: pipeline row" grep -Eq '^orders +0 +0 +- +6$' "$T/status.out"
check "status: checker counters" grep -Eq '^  checker +testkit +transform +60 +54 +0 +6 +0 +0$' "$T/status.out"

octl list dead-letter list orders
check "list exits 0" [ "$RC" -eq 0 ]
check "list: one row per dead letter, with stage and reason" \
    [ "$(grep -Ec '^ +[0-5]  o[1-6]0  checker  20[0-9-]+T[0-9:.]+Z  poison order refused$' "$T/list.out")" -eq 6 ]
check "list: total" grep -q '^orders: 6 dead letters$' "$T/list.out"
octl show dead-letter show orders 0
check "show by index: the entry" sh -c "grep -q '\"stage\": \"checker\"' '$T/show.out' && grep -q '\"poison\": true' '$T/show.out'"
octl show-id dead-letter show orders o30
check "show by id" grep -q '"id": "o30"' "$T/show-id.out"
octl show-none dead-letter show orders 99
check "show of a missing index exits 1" [ "$RC" -eq 1 ]
octl nope dead-letter list nosuch
check "unknown pipeline exits 1" [ "$RC" -eq 1 ]

octl replay dead-letter replay orders --all --batch 4
check "replay exits 0" [ "$RC" -eq 0 ]
check "replay progress" sh -c "grep -q '^replayed 4/6\.\.\.$' '$T/replay.err' && grep -q '^replayed 6/6\.\.\.$' '$T/replay.err'"
check "replay summary" grep -q '^orders: replayed 6 of 6 dead letters, 0 failed, [0-9]* remaining$' "$T/replay.out"
# re-injected at the checker, rejected again: 6 more rejects, 6 dead letters again
check "replayed entries went through the checker again" wait_until 20 rejects 12
check "and came back as dead letters" wait_until 20 dead 6
check "nothing poison was published" [ "$(grep -c poison "$T/out.ndjson")" -eq 0 ]

octl replay-id dead-letter replay orders --id o10
check "replay --id" sh -c "[ $RC -eq 0 ] && grep -q 'replayed 1 of 1 dead letter,' '$T/replay-id.out'"
check "the one entry went through again" wait_until 20 rejects 13

octl purge-no dead-letter purge orders
check "purge without --yes refused" [ "$RC" -eq 64 ]
wait_until 20 dead 6
octl purge-one dead-letter purge orders --id o20 --yes
check "purge --id" grep -q '^orders: purged 1 dead letter, 5 remaining$' "$T/purge-one.out"
octl purge dead-letter purge orders --yes
check "purge all" grep -q '^orders: purged 5 dead letters, 0 remaining$' "$T/purge.out"
check "dead-letter count is 0" dead 0
octl replay-empty dead-letter replay orders --all
check "replay with nothing to do" grep -q 'no dead letters to replay' "$T/replay-empty.out"

stop_orderd
check "daemon exits 0" [ "$ODRC" -eq 0 ]
octl down status
check "stopped daemon: exit 1 and a clear message" sh -c "[ $RC -eq 1 ] && grep -q '^orderctl: cannot reach orderd admin API at 127.0.0.1:$ODPORT: Connection refused$' '$T/down.err'"
finish
