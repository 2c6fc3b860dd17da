#!/bin/bash
# End to end, shipped config, three webhook subscribers:
# 1. one answers 503 for a while: the other two get every event meanwhile,
#    and the third gets them all within 30 s of coming back;
# 2. with max_attempts = 3 and a subscriber answering 503 for good, its
#    events are dead-lettered (pipeline dead-letter area, tagged with the
#    subscriber) with the reason, the others get everything, and a replay
#    once it is healthy delivers them to that subscriber only.
. "$(dirname "$0")/e2e-lib.sh"

e2e_conf
start_receiver a
start_receiver b
start_receiver c --status 503
e2e_subscribers a:30 b:30 c:100000
e2e_start run1 || finish

post_orders --count 200 --threads 8 --prefix A --out "$T/answers.txt"
check "200 accepted" [ "$(grep -c ' 202 ' "$T/answers.txt")" -eq 200 ]
check "a got all 200 while c is down" wait_for 30 has_received a 200
check "b got all 200 while c is down" wait_for 30 has_received b 200
check "c is being retried meanwhile" wait_for 10 sh -c "[ \$(grep -c '\"status\": 503' '$T/c.ndjson') -ge 3 ]"
check "c delivered nothing yet" [ "$(received_count c)" -eq 0 ]
check "c's backlog is all 200" [ "$(metric 'orderd_plugin_webhook_backlog_c{')" = 200 ]
admin GET /api/status
check "nothing dead-lettered while c retries" [ "$(jq_body "$T/adm.body" '[p["dead_letters"] for p in j["pipelines"]]')" = "[0, 0]" ]

receiver_control c '{"status": 200}'
t0=$(date +%s)
check "c gets all 200 within 30 s of coming back" wait_for 30 has_received c 200
echo "c caught up in $(( $(date +%s) - t0 )) s"
event_ids > "$T/events.txt"
for r in a b c; do check "$r: exactly the stored events" cmp -s "$T/events.txt" <(received "$r"); done
# deliveries NAME [STATUS [SUBJECT]] : events in the POSTs receiver NAME
# answered 2xx (or STATUS), repeats included, whose subject contains SUBJECT;
# then the number of those POSTs
deliveries() {
    "$PY" - "$T/$1.ndjson" "${2:-2xx}" "${3:-}" <<'PY'
import json, sys
path, status, subject = sys.argv[1:]
n = posts = 0
for line in open(path):
    r = json.loads(line)
    st = r.get("status", 0)
    if r.get("method") != "POST" or not (200 <= st < 300 if status == "2xx" else st == int(status)):
        continue
    b = json.loads(r["body"])
    evs = [e for e in (b if isinstance(b, list) else [b]) if subject in e.get("subject", "")]
    n += len(evs)
    posts += 1 if evs else 0
print(n, posts)
PY
}
read -r a_events a_posts <<< "$(deliveries a)"
check "a: each event once (c's outage cost a nothing): $a_events events in $a_posts POSTs" [ "$a_events" -eq 200 ]
read -r c_events c_posts <<< "$(deliveries c)"
check "c's backlog came back batched: $c_events events in $c_posts POSTs (batch_max 100)" \
    [ "$c_events" -eq 200 -a "$c_posts" -ge 2 -a "$c_posts" -le 10 ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]

# --- 2: c down for good, max_attempts = 3
receiver_control c '{"status": 503}'
e2e_subscribers a:30 b:30 c:3
e2e_start run2 || finish
post_orders --count 50 --threads 4 --prefix Z --out "$T/answers2.txt"
check "50 accepted" [ "$(grep -c ' 202 ' "$T/answers2.txt")" -eq 50 ]
check "a got the 50 new events" wait_for 30 has_received a 250
check "b got the 50 new events" wait_for 30 has_received b 250
dl_count() { admin GET "/api/deadletter/orders?limit=1000"; jq_body "$T/adm.body" 'j["total"]'; }
check "c's 50 events dead-lettered" wait_for 30 sh -c "[ \"\$(curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders?limit=1000' | grep -o '\"stage\":\"webhook\"' | wc -l)\" -eq 50 ]"
admin GET "/api/deadletter/orders?limit=1000"; cp "$T/adm.body" "$T/dl.json"
check "exactly 50 dead letters" [ "$(jq_body "$T/dl.json" 'j["total"]')" = 50 ]
check "each tagged with the subscriber" [ "$(jq_body "$T/dl.json" 'sum(e["properties"].get("webhook.subscriber") == "c" for e in j["entries"])')" = 50 ]
check "each with the reason (subscriber, status, attempts)" \
    [ "$(jq_body "$T/dl.json" 'sum("subscriber c" in e["reason"] and "503" in e["reason"] and "3 attempt" in e["reason"] for e in j["entries"])')" = 50 ]
check "the dead letters are the Z orders' events" \
    cmp -s <(jq_body "$T/dl.json" '"\n".join(sorted(e["id"] for e in j["entries"]))') \
           <(sql "SELECT id FROM events WHERE stream LIKE 'Z%' ORDER BY id")
read -r z_tries _ <<< "$(deliveries c 503 orders/Z)"
check "c was tried exactly 3 times per event ($z_tries tries of 50 events)" [ "$z_tries" -eq 150 ]
check "c delivered none of them" [ "$(received_count c)" -eq 200 ]
check "c's backlog is empty (dead letters left the queue)" wait_for 10 sh -c "[ \"\$(curl -s http://127.0.0.1:$ODPORT/metrics | sed -n 's/^orderd_plugin_webhook_backlog_c{[^}]*} //p')\" = 0 ]"

# replay once c is healthy: only c receives them again
receiver_control c '{"status": 200}'
admin POST /api/deadletter/orders/replay '{"limit":100}'
check "replay answered 200" [ "$ADM_STATUS" = 200 ]
cat "$T/adm.body"; echo
check "c received the replayed events" wait_for 30 has_received c 250
event_ids > "$T/events.txt"
check "c: exactly the stored events" cmp -s "$T/events.txt" <(received c)
check "dead-letter area empty after the replay" wait_for 10 sh -c "[ \"\$(curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders' | grep -o '\"total\":[0-9]*')\" = '\"total\":0' ]"
sleep 1   # give a wrong fan-out of the replay time to show
check "a did not get the replay (each event delivered once)" [ "$(deliveries a | cut -d' ' -f1)" -eq 250 ]
check "b did not get the replay (each event delivered once)" [ "$(deliveries b | cut -d' ' -f1)" -eq 250 ]
check "the replay stored nothing twice" [ "$(sql "SELECT count(*) FROM events")" -eq 250 ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
finish
