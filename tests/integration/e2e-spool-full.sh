#!/bin/bash
# End to end, shipped config with a tiny spool (64KiB in 16KiB segments) and a
# slow stage after the state machine (testkit sleep 50ms): a burst of
# concurrent POSTs fills the spool, so some get 503 with Retry-After and are
# not stored; once the backlog drains, POSTs get 202 again; every 202'd order
# is stored, each once.
. "$(dirname "$0")/e2e-lib.sh"

e2e_conf
start_receiver sub
e2e_subscribers sub:30
sed -i -e 's/spool = { max_bytes = "1GiB"; sync = true; group_delay = "1ms"; };/spool = { max_bytes = "64KiB"; segment_bytes = "16KiB"; sync = true; group_delay = "1ms"; };/' \
       -e 's/{ plugin = "orders"; }  /{ plugin = "orders"; }, { plugin = "testkit"; name = "slow"; sleep = "50ms"; }  /' "$ETC/orderd.conf"
check "variant: tiny spool and a slow stage" \
    [ "$(grep -c 'max_bytes = "64KiB"; segment_bytes = "16KiB"\|name = "slow"; sleep = "50ms"' "$ETC/orderd.conf")" -eq 2 ]
e2e_start run || finish

post_orders --count 800 --threads 16 --prefix S --out "$T/burst.txt" &
BURST=$!
PIDS+=("$BURST")
# meanwhile, look at one refusal as a client sees it
probe_refused() { probes=$((probes + 1)); api POST /orders "$(order_json "S-probe-$probes")"; echo "S-probe-$probes $API_STATUS -" >> "$T/probes.txt"; [ "$API_STATUS" = 503 ]; }
probes=0
check "a POST during the burst is refused" wait_for 20 probe_refused
check "the 503 is problem+json" grep -qi '^content-type: application/problem+json' "$T/api.hdr"
check "the 503 carries Retry-After: 1" grep -qi '^retry-after: 1' "$T/api.hdr"
wait "$BURST"
check "every POST of the burst answered" [ "$(lines "$T/burst.txt")" -eq 800 ]
n202=$(grep -c ' 202 ' "$T/burst.txt"); n503=$(grep -c ' 503 ' "$T/burst.txt")
echo "burst: $n202 accepted, $n503 refused"
check "the burst filled the spool: some 503" [ "$n503" -gt 0 ]
check "... and some 202" [ "$n202" -gt 0 ]
check "only 202 or 503" [ $((n202 + n503)) -eq 800 ]
check "every 503 has Retry-After: 1 (the default)" [ "$(awk '$2 == 503 && $3 != "1"' "$T/burst.txt" | wc -l)" -eq 0 ]

# drain, then intake is open again
drained() { curl -s "http://127.0.0.1:$ODPORT/api/status" | grep -q '"in_flight":0,"queue_depth":0,.*"spool":{"bytes":[0-9]*,"records":0'; }
check "backlog drains" wait_for 90 drained
post_orders --count 40 --start 1001 --threads 4 --prefix S --out "$T/after.txt"
check "after the drain every POST gets 202" [ "$(grep -c ' 202 ' "$T/after.txt")" -eq 40 ]
check "after the drain stays drained" wait_for 30 drained

cat "$T/burst.txt" "$T/after.txt" "$T/probes.txt" > "$T/answers.txt"
awk '$2 == 202 { print $1 }' "$T/answers.txt" | LC_ALL=C sort > "$T/accepted.txt"
awk '$2 != 202 { print $1 }' "$T/answers.txt" | LC_ALL=C sort > "$T/refused.txt"
check "every 202'd order stored" cmp -s "$T/accepted.txt" <(sql "SELECT id FROM snapshots" | LC_ALL=C sort)
check "no refused order stored" [ -z "$(LC_ALL=C comm -12 "$T/refused.txt" <(sql "SELECT id FROM snapshots" | LC_ALL=C sort))" ]
check "one OrderCreated per stored order" \
    [ "$(sql "SELECT count(*), count(DISTINCT stream) FROM events")" = "$(lines "$T/accepted.txt")|$(lines "$T/accepted.txt")" ]
admin GET /api/status
check "nothing dead-lettered" [ "$(jq_body "$T/adm.body" 'j["pipelines"][0]["dead_letters"]')" = 0 ]
check "spool stayed within bounds" [ "$(jq_body "$T/adm.body" 'j["pipelines"][0]["spool"]["bytes"]')" -le 65536 ]
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
check "no errors logged" sh -c "! grep -E ' (error|crit|alert|emerg) ' '$T/run.log'"
finish
