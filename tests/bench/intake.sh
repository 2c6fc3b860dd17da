#!/bin/bash
# intake.sh - POST /orders throughput and latency of orderd against nginx
# answering `return 202;` under the same wrk load, in the same run.
#
#   tests/bench/intake.sh [BUILD_DIR]
#
# BUILD_DIR (or $BUILD; default ../../build/werror from this script) is an
# orderd build tree.  Needs wrk, nginx (nginx-light) and python3.
# Environment knobs (defaults in brackets):
#   DURATION [15s]  CONNS [64]  WRK_THREADS [2]  WARMUP [3s]
#   PIPELINE [shipped]  shipped: the shipped orderd.conf's orders pipeline
#                       (orders, sqlite, webhook to a local nginx 204)
#                       processing while intake is measured;
#                       intake: http -> durable spool only (no stages after)
#   HTTP_THREADS [2]  (the shipped value; http `threads`)  SYNC [true] (spool sync)
#   GROUP_DELAY [1ms]  (spool group_delay, the shipped value; 0: no gathering)
#   WORKERS [2]  BATCH [1024]  QUEUE [4096]  SQLITE_SYNC [full]  CHECKPOINT [32MiB]
#   PERF=1  record `perf record` (PERF_ARGS [-g]) of orderd during the run into $PERF_OUT
#           [./intake.perf.data]
#   ROUNDS [1]  more than 1: after the first (reported in full), run nginx
#           and orderd again in turn, print each round's ratio and the median
#           (nginx's own rate moves by tens of percent between runs on a
#           shared machine; alternating rounds keep the ratio honest)
# On a busy or shared machine compare the "CPU ... per request" line, which
# moves far less than requests/s.
# Everything listens on 127.0.0.1; the temporary directory (state, logs) is on
# $TMPDIR (default /tmp): put it on the disk you mean, tmpfs makes fsync free.
NAME=intake.sh
. "$(dirname "$0")/benchlib.sh"
DURATION=${DURATION:-15s} CONNS=${CONNS:-64} WRK_THREADS=${WRK_THREADS:-2} WARMUP=${WARMUP:-3s}
PIPELINE=${PIPELINE:-shipped} HTTP_THREADS=${HTTP_THREADS:-2} SYNC=${SYNC:-true} GROUP_DELAY=${GROUP_DELAY:-1ms}
WORKERS=${WORKERS:-2} BATCH=${BATCH:-1024} QUEUE=${QUEUE:-4096} SQLITE_SYNC=${SQLITE_SYNC:-full} CHECKPOINT=${CHECKPOINT:-32MiB}

NGX_PORT=$($U free-port) HOOK_PORT=$($U free-port) OD_PORT=$($U free-port) ADMIN_PORT=$($U free-port)

# ---- nginx: the baseline (return 202) and the webhook receiver (204) ----
mkdir -p "$T/nginx"
cat > "$T/nginx/nginx.conf" <<EOF
worker_processes auto;
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
    server { listen 127.0.0.1:$NGX_PORT; location / { return 202; } }
    server { listen 127.0.0.1:$HOOK_PORT; location / { return 204; } }
}
EOF
nginx -p "$T/nginx" -c "$T/nginx/nginx.conf" -e "$T/nginx/error.log" 2>>"$T/nginx/error.log" &
PIDS+=($!)
wait_port "$NGX_PORT" || { echo "nginx did not start:" >&2; cat "$T/nginx/error.log" >&2; exit 1; }

# ---- orderd ----
SCHEMA=$HERE/../../etc/orderd/order.schema.json
if [ "$PIPELINE" = intake ]; then
    STAGES=""
else
    STAGES="transforms = ( { plugin = \"orders\"; } );
    store = { plugin = \"sqlite\"; path = \"orders.db\"; synchronous = \"$SQLITE_SYNC\"; checkpoint_size = \"$CHECKPOINT\"; };
    publish = ( { plugin = \"webhook\"; format = \"cloudevents\"; source = \"/orderd/orders\";
                  subscribers = ( { name = \"bench\"; url = \"http://127.0.0.1:$HOOK_PORT/events\"; batch_max = 100; } ); } );"
fi
cat > "$T/orderd.conf" <<EOF
state_dir = "$T/state";
log = { level = "warn"; };
admin = { listen = "127.0.0.1:$ADMIN_PORT"; };
workers = $WORKERS;
queue_size = $QUEUE;
batch = { max = $BATCH; };
pipelines = ( {
    name = "orders";
    input = { plugin = "http"; listen = "127.0.0.1:$OD_PORT"; schema = "$SCHEMA";
              max_body = "1MiB"; threads = $HTTP_THREADS; };
    spool = { max_bytes = "4GiB"; sync = $SYNC; group_delay = "$GROUP_DELAY"; };
    $STAGES
} );
EOF
mkdir -p "$T/state"
"$ORDERD" -c "$T/orderd.conf" -P "$PLUGINS" > "$T/orderd.out" 2> "$T/orderd.log" &
OD_PID=$!
PIDS+=("$OD_PID")
wait_port "$OD_PORT" || { echo "orderd did not start:" >&2; cat "$T/orderd.log" >&2; exit 1; }
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
       -d '{"customerId":"c","currency":"EUR","items":[{"sku":"s","qty":1,"price":1}]}' \
       "http://127.0.0.1:$OD_PORT/orders")
[ "$code" = 202 ] || { echo "orderd answered $code to a valid order" >&2; cat "$T/orderd.log" >&2; exit 1; }

cpu_ticks() {   # cpu_ticks PID : user+system clock ticks so far
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

ctx_switches() {   # ctx_switches PID : context switches of all its threads so far
    cat /proc/"$1"/task/*/status 2>/dev/null |
        awk '/^(non)?voluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

sync_stats() {  # group commits, records in them, seconds in fdatasync so far
    local m
    for m in orderd_spool_commits_total orderd_spool_appends_total orderd_spool_sync_seconds_total; do
        printf '%s ' "$($U metric "http://127.0.0.1:$ADMIN_PORT/metrics" "$m")"
    done
}

# run_wrk NAME PORT [PID] : warm-up, then the measured run into $T/NAME.wrk;
# with PID, that process's CPU ticks over the measured run in $cpu0/$cpu1
run_wrk() {
    local name=$1 port=$2 pid=${3:-}
    wrk -t "$WRK_THREADS" -c "$CONNS" -d "$WARMUP" -s "$HERE/post.lua" \
        "http://127.0.0.1:$port/orders" -- "w$name$$" > "$T/$name.warm"
    [ -n "$pid" ] && { cpu0=$(cpu_ticks "$pid"); cs0=$(ctx_switches "$pid"); sync0=$(sync_stats); }
    wrk -t "$WRK_THREADS" -c "$CONNS" -d "$DURATION" --latency -s "$HERE/post.lua" \
        "http://127.0.0.1:$port/orders" -- "$name$$" > "$T/$name.wrk"
    [ -n "$pid" ] && { cpu1=$(cpu_ticks "$pid"); cs1=$(ctx_switches "$pid"); sync1=$(sync_stats); }
    return 0
}

echo "# orderd intake benchmark"
$U machine
echo "build: $BUILD ($(cd "$HERE" && git rev-parse --short HEAD 2>/dev/null || echo '?'))"
echo "command: wrk -t $WRK_THREADS -c $CONNS -d $DURATION --latency -s post.lua (408-byte order, unique id per request)"
echo "orderd: pipeline=$PIPELINE http threads=$HTTP_THREADS spool sync=$SYNC group_delay=$GROUP_DELAY workers=$WORKERS batch.max=$BATCH queue_size=$QUEUE sqlite synchronous=$SQLITE_SYNC checkpoint_size=$CHECKPOINT"
echo

run_wrk nginx "$NGX_PORT"
if [ "${PERF:-0}" = 1 ]; then
    perf record ${PERF_ARGS:--g} -p "$OD_PID" -o "${PERF_OUT:-$PWD/intake.perf.data}" 2>"$T/perf.log" &
    PERF_PID=$!
fi
run_wrk orderd "$OD_PORT" "$OD_PID"
if [ -n "${PERF_PID:-}" ]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID"
    echo "perf data: ${PERF_OUT:-$PWD/intake.perf.data}"
fi

read -r n_rps n_p50 n_p99 n_bad n_err < <($U wrk "$T/nginx.wrk")
read -r o_rps o_p50 o_p99 o_bad o_err < <($U wrk "$T/orderd.wrk")
spool=$($U metric "http://127.0.0.1:$ADMIN_PORT/metrics" orderd_spool_records)
printf '%-8s %12s %10s %10s %8s %8s\n' "" "requests/s" "p50 ms" "p99 ms" "non-2xx" "errors"
printf '%-8s %12.0f %10.3f %10.3f %8s %8s\n' nginx "$n_rps" "$n_p50" "$n_p99" "$n_bad" "$n_err"
printf '%-8s %12.0f %10.3f %10.3f %8s %8s\n' orderd "$o_rps" "$o_p50" "$o_p99" "$o_bad" "$o_err"
ratio=$(awk -v a="$o_rps" -v b="$n_rps" 'BEGIN { printf "%.1f", (b > 0) ? 100 * a / b : 0 }')
echo "orderd/nginx requests/s: $ratio %   (target >= 50 %: $(awk -v r="$ratio" 'BEGIN { print (r >= 50) ? "met" : "MISSED" }'))"
echo "orderd p99: $o_p99 ms   (target < 10 ms: $(awk -v p="$o_p99" 'BEGIN { print (p < 10) ? "met" : "MISSED" }'))"
awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v d="$DURATION" -v r="$o_rps" 'BEGIN {
    sub(/s$/, "", d); s = t / hz
    printf "orderd CPU during the measured run: %.1f s of %s s (%.0f %% of one core), %.1f us per request\n", s, d, 100 * s / d, 1e6 * s / (r * d) }'
awk -v c=$((cs1 - cs0)) -v d="$DURATION" -v r="$o_rps" 'BEGIN {
    sub(/s$/, "", d); printf "orderd context switches during the run: %.0f per second, %.2f per request\n", c / d, c / (r * d) }'
awk -v a="$sync0" -v b="$sync1" 'BEGIN {
    split(a, x, " "); split(b, y, " "); c = y[1] - x[1]; r = y[2] - x[2]; t = y[3] - x[3]
    if (c > 0) printf "spool group commits during the run: %d, %.1f records each, fdatasync %.3f ms on average\n", c, r / c, 1000 * t / c }'
echo "spool records still queued after the run: $spool"

ROUNDS=${ROUNDS:-1}
if [ "$ROUNDS" -gt 1 ]; then
    printf 'round 1: nginx %.0f, orderd %.0f requests/s (p99 %s ms): %s %%\n' \
        "$n_rps" "$o_rps" "$o_p99" "$ratio"
    ratios=$ratio
    for ((k = 2; k <= ROUNDS; k++)); do
        run_wrk nginx "$NGX_PORT"
        run_wrk orderd "$OD_PORT"
        read -r n_rps _ < <($U wrk "$T/nginx.wrk")
        read -r o_rps _ o_p99 o_bad o_err < <($U wrk "$T/orderd.wrk")
        [ "$o_bad" != 0 ] || [ "$o_err" != 0 ] &&
            echo "WARNING: round $k: orderd had $o_bad non-2xx responses and $o_err socket errors" \
                 "(a full spool answers 503)" >&2
        r=$(awk -v a="$o_rps" -v b="$n_rps" 'BEGIN { printf "%.1f", (b > 0) ? 100 * a / b : 0 }')
        printf 'round %d: nginx %.0f, orderd %.0f requests/s (p99 %s ms): %s %%\n' \
            "$k" "$n_rps" "$o_rps" "$o_p99" "$r"
        ratios="$ratios $r"
    done
    med=$(echo "$ratios" | tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    echo "median orderd/nginx over $ROUNDS rounds: $med %   (target >= 50 %: $(awk -v r="$med" 'BEGIN { print (r >= 50) ? "met" : "MISSED" }'))"
fi
if [ "$o_bad" != 0 ] || [ "$o_err" != 0 ]; then
    echo "WARNING: orderd had $o_bad non-2xx responses and $o_err socket errors" >&2
    tail -n 5 "$T/orderd.log" >&2
fi
