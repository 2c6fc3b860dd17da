#!/bin/bash
# e2e.sh - orders per second from POST /orders to "snapshot stored in sqlite
# and webhook delivered", through the shipped pipeline (http -> durable spool
# -> orders -> sqlite -> webhook, plus the projections pipeline; the order
# schema is checked at the edge).
#
#   tests/bench/e2e.sh [BUILD_DIR]
#
# Orders (unique ids) are posted with wrk (post.lua) until orderd has answered
# 202 to N of them (its http_requests_202 counter), then wrk is stopped; M, the
# final 202 count (N plus the few in flight), is the number measured.  The
# clock runs from the first POST until the sqlite snapshots table holds M rows
# AND the webhook receiver (nginx answering 204) has acknowledged M events
# (orderd's webhook_delivered counter).  Needs wrk, nginx, python3.
# CONNS is 256: with 64 connections the rate is each client's round trip
# (the 202 waits for a group commit), not what the pipeline can process;
# 256 keep the pipeline busy, and CONNS=64 still measures the other.
# Knobs (defaults): N [100000]  CONNS [256]  WRK_THREADS [2]  LIMIT [300] s
#   HTTP_THREADS [2]  WORKERS [2]  BATCH [1024]  QUEUE [4096]  GROUP_DELAY [1ms] (spool)
#   SQLITE_SYNC [full]  CHECKPOINT [32MiB] (sqlite checkpoint_size)  SYNC [true] (spool)  PROJECTIONS [1]
#   PERF=1  record `perf record` (PERF_ARGS [-g]) of orderd from the first POST
#           until everything is stored and delivered, into $PERF_OUT [./e2e.perf.data]
NAME=e2e.sh
. "$(dirname "$0")/benchlib.sh"
N=${N:-100000} CONNS=${CONNS:-256} WRK_THREADS=${WRK_THREADS:-2} LIMIT=${LIMIT:-300}
HTTP_THREADS=${HTTP_THREADS:-2} WORKERS=${WORKERS:-2} BATCH=${BATCH:-1024} QUEUE=${QUEUE:-4096}
SQLITE_SYNC=${SQLITE_SYNC:-full} CHECKPOINT=${CHECKPOINT:-32MiB} SYNC=${SYNC:-true} PROJECTIONS=${PROJECTIONS:-1}
GROUP_DELAY=${GROUP_DELAY:-1ms}

HOOK_PORT=$($U free-port) OD_PORT=$($U free-port) ADMIN_PORT=$($U free-port)
METRICS=http://127.0.0.1:$ADMIN_PORT/metrics

# ---- the webhook receiver: nginx answering 204, counting requests ----
mkdir -p "$T/nginx"
cat > "$T/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 4096; }
http {
    log_format hit '.';
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    keepalive_requests 1000000;
    client_body_buffer_size 1m;
    server { listen 127.0.0.1:$HOOK_PORT;
             access_log $T/nginx/hooks.log hit buffer=64k flush=100ms;
             location / { return 204; } }
}
EOF
nginx -p "$T/nginx" -c "$T/nginx/nginx.conf" -e "$T/nginx/error.log" 2>>"$T/nginx/error.log" &
PIDS+=($!)
wait_port "$HOOK_PORT" || { echo "nginx did not start:" >&2; cat "$T/nginx/error.log" >&2; exit 1; }

# ---- orderd: the shipped orderd.conf, ports and paths moved ----
SCHEMA=$HERE/../../etc/orderd/order.schema.json
PROJ=""
[ "$PROJECTIONS" = 1 ] && PROJ=",
  { name = \"projections\";
    input = { plugin = \"sqlite\"; path = \"orders.db\"; consumer = \"projections\"; };
    publish = ( { plugin = \"file\"; path = \"events.ndjson\"; fsync = \"interval\"; } ); }"
cat > "$T/orderd.conf" <<EOF
state_dir = "$T/state";
log = { level = "warn"; };
admin = { listen = "127.0.0.1:$ADMIN_PORT"; };
workers = $WORKERS;
queue_size = $QUEUE;
batch = { max = $BATCH; };
pipelines = (
  { name = "orders";
    input = { plugin = "http"; listen = "127.0.0.1:$OD_PORT"; schema = "$SCHEMA";
              max_body = "1MiB"; threads = $HTTP_THREADS; };
    spool = { max_bytes = "1GiB"; sync = $SYNC; group_delay = "$GROUP_DELAY"; };
    transforms = ( { plugin = "orders"; } );
    store = { plugin = "sqlite"; path = "orders.db"; synchronous = "$SQLITE_SYNC"; checkpoint_size = "$CHECKPOINT"; };
    publish = ( { plugin = "webhook"; format = "cloudevents"; source = "/orderd/orders";
                  subscribers = ( { name = "bench"; url = "http://127.0.0.1:$HOOK_PORT/events"; batch_max = 100; } ); } ); }$PROJ
);
EOF
mkdir -p "$T/state"
"$ORDERD" -c "$T/orderd.conf" -P "$PLUGINS" > "$T/orderd.out" 2> "$T/orderd.log" &
OD_PID=$!
PIDS+=("$OD_PID")
wait_port "$OD_PORT" || { echo "orderd did not start:" >&2; cat "$T/orderd.log" >&2; exit 1; }
wait_port "$ADMIN_PORT" || { echo "orderd admin did not start:" >&2; cat "$T/orderd.log" >&2; exit 1; }

echo "# orderd end-to-end benchmark"
$U machine
echo "build: $BUILD ($(cd "$HERE" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "command: N=$N wrk -t $WRK_THREADS -c $CONNS -s post.lua, stopped at N accepted (408-byte orders, unique ids)"
echo "orderd: http threads=$HTTP_THREADS spool sync=$SYNC group_delay=$GROUP_DELAY workers=$WORKERS batch.max=$BATCH queue_size=$QUEUE sqlite synchronous=$SQLITE_SYNC checkpoint_size=$CHECKPOINT projections=$PROJECTIONS"
echo

DB=$T/state/orders.db

cpu_ticks() {   # cpu_ticks PID : user+system clock ticks so far
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
cpu0=$(cpu_ticks "$OD_PID")
if [ "${PERF:-0}" = 1 ]; then
    perf record ${PERF_ARGS:--g} -p "$OD_PID" -o "${PERF_OUT:-$PWD/e2e.perf.data}" 2>"$T/perf.log" &
    PERF_PID=$!
fi
wrk -t "$WRK_THREADS" -c "$CONNS" -d "${LIMIT}s" --latency -s "$HERE/post.lua" \
    "http://127.0.0.1:$OD_PORT/orders" -- "e2e$$" > "$T/wrk.out" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
# polls /metrics and the database every 50 ms; times are seconds from here
$U e2e-watch "$METRICS" "$DB" "$N" "$WRK_PID" "$LIMIT" "$T/mid.txt" > "$T/watch.out"
kill -INT "$WRK_PID" 2>/dev/null; wait "$WRK_PID" 2>/dev/null
cpu1=$(cpu_ticks "$OD_PID")
if [ -n "${PERF_PID:-}" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID"
    echo "perf data: ${PERF_OUT:-$PWD/e2e.perf.data}"
fi
w() { sed -n "s/^$1 //p" "$T/watch.out"; }
M=$(w measured)

read -r _ p50 p99 bad err < <($U wrk "$T/wrk.out")
{ [ "$bad" != 0 ] || [ "$err" != 0 ]; } && echo "WARNING: $bad non-2xx answers, $err socket errors while posting"
rate() { awk -v n="$M" -v s="$1" 'BEGIN { if (s == "-") print "n/a"; else printf "%.0f", n / s }'; }
echo "orders measured (M): $M   (wrk stopped once $N were accepted)"
echo "posting:   all $M answered 202 after $(w posted) s -> $(rate "$(w posted)") orders/s (p50 $p50 ms, p99 $p99 ms)"
echo "stored:    snapshots=$(w snapshots) after $(w stored) s -> $(rate "$(w stored)") orders/s"
echo "delivered: webhook_delivered=$(w delivered) (receiver saw $(wc -l < "$T/nginx/hooks.log" 2>/dev/null || echo 0) POSTs) after $(w hooked) s -> $(rate "$(w hooked)") orders/s"
if [ "$(w stored)" != - ] && [ "$(w hooked)" != - ]; then
    end=$(awk -v a="$(w stored)" -v b="$(w hooked)" 'BEGIN { print (a > b) ? a : b }')
    r=$(rate "$end")
    echo "END-TO-END: $r orders/s  (target >= 20000 on 2 cores: $(awk -v r="$r" 'BEGIN { print (r >= 20000) ? "met" : "MISSED" }'))"
else
    echo "END-TO-END: not finished within $LIMIT s (stored $(w snapshots), delivered $(w delivered) of $M)"
fi
echo "peak spool backlog: $(w peak_spool) records; peak in flight (orders pipeline): $(w peak_in_flight)"
echo "sqlite batches committed: $($U metric "$METRICS" orderd_plugin_sqlite_commits) for $M orders"
echo "spool records handed over from memory: $($U metric "$METRICS" orderd_spool_memory_hits_total); read back from disk: $($U metric "$METRICS" orderd_spool_reads_total)"
awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v n="$M" 'BEGIN {
    printf "orderd CPU (user+system) until everything was stored and delivered: %.1f s, %.0f us per order\n", t / hz, 1e6 * t / hz / n }'
echo
echo "per-stage latency when half the orders were stored (orderd_stage_latency_seconds):"
[ -f "$T/mid.txt" ] && cat "$T/mid.txt"
echo "at the end:"
$U stages "$METRICS"
