#!/bin/bash
# End to end, shipped config: orderd is killed with SIGKILL five times while
# clients keep POSTing orders (each retried on a connection error, as a
# client would).  Each restart is clean (at most a torn spool tail is cut),
# and after a final restart and drain every order that got a 202 is in the
# snapshots table, with exactly one OrderCreated event per order.
. "$(dirname "$0")/e2e-lib.sh"

e2e_conf
start_receiver sub
e2e_subscribers sub:30
e2e_start run0 || finish

post_orders --count 3000 --threads 16 --pause 0.04 --retry-conn 60 --prefix K --out "$T/answers.txt" &
POSTER=$!
PIDS+=("$POSTER")

kills=0
for i in 1 2 3 4 5; do
    # let some orders in on this run, then kill it mid-load
    n0=$(lines "$T/answers.txt")
    wait_for 20 has_lines "$T/answers.txt" $((n0 + 150)) || break
    sleep "0.$((RANDOM % 3))"
    kill -KILL "$ODPID"; wait "$ODPID" 2>/dev/null
    kills=$((kills + 1))
    e2e_start "run$i" || finish
done
check "killed 5 times under load" [ "$kills" -eq 5 ]
check "load still running at the last kill (kills were mid-load)" kill -0 "$POSTER"
wait "$POSTER"; prc=$?
check "every order got an answer" [ "$prc" -eq 0 ]

# a final clean restart, then drain
stop_orderd
check "clean exit after the crashes" [ "$ODRC" -eq 0 ]
e2e_start final || finish
awk '$2 == 202 { print $1 }' "$T/answers.txt" | LC_ALL=C sort -u > "$T/accepted.txt"
n=$(lines "$T/accepted.txt")
check "most orders accepted ($n)" [ "$n" -ge 2500 ]
check "no answer other than 202 or a dropped connection" \
    [ "$(awk '$2 != 202 && $2 != "err"' "$T/answers.txt" | wc -l)" -eq 0 ]
stored_all() { [ -z "$(LC_ALL=C comm -23 "$T/accepted.txt" <(sql "SELECT id FROM snapshots" | LC_ALL=C sort))" ]; }
check "every 202'd order is stored" wait_for 60 stored_all
LC_ALL=C comm -23 "$T/accepted.txt" <(sql "SELECT id FROM snapshots" | LC_ALL=C sort) | head -n 5
check "snapshots: each order once, created, version 1" \
    [ "$(sql "SELECT count(*) = count(DISTINCT id), min(status = 'created'), min(version = 1) FROM snapshots")" = "1|1|1" ]
check "no order created twice" [ -z "$(sql "SELECT stream FROM events WHERE type = 'OrderCreated' GROUP BY stream HAVING count(*) > 1")" ]
check "one event per stored order" [ "$(sql "SELECT count(*) FROM events")" -eq "$(sql "SELECT count(*) FROM snapshots")" ]
check "nothing stored that was never sent" [ "$(sql "SELECT count(*) FROM snapshots WHERE id NOT LIKE 'K%'")" -eq 0 ]
admin GET /api/status
check "spool drained" wait_for 20 sh -c "curl -s http://127.0.0.1:$ODPORT/api/status | grep -q '\"spool\":{\"bytes\":[0-9]*,\"records\":0'"
check "subscriber got every stored event" wait_for 60 sh -c "[ \"\$(\"$PY\" \"$CLIENT\" received \"$T/sub.ndjson\" | wc -l)\" -eq \"\$(\"$PY\" \"$CLIENT\" sql \"$DB\" 'SELECT count(*) FROM events')\" ]"
check "subscriber got exactly the stored events" cmp -s <(event_ids) <(received sub)
stop_orderd
check "final clean exit" [ "$ODRC" -eq 0 ]

# restarts logged no corruption and no errors (a cut torn tail is fine)
cat "$T"/run*.log "$T/final.log" | grep -iE ' (error|crit|alert|emerg) |corrupt' | grep -viE 'torn' > "$T/bad.txt"
check "no errors or corruption logged across restarts" [ ! -s "$T/bad.txt" ]
head -n 10 "$T/bad.txt"
finish
