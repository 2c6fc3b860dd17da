#!/bin/bash
# SIGTERM stops intake and lets messages in flight finish within the
# deadline; whatever was not finished is redelivered by the next run, so
# across the two runs every record arrives, none twice.
. "$(dirname "$0")/lib.sh"

make_lines "$T/in.ndjson" 1 400
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { enabled = false; };
shutdown_timeout = "20s";
workers = 4;
queue_size = 16;
pipelines = ( { name = "slow";
  input = { plugin = "file"; path = "in.ndjson"; commit_interval = "10ms"; };
  transforms = ( { plugin = "testkit"; sleep = "20ms"; } );
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; fsync = "always"; } ); } );
CONF
start_orderd run1 "$T/p.conf" || finish
wait_until 20 has_lines "$T/out.ndjson" 20
t0=$(date +%s%N)
stop_orderd
t1=$(date +%s%N)
check "exit 0 after SIGTERM" [ "$ODRC" -eq 0 ]
check "logged the drain" grep -q "SIGTERM: draining" "$T/run1.log"
check "nothing abandoned at the deadline" sh -c "! grep -q 'still in flight at the drain deadline' '$T/run1.log'"
first=$(lines "$T/out.ndjson")
check "stopped before the end (drain test is meaningful)" [ "$first" -lt 400 ]
check "drain took well under the deadline" [ $(( (t1 - t0) / 1000000 )) -lt 10000 ]

start_orderd run2 "$T/p.conf" || finish
check "second run finishes the rest" wait_until 60 has_lines "$T/out.ndjson" 400
stop_orderd
check "every record exactly once" exactly_once "$T/out.ndjson" 400

# A deadline shorter than the work: the daemon still exits promptly and
# what was in flight is left to the source (redelivered next time).
rm -f "$T/out.ndjson"; rm -rf "$T/state"
sed -i 's/shutdown_timeout = "20s"/shutdown_timeout = "100ms"/; s/sleep = "20ms"/sleep = "1s"/' "$T/p.conf"
start_orderd run3 "$T/p.conf" || finish
sleep 0.3
t0=$(date +%s%N); stop_orderd; t1=$(date +%s%N)
check "exit 0 at a short deadline" [ "$ODRC" -eq 0 ]
check "stopped within deadline plus one stage call" [ $(( (t1 - t0) / 1000000 )) -lt 3000 ]
check "abandoned work is reported" grep -q "still in flight at the drain deadline" "$T/run3.log"
finish
