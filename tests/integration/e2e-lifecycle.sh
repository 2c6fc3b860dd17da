#!/bin/bash
# End to end, shipped config: Idempotency-Key replays answer the same and
# store one order; a reused key with another body is 422; a redelivered
# command (same key, or the same order posted twice) makes one event; the
# lifecycle create -> pay -> ship -> deliver over HTTP ends delivered at
# version 4, and an invalid transition is dead-lettered with its reason.
. "$(dirname "$0")/e2e-lib.sh"

e2e_conf
start_receiver sub
e2e_subscribers sub:30
e2e_start run || finish

events_of() { sql "SELECT type FROM events WHERE stream = '$1' ORDER BY version" | paste -sd, -; }
status_is() { api GET "/orders/$1"; [ "$API_STATUS" = 200 ] && [ "$(jq_body "$T/api.body" '"%s %s" % (j["status"], j["version"])')" = "$2" ]; }
dead_letters() { admin GET "/api/deadletter/orders?limit=1000"; cp "$T/adm.body" "$T/dl.json"; }
dl_reason_for() {   # dl_reason_for ORDER_ID COMMAND : the reasons, one a line
    dead_letters
    jq_body "$T/dl.json" "'\n'.join(e['reason'] for e in j['entries'] if e['properties'].get('order_id') == '$1' and e['properties'].get('command') == '$2')"
}

# --- Idempotency-Key on create
api POST /orders "$(order_json I1)" -H 'Idempotency-Key: key-1'
s1=$API_STATUS; cp "$T/api.body" "$T/first.body"
api POST /orders "$(order_json I1)" -H 'Idempotency-Key: key-1'
check "same key twice: 202 both times" [ "$s1 $API_STATUS" = "202 202" ]
check "same key twice: same body" cmp -s "$T/first.body" "$T/api.body"
api POST /orders "$(order_json I1 | sed 's/"qty":2/"qty":3/')" -H 'Idempotency-Key: key-1'
check "same key, other body: 422" [ "$API_STATUS" = 422 ]

# a key without a client id: the id is derived from the key, so a retry is the same order
api POST /orders '{"customerId":"c-9","currency":"USD","items":[{"sku":"a","qty":1,"price":1}]}' -H 'Idempotency-Key: key-2'
id2=$(jq_body "$T/api.body" 'j["id"]'); s1=$API_STATUS
api POST /orders '{"customerId":"c-9","currency":"USD","items":[{"sku":"a","qty":1,"price":1}]}' -H 'Idempotency-Key: key-2'
check "generated id stable under the same key" [ "$s1 $API_STATUS $(jq_body "$T/api.body" 'j["id"]')" = "202 202 $id2" ]

check "I1 stored" wait_for 20 status_is I1 "created 1"
check "key-2 order stored" wait_for 20 status_is "$id2" "created 1"
check "I1: one OrderCreated" [ "$(events_of I1)" = OrderCreated ]
check "key-2 order: one OrderCreated" [ "$(events_of "$id2")" = OrderCreated ]

# --- the same command twice with one Idempotency-Key
api POST /orders/I1/pay '{"method":"card"}' -H 'Idempotency-Key: pay-1'
s1=$API_STATUS; cp "$T/api.body" "$T/first.body"
api POST /orders/I1/pay '{"method":"card"}' -H 'Idempotency-Key: pay-1'
check "pay twice with one key: 202 both" [ "$s1 $API_STATUS" = "202 202" ]
check "pay twice with one key: same answer" cmp -s "$T/first.body" "$T/api.body"
check "I1 paid" wait_for 20 status_is I1 "paid 2"
check "I1: exactly one OrderPaid" [ "$(events_of I1)" = OrderCreated,OrderPaid ]

# --- the same order (client id) posted twice without a key: one order
api POST /orders "$(order_json D1)"; s1=$API_STATUS
api POST /orders "$(order_json D1)"
check "same order twice: both accepted at the edge" [ "$s1 $API_STATUS" = "202 202" ]
check "D1 stored" wait_for 20 status_is D1 "created 1"
check "the second create is dead-lettered as a duplicate" \
    wait_for 20 sh -c "curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders?limit=1000' | grep -q 'order D1 already exists'"
check "D1: exactly one OrderCreated" [ "$(events_of D1)" = OrderCreated ]

# --- the lifecycle, as a client does it: each command right after the last 202
api POST /orders "$(order_json LC1)"; s=$API_STATUS
for c in pay ship deliver; do api POST "/orders/LC1/$c" '{}'; s="$s $API_STATUS"; done
check "lifecycle commands accepted" [ "$s" = "202 202 202 202" ]
check "LC1 delivered at version 4" wait_for 20 status_is LC1 "delivered 4"
check "LC1 events in order" [ "$(events_of LC1)" = OrderCreated,OrderPaid,OrderShipped,OrderDelivered ]
check "no lifecycle command dead-lettered" [ -z "$(dl_reason_for LC1 pay)$(dl_reason_for LC1 ship)$(dl_reason_for LC1 deliver)" ]

# 20 orders driven at once, each by its own client, commands back to back
lc=()
for i in $(seq 20); do
    ( api POST /orders "$(order_json P$i)" > /dev/null
      for c in pay ship deliver; do curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{}' "http://127.0.0.1:$APORT/orders/P$i/$c"; done ) &
    lc+=("$!")
done
wait "${lc[@]}"
all_delivered() { [ "$(sql "SELECT count(*) FROM snapshots WHERE id LIKE 'P%' AND status = 'delivered' AND version = 4")" -eq 20 ]; }
check "20 concurrent lifecycles all end delivered" wait_for 30 all_delivered
check "... with 80 events" [ "$(sql "SELECT count(*) FROM events WHERE stream LIKE 'P%'")" -eq 80 ]

# --- an invalid transition: pay after deliver
api POST /orders/LC1/pay '{}'
check "pay after deliver accepted at the edge (checked in the pipeline)" [ "$API_STATUS" = 202 ]
check "pay after deliver dead-lettered with the reason" \
    wait_for 20 sh -c "curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders?limit=1000' | grep -q 'cannot pay an order that is delivered'"
check "dead letter names the stage and order" [ "$(dl_reason_for LC1 pay)" = "cannot pay an order that is delivered" ]
check "LC1 unchanged" status_is LC1 "delivered 4"
check "no fifth event" [ "$(events_of LC1)" = OrderCreated,OrderPaid,OrderShipped,OrderDelivered ]
api POST /orders/NOPE/ship '{}'
check "command for an unknown order accepted at the edge" [ "$API_STATUS" = 202 ]
check "command for an unknown order dead-lettered" \
    wait_for 20 sh -c "curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders?limit=1000' | grep -q 'order NOPE not found'"
api POST /orders/LC1/refund '{}'
check "unknown command: dead-lettered listing the valid ones" \
    wait_for 20 sh -c "curl -s 'http://127.0.0.1:$ODPORT/api/deadletter/orders?limit=1000' | grep -q 'refund'"

# every stored event reached the subscriber once
check "subscriber got every event" wait_for 30 sh -c "[ \"\$(\"$PY\" \"$CLIENT\" received \"$T/sub.ndjson\" | wc -l)\" -eq \"\$(\"$PY\" \"$CLIENT\" sql \"$DB\" 'SELECT count(*) FROM events')\" ]"
check "subscriber got exactly the stored events" cmp -s <(event_ids) <(received sub)
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
finish
