#!/bin/bash
# backlog.sh - memory with a large spool backlog, and how fast it drains.
#
#   tests/bench/backlog.sh [BUILD_DIR]
#
# 1. fill: orderd with the shipped orders pipeline's input and spool, but a
#    testkit transform that sleeps 1h on each message, so the workers stall,
#    the in-flight window fills (queue_size) and every further order stays
#    in the spool.  N orders are POSTed with wrk (post.lua, stopped once N
#    were accepted), then VmHWM/VmRSS are read from /proc/PID/status.
# 2. drain: orderd is stopped and restarted on the same state directory with
#    the shipped pipeline (orders, sqlite, webhook to a local nginx
#    answering 204); the time for orderd_spool_records to reach 0 (bounded by
#    DRAIN_LIMIT: the rate is then records drained / time) and its VmHWM.
# Needs wrk, nginx, python3 and the testkit plugin (make -C tests check
# builds tests/.libs/testkit.so; or make -C tests testkit.la).
# Knobs (defaults): N [1000000]  CONNS [64]  WRK_THREADS [2]  FILL_LIMIT [600] s
#   DRAIN_LIMIT [300] s  HTTP_THREADS [2]  FILL_SYNC [false] (spool sync while
#   filling: memory does not depend on it, fill time does)  WORKERS [2]
#   BATCH [1024]  QUEUE [4096]  SQLITE_SYNC [full]  CHECKPOINT [32MiB] (sqlite checkpoint_size)
#   PERF=1  record `perf record -g` of orderd while it drains into $PERF_OUT
#           [./backlog.perf.data]
NAME=backlog.sh
. "$(dirname "$0")/benchlib.sh"
N=${N:-1000000} CONNS=${CONNS:-64} WRK_THREADS=${WRK_THREADS:-2} FILL_LIMIT=${FILL_LIMIT:-600}
DRAIN_LIMIT=${DRAIN_LIMIT:-300} HTTP_THREADS=${HTTP_THREADS:-2} FILL_SYNC=${FILL_SYNC:-false}
WORKERS=${WORKERS:-2} BATCH=${BATCH:-1024} QUEUE=${QUEUE:-4096} SQLITE_SYNC=${SQLITE_SYNC:-full} CHECKPOINT=${CHECKPOINT:-32MiB}
[ -f "$BUILD/tests/.libs/testkit.so" ] ||
    { echo "backlog.sh: $BUILD/tests/.libs/testkit.so missing (make -C $BUILD/tests testkit.la)" >&2; exit 2; }
PLUGINS=$PLUGINS:$BUILD/tests/.libs

kib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
status_kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
stop_pid() {   # SIGTERM, wait up to 30 s, then SIGKILL
    kill -TERM "$1" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

HOOK_PORT=$($U free-port) OD_PORT=$($U free-port) ADMIN_PORT=$($U free-port)
METRICS=http://127.0.0.1:$ADMIN_PORT/metrics
SCHEMA=$HERE/../../etc/orderd/order.schema.json

mkdir -p "$T/nginx" "$T/state"
cat > "$T/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    keepalive_requests 1000000;
    client_body_buffer_size 1m;
    server { listen 127.0.0.1:$HOOK_PORT; location / { return 204; } }
}
EOF
nginx -p "$T/nginx" -c "$T/nginx/nginx.conf" -e "$T/nginx/error.log" 2>>"$T/nginx/error.log" &
PIDS+=($!)
wait_port "$HOOK_PORT" 30 || { echo "nginx did not start:" >&2; cat "$T/nginx/error.log" >&2; exit 1; }

write_conf() {   # write_conf FILE SYNC STAGES
    cat > "$1" <<EOF
state_dir = "$T/state";
log = { level = "warn"; };
admin = { listen = "127.0.0.1:$ADMIN_PORT"; };
shutdown_timeout = "2s";
workers = $WORKERS;
queue_size = $QUEUE;
batch = { max = $BATCH; };
pipelines = ( { name = "orders";
    input = { plugin = "http"; listen = "127.0.0.1:$OD_PORT"; schema = "$SCHEMA";
              max_body = "1MiB"; threads = $HTTP_THREADS; };
    spool = { max_bytes = "8GiB"; sync = $2; };
    $3
} );
EOF
}
write_conf "$T/fill.conf" "$FILL_SYNC" 'transforms = ( { plugin = "testkit"; sleep = "1h"; } );'
write_conf "$T/drain.conf" true "transforms = ( { plugin = \"orders\"; } );
    store = { plugin = \"sqlite\"; path = \"orders.db\"; synchronous = \"$SQLITE_SYNC\"; checkpoint_size = \"$CHECKPOINT\"; };
    publish = ( { plugin = \"webhook\"; format = \"cloudevents\"; source = \"/orderd/orders\";
                  subscribers = ( { name = \"bench\"; url = \"http://127.0.0.1:$HOOK_PORT/events\"; batch_max = 100; } ); } );"

echo "# orderd backlog benchmark"
$U machine
echo "build: $BUILD ($(cd "$HERE" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "command: N=$N wrk -t $WRK_THREADS -c $CONNS -s post.lua, stopped at N accepted (408-byte orders)"
echo "orderd: http threads=$HTTP_THREADS fill spool sync=$FILL_SYNC workers=$WORKERS batch.max=$BATCH queue_size=$QUEUE sqlite synchronous=$SQLITE_SYNC checkpoint_size=$CHECKPOINT"
echo

# ---- 1. fill with the workers stalled ----
"$ORDERD" -c "$T/fill.conf" -P "$PLUGINS" > "$T/fill.out" 2> "$T/fill.log" &
OD_PID=$!
PIDS+=("$OD_PID")
wait_port "$OD_PORT" 30 && wait_port "$ADMIN_PORT" 30 || { echo "orderd did not start:" >&2; cat "$T/fill.log" >&2; exit 1; }
echo "idle: VmRSS $(kib "$(status_kib "$OD_PID" VmRSS)")"
wrk -t "$WRK_THREADS" -c "$CONNS" -d "${FILL_LIMIT}s" --latency -s "$HERE/post.lua" \
    "http://127.0.0.1:$OD_PORT/orders" -- "bl$$" > "$T/wrk.out" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
read -r accepted fill_s < <($U fill "$METRICS" "$N" "$WRK_PID" "$FILL_LIMIT")
wait "$WRK_PID" 2>/dev/null
sleep 1
queued=$($U metric "$METRICS" orderd_spool_records)
spool_bytes=$($U metric "$METRICS" orderd_spool_bytes)
hwm=$(status_kib "$OD_PID" VmHWM) rss=$(status_kib "$OD_PID" VmRSS)
read -r _ _ _ bad err < <($U wrk "$T/wrk.out")
echo "fill: $accepted orders accepted in $fill_s s ($(awk -v n="$accepted" -v s="$fill_s" 'BEGIN { printf "%.0f", n / s }')/s); $bad non-2xx, $err socket errors"
echo "backlog: orderd_spool_records=$queued, spool $(awk -v b="$spool_bytes" 'BEGIN { printf "%.0f MiB", b / 1048576 }') on disk"
echo "PEAK RSS with the backlog: VmHWM $(kib "$hwm") (VmRSS now $(kib "$rss"))   (target < 128 MiB: $(awk -v k="$hwm" 'BEGIN { print (k < 131072) ? "met" : "MISSED" }'))"
[ "$accepted" -lt "$N" ] && echo "NOTE: only $accepted of $N accepted within FILL_LIMIT=$FILL_LIMIT s"
stop_pid "$OD_PID"

# ---- 2. restart with the shipped pipeline and drain ----
"$ORDERD" -c "$T/drain.conf" -P "$PLUGINS" > "$T/drain.out" 2> "$T/drain.log" &
OD_PID=$!
PIDS+=("$OD_PID")
if [ "${PERF:-0}" = 1 ]; then
    # -p only follows the threads present when it attaches: the workers first
    wait_port "$ADMIN_PORT"
    perf record ${PERF_ARGS:--g} -p "$OD_PID" -o "${PERF_OUT:-$PWD/backlog.perf.data}" 2>"$T/perf.log" &
    PERF_PID=$!
fi
read -r start left first total dhwm < <($U drain "$METRICS" "$DRAIN_LIMIT" "$OD_PID")
if [ -n "${PERF_PID:-}" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID"
    echo "perf data (drain): ${PERF_OUT:-$PWD/backlog.perf.data}"
fi
drained=$((start - left))
echo "drain: spool had $start records when /metrics came up ($first s after start: spool recovery)"
if [ "$left" = 0 ]; then
    echo "DRAIN: all $start in $total s -> $(awk -v n="$start" -v s="$total" -v f="$first" 'BEGIN { printf "%.0f", n / (s - f) }') orders/s (after recovery)"
else
    echo "DRAIN: $drained of $start in $total s (DRAIN_LIMIT) -> $(awk -v n="$drained" -v s="$total" -v f="$first" 'BEGIN { printf "%.0f", n / (s - f) }') orders/s (after recovery); $left left"
fi
echo "drain VmHWM: $(kib "$dhwm")"
# user+system clock ticks of the draining orderd, recovery included
ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$OD_PID/stat")
awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$drained" 'BEGIN {
    if (n > 0) printf "drain CPU: %.1f s of orderd CPU (user+system), %.0f us per order\n", t / hz, 1e6 * t / hz / n }'
$U stages "$METRICS"
stop_pid "$OD_PID"
