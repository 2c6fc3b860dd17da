#!/bin/bash
# The real daemon consumes a Kafka topic (librdkafka's mock cluster, run by
# check_kafka --serve) into a file publisher: every record exactly once, and
# after a restart only the records produced meanwhile.
. "$(dirname "$0")/lib.sh"

KAFKA_SERVE="$TOP_BUILDDIR/tests/check_kafka"
: > "$T/in.ndjson"
"$KAFKA_SERVE" --serve orders 3 "$T/in.ndjson" > "$T/mock.out" 2> "$T/mock.log" &
PIDS+=("$!")
check "mock cluster up" wait_until 20 grep -q . "$T/mock.out"
BOOT=$(head -n 1 "$T/mock.out")

cat > "$T/k.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "orders";
  input = { plugin = "kafka"; bootstrap_servers = "$BOOT"; topics = [ "orders" ];
            message_id = "key"; poll_timeout = "20ms"; commit_interval = "50ms";
            properties = [ "heartbeat.interval.ms=100", "session.timeout.ms=2500" ]; };
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; format = "envelope"; fsync = "always"; } ); } );
CONF
make_lines "$T/in.ndjson" 1 300
start_orderd run1 "$T/k.conf" || finish
check "300 records published" wait_until 60 has_lines "$T/out.ndjson" 300
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
check "each record once" exactly_once "$T/out.ndjson" 300

make_lines "$T/in.ndjson" 301 400
start_orderd run2 "$T/k.conf" || finish
check "new records published after restart" wait_until 60 has_lines "$T/out.ndjson" 400
stop_orderd
check "every record exactly once over two runs" exactly_once "$T/out.ndjson" 400
finish
