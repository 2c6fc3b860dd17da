#!/bin/bash
# Through the real daemon and loader: a stage that fails twice then succeeds
# is retried and every message arrives; a stage that rejects sends the
# message to the dead-letter file with its reason; the counters agree.
. "$(dirname "$0")/lib.sh"

make_lines "$T/in.ndjson" 1 100
# every 10th order is poison
sed -i '0~10 s/}$/,"poison":true}/' "$T/in.ndjson"
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
retry = { max_attempts = 4; backoff_base = "2ms"; backoff_cap = "20ms"; };
pipelines = ( { name = "orders";
  input = { plugin = "file"; path = "in.ndjson"; };
  transforms = ( { plugin = "testkit"; name = "flaky"; fail_times = 2; },
                 { plugin = "testkit"; name = "checker"; reject_field = "poison";
                   reject_reason = "poison order refused"; } );
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; fsync = "always"; } ); } );
CONF
start_orderd run "$T/p.conf" || finish
check "90 good orders published" wait_until 60 has_lines "$T/out.ndjson" 90
check "10 dead letters" wait_until 20 has_lines "$T/state/deadletter/orders.ndjson" 10
http_get /metrics; cp "$HTTP_BODY" "$T/metrics.txt"
stop_orderd
check "no poison published" [ "$(grep -c poison "$T/out.ndjson")" -eq 0 ]
check "dead letters carry the reason" [ "$(grep -c '"reason":"poison order refused"' "$T/state/deadletter/orders.ndjson")" -eq 10 ]
check "dead letters name the stage" [ "$(grep -c '"stage":"checker"' "$T/state/deadletter/orders.ndjson")" -eq 10 ]
check "dead letters keep the body" grep -q '"body":{"id":"o10"' "$T/state/deadletter/orders.ndjson"
check "each retried twice" grep -q 'orderd_stage_outcomes_total{pipeline="orders",stage="flaky",plugin="testkit",kind="transform",outcome="retry"} 200' "$T/metrics.txt"
check "rejects counted" grep -q 'stage="checker",plugin="testkit",kind="transform",outcome="reject"} 10' "$T/metrics.txt"
check "dead letter counter" grep -q 'orderd_dead_letters_total{pipeline="orders"} 10' "$T/metrics.txt"
check "retry logged nothing at error level" sh -c "! grep -q ' error ' '$T/run.log'"
finish
