#!/bin/bash
# End to end under load, shipped config: 1,000 orders POSTed by 32 concurrent
# clients all get 202, each ends in the snapshots table exactly once
# (created, version 1) with exactly one OrderCreated event, every event
# reaches each of three webhook subscribers, and the projections pipeline
# sees every event; GET /orders/{id} answers the snapshot.
. "$(dirname "$0")/e2e-lib.sh"

N=1000
e2e_conf
for r in billing audit crm; do start_receiver "$r"; done
e2e_subscribers billing:30 audit:30 crm:30
e2e_start run || finish

t0=$(date +%s)
post_orders --count "$N" --threads 32 --prefix L --out "$T/answers.txt"
check "every POST answered" [ "$(lines "$T/answers.txt")" -eq "$N" ]
check "all 1000 answered 202" [ "$(grep -c ' 202 ' "$T/answers.txt")" -eq "$N" ]

check "all orders stored" wait_for 60 sh -c "[ \"\$(\"$PY\" \"$CLIENT\" sql \"$DB\" 'SELECT count(*) FROM snapshots')\" -ge $N ]"
check "snapshots: exactly the 1000 orders, created, version 1" \
    [ "$(sql "SELECT count(*), count(DISTINCT id), sum(status = 'created'), sum(version = 1), min(id LIKE 'L%') FROM snapshots")" = "$N|$N|$N|$N|1" ]
check "snapshot ids are the ids that got 202" \
    cmp -s <(awk '$2 == 202 { print $1 }' "$T/answers.txt" | LC_ALL=C sort) <(sql "SELECT id FROM snapshots" | LC_ALL=C sort)
check "events: one OrderCreated per order, nothing else" \
    [ "$(sql "SELECT count(*), count(DISTINCT stream), sum(type = 'OrderCreated'), sum(version = 1) FROM events")" = "$N|$N|$N|$N" ]

event_ids > "$T/events.txt"
for r in billing audit crm; do
    check "$r received all $N events" wait_for 60 has_received "$r" "$N"
    check "$r received exactly the stored events" cmp -s "$T/events.txt" <(received "$r")
done
check "webhook backlog drained" wait_for 10 sh -c "curl -s http://127.0.0.1:$ODPORT/metrics | grep -q '^orderd_plugin_webhook_backlog{pipeline=\"orders\",stage=\"webhook\"} 0$'"
check "projections wrote every event" wait_for 30 has_lines "$T/state/events.ndjson" "$N"
check "projections: each event once" [ "$(sed -n 's/^{"id":"\(evt-[0-9a-f]*\)".*/\1/p' "$T/state/events.ndjson" | LC_ALL=C sort -u | wc -l)" -eq "$N" ]

# CloudEvents as the shipped config promises: structured, batched (an array
# of events) when several were waiting, a single event otherwise
head -n 1 "$T/billing.ndjson" > "$T/one.json"
ce_first='(lambda b: b[0] if isinstance(b, list) else b)(json.loads(j["body"]))'
check "CloudEvents 1.0" [ "$(jq_body "$T/one.json" "$ce_first[\"specversion\"] + \" \" + $ce_first[\"type\"] + \" \" + $ce_first[\"source\"]")" = "1.0 OrderCreated /orderd/orders" ]

api GET /orders/L17
check "GET /orders/L17 200" [ "$API_STATUS" = 200 ]
check "GET answers the snapshot" [ "$(jq_body "$T/api.body" '"%s %s %s %s" % (j["id"], j["status"], j["version"], j["customerId"])')" = "L17 created 1 c-3" ]
check "GET snapshot equals the stored row" [ "$(jq_body "$T/api.body" 'json.dumps(j, sort_keys=True)')" = \
    "$("$PY" -c 'import json,sys; print(json.dumps(json.loads(sys.stdin.read()), sort_keys=True))' <<< "$(sql "SELECT body FROM snapshots WHERE id = 'L17'")")" ]
api GET /orders/nope-404
check "unknown order 404" [ "$API_STATUS" = 404 ]

admin GET /api/status
check "no dead letters" [ "$(jq_body "$T/adm.body" '[p["dead_letters"] for p in j["pipelines"]]')" = "[0, 0]" ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
check "no errors logged" sh -c "! grep -E ' (error|crit|alert|emerg) ' '$T/run.log'"
echo "load phase took $(( $(date +%s) - t0 ))s"
finish
