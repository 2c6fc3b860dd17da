#!/bin/bash
# End to end: malformed HTTP input is answered right (400 with the position,
# 415, 413, 404, 405, 422 at the edge) and nothing is stored or spooled;
# poison that gets past the edge (a schema violation with the edge schema
# removed, an invalid transition) is dead-lettered by the right stage with
# its reason, and the good orders around it are stored.
. "$(dirname "$0")/e2e-lib.sh"

e2e_conf
start_receiver sub
e2e_subscribers sub:30
e2e_start run1 || finish

problem() { grep -qi '^content-type: application/problem+json' "$T/api.hdr"; }

api POST /orders '{"id":"B1","customerId":"c",'
check "truncated JSON: 400" [ "$API_STATUS" = 400 ]
check "... problem+json" problem
check "... with the position" [ "$(jq_body "$T/api.body" '"%d %d" % (j["position"]["line"], j["position"]["column"])')" = "1 28" ]
api POST /orders '{"id":"B2", "customerId":"c", oops}'
check "bad token: 400 at its column" [ "$API_STATUS $(jq_body "$T/api.body" 'j["position"]["column"]')" = "400 34" ]
api POST /orders '[1,2]'
check "not an object: 400" [ "$API_STATUS" = 400 ]
API_STATUS=$(curl -s -o "$T/api.body" -w '%{http_code}' -X POST -H 'Content-Type: text/plain' --data-binary "$(order_json B3)" "http://127.0.0.1:$APORT/orders")
check "text/plain: 415" [ "$API_STATUS" = 415 ]
API_STATUS=$(curl -s -o "$T/api.body" -w '%{http_code}' -X POST --data-binary "$(order_json B4)" "http://127.0.0.1:$APORT/orders")
check "form content type (curl default): 415" [ "$API_STATUS" = 415 ]
head -c 1100000 /dev/zero | tr '\0' 'x' | sed 's/^/{"id":"B5","customerId":"c","currency":"EUR","items":[{"sku":"s","qty":1,"price":1}],"pad":"/; s/$/"}/' > "$T/big.json"
API_STATUS=$(curl -s -o "$T/api.body" -w '%{http_code}' -H 'Content-Type: application/json' --data-binary @"$T/big.json" "http://127.0.0.1:$APORT/orders")
check "body over max_body (1MiB): 413" [ "$API_STATUS" = 413 ]
API_STATUS=$(curl -s -o "$T/api.body" -w '%{http_code}' -H 'Content-Type: application/json' -H 'Transfer-Encoding: chunked' --data-binary @"$T/big.json" "http://127.0.0.1:$APORT/orders")
check "chunked body over max_body: 413" [ "$API_STATUS" = 413 ]
api GET /nope
check "unknown path: 404" [ "$API_STATUS" = 404 ]
api POST /orders/B6/pay/now '{}'
check "unknown sub-resource: 404" [ "$API_STATUS" = 404 ]
api DELETE /orders
check "DELETE /orders: 405" [ "$API_STATUS" = 405 ]
check "... with Allow" grep -qi '^allow: .*POST' "$T/api.hdr"
api PUT /orders/B7 "$(order_json B7)"
check "PUT /orders/{id}: 405" [ "$API_STATUS" = 405 ]
api GET /orders/B8/pay
check "GET on a command: 405" [ "$API_STATUS" = 405 ]
api POST /orders '{"id":"B9","customerId":"c","currency":"EUR","items":[{"sku":"s","qty":0,"price":1}]}'
check "schema violation at the edge: 422" [ "$API_STATUS" = 422 ]
check "... naming the field" [ "$(jq_body "$T/api.body" 'j["field"]')" = /items/0/qty ]
api POST /orders '{"id":"bad id!","customerId":"c","currency":"EUR","items":[{"sku":"s","qty":1,"price":1}]}'
check "invalid order id: 422" [ "$API_STATUS" = 422 ]
api POST /orders '{"id":"B10","id":"B11","customerId":"c","currency":"EUR","items":[{"sku":"s","qty":1,"price":1}]}'
check "duplicate JSON key: 400" [ "$API_STATUS" = 400 ]

admin GET /api/status
check "nothing reached the pipeline" [ "$(jq_body "$T/adm.body" '[s["in"] for s in j["pipelines"][0]["stages"]]')" = "[0, 0, 0, 0]" ]
check "nothing spooled" [ "$(jq_body "$T/adm.body" 'j["pipelines"][0]["spool"]["records"]')" = 0 ]
check "nothing stored" [ "$(sql "SELECT (SELECT count(*) FROM snapshots) + (SELECT count(*) FROM events)")" -eq 0 ]
check "nothing dead-lettered" [ "$(jq_body "$T/adm.body" 'j["pipelines"][0]["dead_letters"]')" = 0 ]
api GET /healthz
check "still healthy" [ "$API_STATUS" = 200 ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]

# --- the same pipeline with the schema moved from the edge to a validate
# stage (as for an input that does not check): that stage must catch it
sed -i '/schema = "order.schema.json";         # validated at the edge/d' "$ETC/orderd.conf"
sed -i 's|^      { plugin = "orders"; }|      { plugin = "validate"; schema = "order.schema.json"; },\n&|' "$ETC/orderd.conf"
check "variant has only the validate stage's schema" [ "$(grep -c '^ *[^ #].*schema = "order.schema.json"' "$ETC/orderd.conf")" -eq 1 ]
check "... and a validate stage" grep -q '^      { plugin = "validate"; schema = "order.schema.json"; },$' "$ETC/orderd.conf" 
e2e_start run2 || finish
api POST /orders "$(order_json G1)"; s=$API_STATUS
api POST /orders '{"id":"V1","customerId":"c","currency":"EUR","items":[{"sku":"s","qty":0,"price":1}]}'; s="$s $API_STATUS"
api POST /orders '{"id":"V2","currency":"EUR","items":[{"sku":"s","qty":1,"price":1}]}'; s="$s $API_STATUS"
api POST /orders "$(order_json G2)"; s="$s $API_STATUS"
api POST /orders/G1/ship '{}'; s="$s $API_STATUS"
check "all accepted without the edge schema" [ "$s" = "202 202 202 202 202" ]
check "good orders stored" wait_for 20 sh -c "[ \"\$(\"$PY\" \"$CLIENT\" sql \"$DB\" \"SELECT count(*) FROM snapshots WHERE id IN ('G1','G2')\")\" = 2 ]"
check "three dead letters" wait_for 20 sh -c "curl -s http://127.0.0.1:$ODPORT/api/deadletter/orders | grep -q '\"total\":3'"
admin GET "/api/deadletter/orders?limit=100"; cp "$T/adm.body" "$T/dl.json"
dl() { jq_body "$T/dl.json" "[(e['stage'], e['reason']) for e in j['entries'] if e['properties'].get('order_id') == '$1' and e['properties'].get('command') == '$2']"; }
check "V1 dead-lettered by validate: qty below minimum" [ "$(dl V1 create)" = "[('validate', '/items/0/qty: 0 is less than minimum 1')]" ]
check "V2 dead-lettered by validate: customerId missing" [ "$(dl V2 create)" = "[('validate', '/customerId: required property is missing')]" ]
check "G1 ship dead-lettered by orders: invalid transition" [ "$(dl G1 ship)" = "[('orders', 'cannot ship an order that is created')]" ]
check "dead letters keep the body" [ "$(jq_body "$T/dl.json" "[e['body']['items'][0]['qty'] for e in j['entries'] if e['properties'].get('order_id') == 'V1']")" = "[0]" ]
check "poison not stored" [ "$(sql "SELECT count(*) FROM snapshots WHERE id IN ('V1','V2')")" -eq 0 ]
check "G1 unchanged by the refused ship" [ "$(sql "SELECT status, version FROM snapshots WHERE id = 'G1'")" = "created|1" ]
check "two events, both published" wait_for 20 has_received sub 2
check "poison never stored as an event" [ "$(sql "SELECT count(*) FROM events")" -eq 2 ]
check "poison never published" [ "$(received_count sub)" -eq 2 ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
finish
