#!/bin/bash
# The servicebus plugin in the real daemon against a real AMQP 1.0 broker:
# a private RabbitMQ 3.x node (tests/peers/rabbitmq.sh, SASL PLAIN), one per
# script.  Checks, in order:
#   1. publish settles only after the broker's accepted: what a stopped
#      daemon reported done is in the queue, and a second daemon's
#      servicebus input receives and completes each exactly once;
#   2. abandon (released) and redelivery: a stage failing once per message
#      with retry.max_attempts = 1 still sees every message through;
#   3. reject -> rejected on a quorum queue -> dead-lettered to dlq at once;
#      RETRY exhausted every time -> released until the quorum queue's
#      x-delivery-limit (2) dead-letters it to dlq;
#   TLS: amqps with a configured CA works; a server it did not sign is refused;
#   4. broker outage mid-stream (node stopped, more orders fed while it is
#      down, node started with its state): publish and input reconnect and
#      every order arrives (at least once: acks of messages in flight when
#      the connection dropped cannot be sent, so those are redelivered).
. "$(dirname "$0")/lib.sh"

[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { echo "FAIL: rabbitmq-server not installed (contrib/deps.sh installs it)"; exit 1; }
RMQ="$TESTS_SRCDIR/peers/rabbitmq.sh"
export RMQ_DIR="$T/rmq"
rmq_ports || { fail "no free ports"; finish; }
trap '"$RMQ" stop > /dev/null 2>&1; cleanup' EXIT
# a throw-away CA and a server certificate for localhost, and a second CA
# that did not sign it
export RMQ_CERT_DIR="$T/certs" RMQ_QUEUES="tls" RMQ_QUORUM_QUEUES="qq2" RMQ_DELIVERY_LIMIT=2
mkdir -p "$RMQ_CERT_DIR"
(
    cd "$RMQ_CERT_DIR" &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=orderd-test-ca" -keyout ca.key -out ca.crt &&
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other-ca" -keyout other.key -out other.crt &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr &&
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.crt
) > "$T/certs.log" 2>&1 || { fail "certificates"; finish; }
"$RMQ" start > "$T/rmq-start.log" 2>&1 || { fail "RabbitMQ did not start"; cat "$T/rmq-start.log" >&2; finish; }

URL="amqp://127.0.0.1:$RMQ_PORT"
TLS_URL="amqps://localhost:$((RMQ_PORT + 1))"
AUTH="auth = \"plain\"; username = \"guest\"; password = \"guest\";"
# RabbitMQ 3.x ends the session on `modified` and has no $management node
RIN="$AUTH abandon_outcome = \"released\"; lock_renewal = \"0\"; reconnect_delay_max = \"1s\";"

metric() {   # metric PORT REGEX -> value of the first matching line
    curl -s "http://127.0.0.1:$1/metrics" | grep -E "$2" | head -n 1 | awk '{ print $NF }'
}
metric_ge() { local v; v=$(metric "$1" "$2"); [ -n "$v" ] && [ "${v%.*}" -ge "$3" ]; }

# 1. publish waits for the broker; receive and complete ---------------------
make_lines "$T/in1.ndjson" 1 100
cat > "$T/pub.conf" <<CONF
state_dir = "$T/state-pub";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "intake";
  input = { plugin = "file"; path = "$T/in1.ndjson"; };
  publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; $AUTH } ); } );
CONF
start_orderd pub "$T/pub.conf" || finish
check "100 publishes settled OK by the broker" \
    wait_until 30 metric_ge "$ODPORT" 'orderd_stage_outcomes_total\{pipeline="intake",stage="servicebus".*outcome="ok"\}' 100
check "publish counted by the plugin" metric_ge "$ODPORT" 'orderd_plugin_servicebus_sent\{' 100
stop_orderd
check "publisher stopped cleanly" [ "$ODRC" -eq 0 ]

cat > "$T/recv.conf" <<CONF
state_dir = "$T/state-recv";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "orders";
  input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; prefetch = 20; concurrency = 50; $RIN };
  publish = ( { plugin = "file"; path = "$T/out1.ndjson"; } ); } );
CONF
start_orderd recv "$T/recv.conf" || finish
check "100 received" wait_until 30 has_lines "$T/out1.ndjson" 100
check "all completed" wait_until 10 metric_ge "$ODPORT" 'orderd_plugin_servicebus_completed\{' 100
stop_orderd
check "received each exactly once" exactly_once "$T/out1.ndjson" 100
check "properties and ids survive the trip" grep -q '"id":"o42"' "$T/out1.ndjson"

# a second receiver finds q1 empty: everything was completed, not just
# read.  A marker sent after it attached must be the first thing it gets.
echo '{"id":"marker"}' > "$T/marker.ndjson"
cat > "$T/recv2.conf" <<CONF
state_dir = "$T/state-recv2";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "orders";
  input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; $RIN };
  publish = ( { plugin = "file"; path = "$T/out1b.ndjson"; } ); },
 { name = "marker";
  input = { plugin = "file"; path = "$T/marker.ndjson"; };
  publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; $AUTH } ); } );
CONF
start_orderd recv2 "$T/recv2.conf" || finish
check "marker received" wait_until 20 has_lines "$T/out1b.ndjson" 1
stop_orderd
check "nothing but the marker was left in q1" sh -c "[ \$(wc -l < '$T/out1b.ndjson') -eq 1 ] && grep -q marker '$T/out1b.ndjson'"

# 2, 3 and TLS in one daemon ---------------------------------------------------
make_lines "$T/in2.ndjson" 1 40
make_lines "$T/in3.ndjson" 1 30
sed -i '0~5 s/}$/,"poison":true}/' "$T/in3.ndjson"
make_lines "$T/in4.ndjson" 1 300
make_lines "$T/in5.ndjson" 1 5
echo '{"id":"untrusted"}' > "$T/in6.ndjson"
printf '{"id":"stuck%d","stuck":true}\n' 1 2 3 > "$T/in7.ndjson"
cat > "$T/all.conf" <<CONF
state_dir = "$T/state-all";
admin = { listen = "127.0.0.1:0"; };
retry = { max_attempts = 1000; backoff_base = "20ms"; backoff_cap = "500ms"; };
pipelines = (
 { name = "feed2"; input = { plugin = "file"; path = "$T/in2.ndjson"; };
   publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q2"; $AUTH } ); },
 { name = "abandon";
   retry = { max_attempts = 1; };
   input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q2"; $RIN };
   transforms = ( { plugin = "testkit"; name = "flaky"; fail_times = 1; } );
   publish = ( { plugin = "file"; path = "$T/out2.ndjson"; } ); },
 { name = "feed3"; input = { plugin = "file"; path = "$T/in3.ndjson"; };
   publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/qq"; $AUTH } ); },
 { name = "reject";
   input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/qq"; $RIN };
   transforms = ( { plugin = "testkit"; name = "checker"; reject_field = "poison"; reject_reason = "poison order"; } );
   publish = ( { plugin = "file"; path = "$T/out3.ndjson"; } ); },
 { name = "feed7"; input = { plugin = "file"; path = "$T/in7.ndjson"; };
   publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/qq2"; $AUTH } ); },
 { name = "limit";
   retry = { max_attempts = 1; };
   input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/qq2"; $RIN };
   transforms = ( { plugin = "testkit"; name = "broken"; fail_times = 1000; } );
   publish = ( { plugin = "file"; path = "$T/out7.ndjson"; } ); },
 { name = "dlq";
   input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/dlq"; $RIN };
   publish = ( { plugin = "file"; path = "$T/dlq.ndjson"; } ); },
 { name = "feed5"; input = { plugin = "file"; path = "$T/in5.ndjson"; };
   publish = ( { plugin = "servicebus"; url = "$TLS_URL"; ca_file = "$RMQ_CERT_DIR/ca.crt";
                 entity = "/amq/queue/tls"; $AUTH } ); },
 { name = "tlsin";
   input = { plugin = "servicebus"; url = "$TLS_URL"; ca_file = "$RMQ_CERT_DIR/ca.crt";
             entity = "/amq/queue/tls"; $RIN };
   publish = ( { plugin = "file"; path = "$T/out5.ndjson"; } ); },
 { name = "badca"; input = { plugin = "file"; path = "$T/in6.ndjson"; };
   publish = ( { plugin = "servicebus"; url = "$TLS_URL"; ca_file = "$RMQ_CERT_DIR/other.crt";
                 entity = "/amq/queue/tls"; $AUTH } ); } );
CONF
start_orderd all "$T/all.conf" || finish
check "abandoned messages redelivered and processed" wait_until 30 has_lines "$T/out2.ndjson" 40
check "abandon = released, once per message" \
    wait_until 10 metric_ge "$ODPORT" 'orderd_plugin_servicebus_abandoned\{pipeline="abandon"' 40
check "good orders through" wait_until 30 has_lines "$T/out3.ndjson" 24
check "poison orders and ever-failing ones dead-lettered by the broker to dlq" \
    wait_until 30 has_lines "$T/dlq.ndjson" 9
check "ever-failing: abandoned at each of its 1 + limit deliveries" \
    metric_ge "$ODPORT" 'orderd_plugin_servicebus_abandoned\{pipeline="limit"' 9
check "rejects counted" metric_ge "$ODPORT" 'orderd_plugin_servicebus_deadlettered\{pipeline="reject"' 6
check "TLS (CA verified, name checked): published and received" wait_until 30 has_lines "$T/out5.ndjson" 5
check "a server the configured CA did not sign is refused" \
    wait_until 20 grep -q '\[badca/servicebus servicebus\] connection to localhost:[0-9]* lost: .*certificate verify failed' "$T/all.log"

http_get /metrics; cp "$HTTP_BODY" "$T/metrics.txt"
stop_orderd
check "daemon stopped cleanly" [ "$ODRC" -eq 0 ]
check "abandon: each message failed once" grep -q 'orderd_stage_outcomes_total{pipeline="abandon",stage="flaky",.*outcome="retry"} 40$' "$T/metrics.txt"
check "abandon: each message published exactly once" exactly_once "$T/out2.ndjson" 40
check "untrusted server never got the message" [ "$(grep -c untrusted "$T/out5.ndjson")" -eq 0 ]
check "no poison in the good output" [ "$(grep -c poison "$T/out3.ndjson")" -eq 0 ]
check "poison in dlq" [ "$(grep -c poison "$T/dlq.ndjson")" -eq 6 ]
check "ever-failing orders in dlq, none published" sh -c "[ \$(grep -c stuck '$T/dlq.ndjson') -eq 3 ] && [ ! -s '$T/out7.ndjson' ]"
check "no errors logged by servicebus" sh -c "! grep ' error .*servicebus' '$T/all.log'"

# 4. stop the broker mid-stream, feed more while it is down, start it again
cat > "$T/stream.conf" <<CONF
state_dir = "$T/state-stream";
admin = { listen = "127.0.0.1:0"; };
retry = { max_attempts = 1000; backoff_base = "20ms"; backoff_cap = "500ms"; };
pipelines = (
 { name = "feed4";
   input = { plugin = "file"; path = "$T/in4.ndjson"; follow = true; poll_interval = "50ms"; };
   publish = ( { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; $AUTH send_timeout = "3s";
                 reconnect_delay_max = "1s"; } ); },
 { name = "stream";
   input = { plugin = "servicebus"; url = "$URL"; entity = "/amq/queue/q1"; $RIN };
   transforms = ( { plugin = "testkit"; name = "slow"; sleep = "100ms"; } );
   publish = ( { plugin = "file"; path = "$T/out4.ndjson"; } ); } );
CONF
start_orderd stream "$T/stream.conf" || finish
check "stream under way" wait_until 30 has_lines "$T/out4.ndjson" 20
"$RMQ" stop-node > "$T/rmq-stop.log" 2>&1
check "broker stopped mid-stream" [ "$(lines "$T/out4.ndjson")" -lt 300 ]
make_lines "$T/in4.ndjson" 301 350
RMQ_KEEP_STATE=1 "$RMQ" start > "$T/rmq-restart.log" 2>&1 || fail "RabbitMQ did not restart"
check "stages reconnected" wait_until 30 metric_ge "$ODPORT" 'orderd_plugin_servicebus_reconnects\{pipeline="stream"' 1
check "every streamed order arrived after the restart" \
    wait_until 60 sh -c "sed -n 's/^[^o]*\"id\":\"\(o[0-9]*\)\".*/\1/p' '$T/out4.ndjson' | sort -u | wc -l | grep -qx 350"
stop_orderd
check "stream daemon stopped cleanly" [ "$ODRC" -eq 0 ]
check "no errors logged by servicebus during the outage" sh -c "! grep ' error .*servicebus' '$T/stream.log'"
finish
