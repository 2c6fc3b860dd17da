# e2e-lib.sh - helpers shared by the end-to-end tests (e2e-*.sh) of the
# shipped order pipeline.  Sourced after lib.sh.  Every test runs a copy of
# etc/orderd/orderd.conf + conf.d/, edited only where a test machine must
# differ (ports, subscribers, faster retries), so the shipped file is what is
# tested.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${TOP_SRCDIR:?run through make check}"
: "${TESTS_SRCDIR:=$TOP_SRCDIR/tests}"
PY=/usr/bin/python3
CLIENT="$TESTS_SRCDIR/tools/e2e_client.py"
RECEIVER="$TESTS_SRCDIR/tools/receiver.py"
ETC="$T/etc"
DB="$T/state/orders.db"

# e2e_conf : copy the shipped configuration to $ETC and make it test-local:
# both listeners on 127.0.0.1:0, webhook retries in milliseconds.  The
# subscribers come from e2e_subscribers.
e2e_conf() {
    mkdir -p "$ETC"
    cp -a "$TOP_SRCDIR/etc/orderd/." "$ETC/"
    sed -i -e 's/listen = "127\.0\.0\.1:9464"/listen = "127.0.0.1:0"/' \
           -e 's/listen = "127\.0\.0\.1:8080"/listen = "127.0.0.1:0"/' \
           -e 's|source = "/orderd/orders";|&\n        retry_base = "50ms"; retry_cap = "200ms";|' "$ETC/orderd.conf"
    grep -q 'retry_base = "50ms"' "$ETC/orderd.conf" && [ "$(grep -c '127.0.0.1:0' "$ETC/orderd.conf")" -eq 2 ] ||
        { fail "the shipped orderd.conf no longer has the lines the e2e tests edit"; finish; }
}

# start_receiver NAME [receiver.py args...] : $T/NAME.port, log $T/NAME.ndjson
start_receiver() {
    local name=$1; shift
    "$PY" "$RECEIVER" --port 0 --port-file "$T/$name.port" --log "$T/$name.ndjson" "$@" \
        > /dev/null 2> "$T/$name.rcv.log" &
    PIDS+=("$!")
    eval "RPID_$name=$!"
    touch "$T/$name.ndjson"
    wait_until 10 test -s "$T/$name.port" || { fail "receiver $name did not start"; finish; }
}

# receiver_port NAME
receiver_port() { cat "$T/$1.port"; }

# receiver_control NAME JSON : POST /__control
receiver_control() {
    curl -sf -o /dev/null -X POST -d "$2" "http://127.0.0.1:$(receiver_port "$1")/__control"
}

# e2e_subscribers "NAME:MAX_ATTEMPTS" ... : conf.d/subscribers.conf pointing at
# the receivers of those names (started first), batching as the shipped one
e2e_subscribers() {
    local f="$ETC/conf.d/subscribers.conf" sep="" spec name max
    {
        echo "subscribers = ("
        for spec in "$@"; do
            name=${spec%%:*}; max=${spec#*:}
            printf '%s  { name = "%s"; url = "http://127.0.0.1:%s/events"; event_types = [ ]; max_attempts = %s; ttl = "24h"; batch_max = 100; }\n' \
                "$sep" "$name" "$(receiver_port "$name")" "$max"
            sep=","
        done
        echo ");"
    } > "$f"
}

# e2e_start NAME : run the daemon on $ETC/orderd.conf; $APORT (the Order
# API's port, also in $T/api.port for e2e_client.py) and $ODPORT (admin)
e2e_start() {
    start_orderd "$1" "$ETC/orderd.conf" -S "$T/state" || return 1
    APORT=$(curl -s "http://127.0.0.1:$ODPORT/metrics" |
            sed -n 's/^orderd_plugin_http_port{pipeline="orders"[^}]*} \([0-9]*\)$/\1/p')
    [ -n "$APORT" ] || { fail "no orderd_plugin_http_port metric"; return 1; }
    echo "$APORT" > "$T/api.port.tmp" && mv "$T/api.port.tmp" "$T/api.port"
}

# api METHOD PATH [BODY [curl args...]] : Order API request; $API_STATUS,
# body in $T/api.body, headers in $T/api.hdr
api() {
    local method=$1 path=$2; shift 2
    local body=()
    if [ $# -gt 0 ]; then body=(-H 'Content-Type: application/json' --data-binary "$1"); shift; fi
    API_STATUS=$(curl -s -X "$method" -D "$T/api.hdr" -o "$T/api.body" -w '%{http_code}' \
                 "${body[@]}" "$@" "http://127.0.0.1:$APORT$path")
}

# admin METHOD PATH [BODY] : admin API request; $ADM_STATUS, body in $T/adm.body
admin() {
    local method=$1 path=$2; shift 2
    local body=()
    [ $# -gt 0 ] && body=(-H 'Content-Type: application/json' --data-binary "$1")
    ADM_STATUS=$(curl -s -X "$method" -o "$T/adm.body" -w '%{http_code}' "${body[@]}" \
                 "http://127.0.0.1:$ODPORT$path")
}

# jq_body FILE PYEXPR : evaluate a Python expression on the JSON in FILE (as j)
jq_body() { "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# sql QUERY : on the orders database, read-only
sql() { "$PY" "$CLIENT" sql "$DB" "$1"; }

# post_orders ARGS... : e2e_client.py post against the current daemon
post_orders() { "$PY" "$CLIENT" post --port-file "$T/api.port" "$@"; }

# received NAME : distinct event ids receiver NAME answered 2xx, sorted
received() { "$PY" "$CLIENT" received "$T/$1.ndjson"; }
received_count() { received "$1" | wc -l; }
has_received() { [ "$(received_count "$1")" -ge "$2" ]; }

# event_ids : every event id in the events table, sorted
event_ids() { sql "SELECT id FROM events" | LC_ALL=C sort; }

# metric NAME_AND_LABELS : its value from /metrics (empty when absent)
metric() {
    curl -s "http://127.0.0.1:$ODPORT/metrics" | grep -F "$1" | grep -v '^#' | head -n 1 | awk '{ print $NF }'
}

# order JSON for id $1
order_json() {
    printf '{"id":"%s","customerId":"c-1","currency":"EUR","items":[{"sku":"s1","qty":2,"price":4.5}]}' "$1"
}

# wait_for TIMEOUT_S COMMAND... : like wait_until, but the limit is wall
# time, so a slow COMMAND (a python3 query) cannot stretch it
wait_for() {
    local end=$((SECONDS + $1)); shift
    while :; do
        "$@" && return 0
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.1
    done
}
