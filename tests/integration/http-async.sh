#!/bin/bash
# The http input's event-driven path through the real daemon (plugin ABI
# 1.1 submit_async): concurrent POSTs all answered 202 and all spooled and
# published once; acknowledge = "processed" answers only after the stages
# ran (testkit sleep, longer than request_timeout), 422 with the reason for
# a dead-lettered order, 504 after acknowledge_timeout; max_header refuses
# oversized headers with 431; max_connections counts all the loops
# together; one event thread keeps many requests waiting at once;
# Idempotency-Key replays in both modes and is released after a 422/504;
# stopping the daemon while requests wait answers them 503.  HTTPS with API
# keys on the event loops (each loop's own TLS daemon): 202 with a key, 401
# without, concurrent HTTPS POSTs all 202, plain HTTP refused.
. "$(dirname "$0")/lib.sh"

# post PORT PATH BODY [curl args...] : $PS status, $PT seconds, body in $T/post.body
post() {
    local port=$1 path=$2 body=$3 out; shift 3
    out=$(curl -s -m 30 -D "$T/post.hdr" -o "$T/post.body" -w '%{http_code} %{time_total}' \
          -H 'Content-Type: application/json' --data-binary "$body" "$@" \
          "http://127.0.0.1:$port$path")
    PS=${out%% *} PT=${out#* }
}
# need CMD... ; all DESC : DESC passes when every `need` since the last `all` did
NEED=0
need() { "$@" || NEED=1; }
not() { ! "$@"; }
all() { if [ "$NEED" -eq 0 ]; then ok "$1"; else fail "$1"; fi; NEED=0; }
slower() { awk -v t="$1" -v m="$2" 'BEGIN { exit !(t >= m) }'; }   # slower T MIN_S
faster() { awk -v t="$1" -v m="$2" 'BEGIN { exit !(t < m) }'; }    # faster T MAX_S
api_port() {   # api_port PIPELINE : the Order API port of that pipeline
    curl -s "http://127.0.0.1:$ODPORT/metrics" |
        sed -n "s/^orderd_plugin_http_port{pipeline=\"$1\"[^}]*} \\([0-9]*\\)\$/\\1/p"
}

# concurrent PORT N PARALLEL PREFIX : N POSTs of ids PREFIX<i> over PARALLEL
# connections at once; prints "<count of 202> <seconds>"
concurrent() {
    python3 - "$@" <<'PY'
import http.client, sys, threading, time
port, n, par, prefix = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ok = [0]
lock = threading.Lock()
def run(k):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    for i in range(k, n, par):
        conn.request("POST", "/orders", body='{"id":"%s%d","n":%d}' % (prefix, i, i),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        if r.status == 202:
            with lock:
                ok[0] += 1
        else:
            print("status %d for %s%d" % (r.status, prefix, i), file=sys.stderr)
    conn.close()
t0 = time.monotonic()
ts = [threading.Thread(target=run, args=(k,)) for k in range(par)]
for t in ts: t.start()
for t in ts: t.join()
print(ok[0], "%.3f" % (time.monotonic() - t0))
PY
}

ids_once() {   # ids_once FILE PREFIX N : PREFIX0..PREFIX<N-1> each published exactly once
    local got
    got=$(grep -o "\"id\":\"$2[0-9]*\"" "$1" | sort | uniq -c | awk '$1 == 1' | wc -l)
    [ "$got" -eq "$3" ] && [ "$(grep -c "\"id\":\"$2" "$1")" -eq "$3" ] ||
        { echo "ids_once $1: $got of $3 exactly once" >&2; return 1; }
}

pipeline() {   # pipeline NAME 'HTTP KEYS' 'OTHER SECTIONS'
    printf '{ name = "%s";\n  input = { plugin = "http"; listen = "127.0.0.1:0"; %s };\n  %s\n  publish = ( { plugin = "file"; path = "%s/%s.ndjson"; } ); }' \
        "$1" "$2" "$3" "$T" "$1"
}
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$T/tls.key" -out "$T/tls.crt" 2>/dev/null
printf '# test keys\nk-secret-1\n' > "$T/keys"
cat > "$T/a.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
workers = 2;
retry = { max_attempts = 2; backoff_base = "2ms"; backoff_cap = "10ms"; };
pipelines = (
$(pipeline durable 'threads = 2;' 'spool = { sync = true; };'),
$(pipeline slow 'threads = 2; acknowledge = "processed"; request_timeout = "1s";' 'spool = { sync = true; };
  transforms = ( { plugin = "testkit"; sleep = "1500ms"; } );'),
$(pipeline reject 'threads = 2; acknowledge = "processed";' '
  transforms = ( { plugin = "testkit"; reject_field = "poison"; reject_reason = "poison order refused"; } );'),
$(pipeline late 'threads = 2; acknowledge = "processed"; acknowledge_timeout = "300ms";' 'spool = { sync = true; };
  transforms = ( { plugin = "testkit"; sleep = "1500ms"; } );'),
$(pipeline parked 'threads = 1; acknowledge = "processed";' 'spool = { sync = true; };
  transforms = ( { plugin = "testkit"; pending = true; pending_delay = "1s"; } );'),
$(pipeline secure "threads = 2; tls_cert = \"$T/tls.crt\"; tls_key = \"$T/tls.key\"; api_keys_file = \"$T/keys\";" 'spool = { sync = true; };'),
$(pipeline limited 'threads = 2; max_connections = 8;' '')
);
CONF
start_orderd a "$T/a.conf" || finish
for p in durable slow reject late parked secure limited; do
    declare "PORT_$p=$(api_port $p)"
done
need [ -n "$PORT_durable" ]; need [ -n "$PORT_slow" ]; need [ -n "$PORT_reject" ]; need [ -n "$PORT_late" ]; need [ -n "$PORT_parked" ]; need [ -n "$PORT_secure" ]; need [ -n "$PORT_limited" ]
all "every pipeline has an Order API port"

# ---- acknowledge = "accepted": many requests in flight on 2 threads ----
# (enough of them, long enough, to catch a lost wake-up of an event loop)
read -r n202 secs < <(concurrent "$PORT_durable" 3000 64 d)
check "3000 POSTs over 64 connections all answered 202 ($secs s)" [ "$n202" -eq 3000 ]
check "all 3000 published exactly once" wait_until 30 ids_once "$T/durable.ndjson" d 3000
spool_metric() {   # spool_metric NAME : its value for the durable pipeline
    curl -s "http://127.0.0.1:$ODPORT/metrics" |
        sed -n "s/^orderd_spool_$1{pipeline=\"durable\"} \([0-9.e+-]*\)\$/\1/p"
}
appends=$(spool_metric appends_total) commits=$(spool_metric commits_total) syncs=$(spool_metric sync_seconds_total)
need [ "${appends:-0}" -ge 3000 ]; need [ "${commits:-0}" -ge 1 ]; need [ "${commits:-0}" -le "${appends:-0}" ]
need awk -v t="${syncs:-0}" 'BEGIN { exit !(t > 0) }'
all "spool counters: $appends appends in $commits group commits, $syncs s in fdatasync"
# the pipeline kept up, so it took the submitted messages themselves
# (records are read back only after a restart or in a long backlog)
hits=$(spool_metric memory_hits_total) reads=$(spool_metric reads_total)
need [ "${hits:-0}" -ge 1 ]; need [ $(( ${hits:-0} + ${reads:-0} )) -eq "${appends:-0}" ]
all "every spooled record handed over once: $hits from memory, $reads read back"
# max_header (8KiB by default): 6,000 bytes of headers pass; 9,000 get 431
# with a problem body; 20,000 (past the connection's memory) still get 431
post "$PORT_durable" /orders '{"id":"h1"}' -H "X-Pad: $(head -c 6000 /dev/zero | tr '\0' a)"
need [ "$PS" = 202 ]
post "$PORT_durable" /orders '{"id":"h3"}' -H "X-Pad: $(head -c 9000 /dev/zero | tr '\0' a)"
need [ "$PS" = 431 ]; need grep -qi '^content-type: application/problem+json' "$T/post.hdr"
need grep -q '"status":431' "$T/post.body"; need grep -q 'larger than 8192 bytes' "$T/post.body"
post "$PORT_durable" /orders '{"id":"h2"}' -H "X-Pad: $(head -c 20000 /dev/zero | tr '\0' a)"
need [ "$PS" = 431 ]
all "max_header: 6000 bytes of headers accepted, 9000 refused with a 431 problem, 20000 with 431"
post "$PORT_durable" /orders '{"id":"k1"}' -H 'Idempotency-Key: key-accepted'
need [ "$PS" = 202 ]; need grep -q '"status":"accepted"' "$T/post.body"
all "accepted: keyed POST 202"
post "$PORT_durable" /orders '{"id":"k1"}' -H 'Idempotency-Key: key-accepted'
need [ "$PS" = 202 ]; need grep -qi '^Idempotent-Replayed: true' "$T/post.hdr"
all "accepted: Idempotency-Key replayed"

# ---- max_connections counts all the loops together ----
# 8 kept-alive connections on 2 loops all served, however the kernel spread
# them; a 9th is closed; once one closes, a new one is served.
conn_limit() {
    python3 - "$1" <<'PY'
import http.client, sys, time
port = int(sys.argv[1])
def post(c, i):
    c.request("POST", "/orders", body='{"id":"lim%s"}' % i,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    return r.status
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(8)]
print("first8", sum(post(c, i) == 202 for i, c in enumerate(conns)))
time.sleep(0.2)
extra = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
try:
    print("ninth", post(extra, "x"))
except (OSError, http.client.HTTPException):
    print("ninth refused")
conns[0].close()
time.sleep(0.5)
again = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
print("after_close", post(again, "y"))
PY
}
conn_limit "$PORT_limited" > "$T/limit.out" 2>&1
need grep -qx 'first8 8' "$T/limit.out"; need grep -qx 'ninth refused' "$T/limit.out"
need grep -qx 'after_close 202' "$T/limit.out"
all "max_connections = 8 on 2 loops: 8 served, a 9th refused, served again after one closed ($(tr '\n' ' ' < "$T/limit.out"))"

# ---- HTTPS and API keys on the event loops ----
code=$(curl -s -m 10 -o "$T/tls.body" -w '%{http_code}' --cacert "$T/tls.crt" \
       -H 'Content-Type: application/json' -H 'Authorization: Bearer k-secret-1' \
       --data-binary '{"id":"tls1"}' "https://127.0.0.1:$PORT_secure/orders")
check "HTTPS POST with an API key: 202" [ "$code" = 202 ]
code=$(curl -s -m 10 -o "$T/tls.body" -w '%{http_code}' --cacert "$T/tls.crt" \
       -H 'Content-Type: application/json' --data-binary '{"id":"tls2"}' \
       "https://127.0.0.1:$PORT_secure/orders")
need [ "$code" = 401 ]; need grep -q '"status":401' "$T/tls.body"
all "HTTPS POST without a key: 401 problem"
code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
       -H 'X-API-Key: k-secret-1' --data-binary '{"id":"tls3"}' "http://127.0.0.1:$PORT_secure/orders")
check "plain HTTP to the TLS port gets no answer" [ "$code" = 000 ]
read -r ntls secs < <(python3 - "$PORT_secure" "$T/tls.crt" <<'PY'
import http.client, ssl, sys, threading, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ok = [0]
lock = threading.Lock()
def run(k):
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=ctx)
    for i in range(k, 200, 20):
        conn.request("POST", "/orders", body='{"id":"tc%d"}' % i,
                     headers={"Content-Type": "application/json", "X-API-Key": "k-secret-1"})
        r = conn.getresponse()
        r.read()
        if r.status == 202:
            with lock:
                ok[0] += 1
    conn.close()
t0 = time.monotonic()
ts = [threading.Thread(target=run, args=(k,)) for k in range(20)]
for t in ts: t.start()
for t in ts: t.join()
print(ok[0], "%.3f" % (time.monotonic() - t0))
PY
)
check "200 HTTPS POSTs over 20 connections all 202 ($secs s)" [ "${ntls:-0}" -eq 200 ]
check "... and published exactly once (with tls1)" wait_until 30 ids_once "$T/secure.ndjson" tc 200
check "tls1 published, tls2 and tls3 not" eval 'grep -q "\"id\":\"tls1\"" "$T/secure.ndjson" && ! grep -q "\"id\":\"tls[23]\"" "$T/secure.ndjson"'

# ---- acknowledge = "processed" ----
post "$PORT_slow" /orders '{"id":"s1"}'
# (request_timeout = 1s: a suspended request is not an idle connection)
need [ "$PS" = 202 ]; need slower "$PT" 1.5
all "processed: 202 only after the 1.5 s stage ran ($PT s)"
check "processed: says processed" grep -q '"id":"s1","status":"processed"' "$T/post.body"
check "processed: published before the answer" grep -q '"id":"s1"' "$T/slow.ndjson"
post "$PORT_slow" /orders/s1/pay '{}' -H 'Idempotency-Key: key-processed'
need [ "$PS" = 202 ]; need grep -q '"command":"pay","status":"processed"' "$T/post.body"
all "processed: command 202"
post "$PORT_slow" /orders/s1/pay '{}' -H 'Idempotency-Key: key-processed'
need [ "$PS" = 202 ]; need grep -qi '^Idempotent-Replayed: true' "$T/post.hdr"; need faster "$PT" 0.5
all "processed: Idempotency-Key replayed at once ($PT s)"

post "$PORT_reject" /orders '{"id":"r1","poison":true}' -H 'Idempotency-Key: key-reject'
need [ "$PS" = 422 ]; need grep -qi '^Content-Type: application/problem+json' "$T/post.hdr"
all "processed: dead-lettered order gets 422"
check "processed: 422 carries the reason" grep -q '"detail":"poison order refused"' "$T/post.body"
post "$PORT_reject" /orders '{"id":"r1","poison":true}' -H 'Idempotency-Key: key-reject'
need [ "$PS" = 422 ]; need not grep -qi '^Idempotent-Replayed' "$T/post.hdr"
all "processed: key released after 422 (runs again, not replayed)"
post "$PORT_reject" /orders '{"id":"r2"}'
check "processed: a good order beside it is 202" [ "$PS" = 202 ]

post "$PORT_late" /orders '{"id":"l1"}' -H 'Idempotency-Key: key-late'
need [ "$PS" = 504 ]; need slower "$PT" 0.3; need faster "$PT" 1.4
all "processed: 504 after acknowledge_timeout ($PT s)"
check "processed: 504 says it may still be processed" grep -q 'may still be processed' "$T/post.body"
post "$PORT_late" /orders '{"id":"l1"}' -H 'Idempotency-Key: key-late'
check "processed: key released after 504 (not 409)" [ "$PS" = 504 ]
check "processed: the late order still completes" wait_until 10 grep -q '"id":"l1"' "$T/late.ndjson"

# One event thread, 20 requests parked at once for a 1 s settle: a thread
# blocked per request would need 20 s.
read -r n202 secs < <(concurrent "$PORT_parked" 20 20 p)
need [ "$n202" -eq 20 ]; need faster "$secs" 8
all "one thread: 20 parked requests all 202 in $secs s"
stop_orderd
check "daemon exited cleanly" [ "$ODRC" -eq 0 ]

# ---- stop while requests wait for their outcome ----
cat > "$T/b.conf" <<CONF
state_dir = "$T/state-b";
admin = { listen = "127.0.0.1:0"; };
workers = 4;
pipelines = (
$(pipeline waiting 'threads = 2; acknowledge = "processed";' 'spool = { sync = true; };
  transforms = ( { plugin = "testkit"; pending = true; pending_delay = "5s"; } );')
);
CONF
start_orderd b "$T/b.conf" || finish
PORT_waiting=$(api_port waiting)
WPIDS=()
for i in 1 2 3; do
    curl -s -m 30 -o "$T/w$i.body" -w '%{http_code}' -H 'Content-Type: application/json' \
         -H "Idempotency-Key: key-w$i" --data-binary "{\"id\":\"w$i\"}" \
         "http://127.0.0.1:$PORT_waiting/orders" > "$T/w$i.code" &
    WPIDS+=($!)
done
sleep 0.5
t0=$(date +%s%N)
stop_orderd
t1=$(date +%s%N)
wait "${WPIDS[@]}"
check "stopping daemon exited cleanly" [ "$ODRC" -eq 0 ]
for i in 1 2 3; do
    need [ "$(cat "$T/w$i.code")" = 503 ]; need grep -q 'shutting down' "$T/w$i.body"
    all "waiting request $i answered 503 ($(cat "$T/w$i.code"))"
done
check "the stop logged the answered waiters" grep -q 'answered 3 waiting requests 503' "$T/b.log"
check "no sanitizer report" sh -c "! grep -q 'Sanitizer' '$T/a.log' '$T/b.log'"
echo "stop took $(( (t1 - t0) / 1000000 )) ms"
finish
