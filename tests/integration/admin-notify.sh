#!/bin/bash
# The admin listener answers /healthz, /readyz and /metrics; the daemon
# speaks systemd's notify protocol (READY, RELOADING, STOPPING, WATCHDOG).
. "$(dirname "$0")/lib.sh"

PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
"$PY" - "$T/notify.sock" "$T/notify.txt" <<'PYEOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        data = s.recv(4096).decode()
        out.write(data.replace("\n", " ") + "\n")
PYEOF
PIDS+=($!)
wait_until 10 test -S "$T/notify.sock" || { fail "notify listener"; finish; }

make_lines "$T/in.ndjson" 1 10
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
log = { format = "json"; level = "debug"; };
pipelines = ( { name = "p"; input = { plugin = "file"; path = "in.ndjson"; };
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; } ); } );
CONF
export NOTIFY_SOCKET="$T/notify.sock" WATCHDOG_USEC=200000
start_orderd run "$T/p.conf" || finish
unset NOTIFY_SOCKET WATCHDOG_USEC
check "READY=1 sent" wait_until 10 grep -q "^READY=1" "$T/notify.txt"
check "WATCHDOG=1 sent" wait_until 10 grep -q "^WATCHDOG=1" "$T/notify.txt"

http_get /healthz
check "/healthz 200" [ "$HTTP_STATUS" = 200 ]
http_get /readyz
check "/readyz 200" [ "$HTTP_STATUS" = 200 ]
wait_until 20 has_lines "$T/out.ndjson" 10
http_get /metrics; cp "$HTTP_BODY" "$T/metrics.txt"
check "/metrics 200" [ "$HTTP_STATUS" = 200 ]
check "stage counters" grep -q 'orderd_stage_messages_total{pipeline="p",stage="file-2",plugin="file",kind="publish"} 10' "$T/metrics.txt"
check "latency histogram" grep -q 'orderd_stage_latency_seconds_bucket{pipeline="p",stage="file-2",plugin="file",kind="publish",le="+Inf"} 10' "$T/metrics.txt"
check "queue depth gauge" grep -q 'orderd_pipeline_queue_depth{pipeline="p"} 0' "$T/metrics.txt"
http_get /nope
check "unknown path 404 problem" [ "$HTTP_STATUS" = 404 ]
check "problem body" grep -q '"status":404' "$HTTP_BODY"

kill -HUP "$ODPID"
check "RELOADING=1 sent" wait_until 10 grep -q "^RELOADING=1" "$T/notify.txt"
check "READY=1 again after reload" wait_until 10 sh -c "[ \$(grep -c '^READY=1' '$T/notify.txt') -ge 2 ]"
stop_orderd
check "log lines are JSON objects naming pipeline and stage" "$PY" -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert lines and all({"time", "level", "msg"} <= set(l) for l in lines)
assert any(l.get("pipeline") == "p" and l.get("stage") for l in lines)
' "$T/run.log"
check "STOPPING=1 sent" wait_until 10 grep -q "^STOPPING=1" "$T/notify.txt"
finish
