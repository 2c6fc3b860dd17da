# lib.sh - shared helpers for integration tests that run the real daemon.
# Every process a test starts is recorded and stopped (by PID) on exit; the
# temporary directory is removed.  Environment from tests/Makefile.am:
# ORDERD_BIN, ORDERD_PLUGIN_PATH, TOP_SRCDIR, TOP_BUILDDIR, TESTS_SRCDIR.
set -u

: "${ORDERD_BIN:?run through make check}"
T=$(mktemp -d "${TMPDIR:-/tmp}/orderd-it.XXXXXX")
PIDS=()
FAILS=0

cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    if [ -n "${KEEP:-}" ]; then echo "KEEP: left $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
ok()   { echo "ok: $*"; }
check() {   # check "description" command...
    local what=$1; shift
    if "$@"; then ok "$what"; else fail "$what"; fi
}
finish() {
    if [ "$FAILS" -ne 0 ]; then
        echo "$FAILS check(s) failed; logs in $T:" >&2
        for f in "$T"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 40 "$f" >&2; }; done
        exit 1
    fi
    exit 0
}

# wait_until TIMEOUT_S COMMAND... : poll every 50 ms
wait_until() {
    local limit=$(( $1 * 20 )); shift
    for _ in $(seq "$limit"); do
        if "$@"; then return 0; fi
        sleep 0.05
    done
    return 1
}

# rmq_ports : sets RMQ_PORT to the first of four consecutive free ports
# (AMQP, AMQPS, Erlang distribution, epmd: tests/peers/rabbitmq.sh) below
# the ephemeral range and away from 35672-35682, which rabbitmqctl uses;
# a fixed port collides with another run of the suite on the same host.
rmq_ports() {
    local p
    for _ in $(seq 50); do
        p=$((20000 + RANDOM % 10000))
        if python3 -c "import socket
for i in range(4):
    s=socket.socket(); s.bind(('127.0.0.1',$p+i)); s.close()" 2>/dev/null; then
            export RMQ_PORT=$p
            return 0
        fi
    done
    return 1
}

lines() { [ -f "$1" ] && wc -l < "$1" || echo 0; }
has_lines() { [ "$(lines "$1")" -ge "$2" ]; }

# start_orderd NAME CONF [ARGS...] : runs in the background, log in $T/NAME.log,
# (KEEP=1 keeps the temporary directory for a post-mortem.)
# PID in $ODPID, admin port (if any) in $ODPORT once it is up.
start_orderd() {
    local name=$1 conf=$2; shift 2
    "$ORDERD_BIN" -c "$conf" "$@" > "$T/$name.out" 2> "$T/$name.log" &
    ODPID=$!
    PIDS+=("$ODPID")
    if ! wait_until 20 grep -q "orderd .* running" "$T/$name.log"; then
        fail "$name did not start"; cat "$T/$name.log" >&2; return 1
    fi
    ODPORT=$(sed -n 's/.*admin: listening on .*(port \([0-9]*\)).*/\1/p' "$T/$name.log" | tail -n 1)
    return 0
}

# stop_orderd : SIGTERM and wait; sets $ODRC to the exit status
stop_orderd() {
    kill -TERM "$ODPID" 2>/dev/null
    wait "$ODPID"; ODRC=$?
}

http_get() {   # http_get PATH : status in $HTTP_STATUS, body in $HTTP_BODY (a file)
    HTTP_BODY="$T/http.body"
    HTTP_STATUS=$(curl -s -o "$HTTP_BODY" -w '%{http_code}' "http://127.0.0.1:$ODPORT$1")
}

# make_lines FILE FROM TO : NDJSON orders with ids o<N>
make_lines() {
    local f=$1 from=$2 to=$3
    seq "$from" "$to" | awk '{ printf "{\"id\":\"o%d\",\"customerId\":\"c-%d\",\"n\":%d}\n", $1, $1 % 7, $1 }' >> "$f"
}

# exactly_once FILE N : every id o1..oN appears exactly once
exactly_once() {
    local f=$1 n=$2 got dups
    # the first id on each line (an envelope repeats it inside its body)
    sed -n 's/^[^o]*"id":"\(o[0-9]*\)".*/\1/p' "$f" > "$T/ids.txt"
    got=$(sort -u "$T/ids.txt" | wc -l)
    dups=$(sort "$T/ids.txt" | uniq -d | wc -l)
    [ "$got" -eq "$n" ] && [ "$dups" -eq 0 ] && [ "$(lines "$f")" -eq "$n" ] ||
        { echo "exactly_once $f: $got distinct of $n, $dups duplicated, $(lines "$f") lines" >&2; return 1; }
}
