#!/bin/bash
# End to end on the shipped etc/orderd/azure.conf (copied, and edited only
# where a test machine must differ: local peers, ports 0, credentials):
#   POST /orders -> servicebus (a private RabbitMQ 3.x, AMQP 1.0, SASL PLAIN)
#   -> servicebus input -> validate -> enrich -> orders -> cosmos (the
#   Cosmos DB-compatible npm server, master key) -> eventgrid (the HTTPS
#   receiver, access key, every batch judged by @azure/eventgrid's deserializer).
#   1. N orders: each 202'd order is exactly one document (read back with
#      @azure/cosmos) and exactly one notification (one event id, delivered once).
#   2. A second batch while orderd is restarted (SIGTERM) and the broker is
#      restarted with its state: each 202'd order is exactly one document and
#      has exactly one distinct event id; repeated deliveries of that id are
#      allowed (at least once) and reported.
#   3. 202 means Service Bus has it (acknowledge = "processed"): with the
#      broker down an order gets no 202; it waits in the spool and is stored
#      exactly once after the broker is back.
. "$(dirname "$0")/lib.sh"

: "${TOP_SRCDIR:?run through make check}"
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { echo "FAIL: rabbitmq-server not installed (contrib/deps.sh installs it)"; exit 1; }
command -v node >/dev/null || { echo "FAIL: node not found (contrib/deps.sh installs it)"; exit 1; }
NM="$("$TESTS_SRCDIR/peers/setup.sh")/node_modules" || { echo "FAIL: tests/peers/setup.sh could not install the npm tools"; exit 1; }
export NODE_PATH="$NM"
PY=/usr/bin/python3
CLIENT="$TESTS_SRCDIR/tools/e2e_client.py"
RMQ="$TESTS_SRCDIR/peers/rabbitmq.sh"
# the Cosmos emulator's well-known key (as cosmos-pipeline.sh), an Event Grid test key
CKEY='C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=='
EKEY=ZXZlbnRncmlkLXBlZXItdGVzdC1rZXktMDEyMzQ1Njc4OQ==
N1=${AZ_E2E_N1:-200}
N2=${AZ_E2E_N2:-200}

export RMQ_DIR="$T/rmq" RMQ_QUEUES="orders"
[ -n "${RMQ_PORT:-}" ] || rmq_ports || { fail "no free ports for RabbitMQ"; finish; }
trap '"$RMQ" stop > /dev/null 2>&1; cleanup' EXIT

# throw-away CA + one server certificate for 127.0.0.1 (Cosmos and Event Grid)
( cd "$T" && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=orderd-it-ca \
      -addext basicConstraints=critical,CA:TRUE &&
  openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 &&
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > srv.ext &&
  openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 -extfile srv.ext ) \
  > "$T/openssl.log" 2>&1 || { fail "certificates"; finish; }

"$RMQ" start > "$T/rmq-start.log" 2>&1 || { fail "RabbitMQ did not start"; cat "$T/rmq-start.log" >&2; finish; }

node "$TESTS_SRCDIR/peers/cosmos-server.js" --cert "$T/srv.crt" --key "$T/srv.key" --port 0 \
    --port-file "$T/cosmos.port" --log "$T/cosmos-requests.jsonl" > "$T/cosmos.log" 2>&1 &
PIDS+=("$!")
node "$TESTS_SRCDIR/peers/eventgrid-receiver.js" --port-file "$T/eg.port" --log "$T/eg.ndjson" \
    --cert "$T/srv.crt" --key "$T/srv.key" --eg-key "$EKEY" > "$T/eg.log" 2>&1 &
PIDS+=("$!")
wait_until 30 test -s "$T/cosmos.port" || { fail "cosmos server did not start"; finish; }
wait_until 60 test -s "$T/eg.port" || { fail "event grid receiver did not start"; finish; }
CPORT=$(cat "$T/cosmos.port"); EPORT=$(cat "$T/eg.port")
touch "$T/eg.ndjson"
sdk() {
    COSMOS_ENDPOINT="https://127.0.0.1:$CPORT/" COSMOS_KEY="$CKEY" NODE_EXTRA_CA_CERTS="$T/ca.crt" \
        node "$TESTS_SRCDIR/peers/cosmos-readback.js" "$@"
}
quiet() { "$@" > /dev/null; }
check "database shop, container orders (/id) created with the SDK" quiet sdk setup shop orders /id

# The shipped configuration, made local.  Besides endpoints and credentials:
# RabbitMQ 3.x needs abandon_outcome "released", has no $management node
# (lock_renewal 0), and wants the /amq/queue/ address; the reconnect delay is
# capped at 1 s so the broker restart costs seconds, not the 30 s default.
ETC="$T/etc"
mkdir -p "$ETC" && cp -a "$TOP_SRCDIR/etc/orderd/." "$ETC/"
CONF="$ETC/azure.conf"
$PY - "$CONF" "$RMQ_PORT" "$CPORT" "$EPORT" "$T/ca.crt" "$CKEY" "$EKEY" <<'PY' || { fail "the shipped azure.conf no longer has the lines this test edits"; finish; }
import re, sys
path, rport, cport, eport, ca, ckey, ekey = sys.argv[1:]
s = open(path).read()
def sub(old, new, count):
    global s
    n = s.count(old)
    if n != count:
        sys.exit("expected %d x %r, found %d" % (count, old, n))
    s = s.replace(old, new)
sub('listen = "127.0.0.1:9464"', 'listen = "127.0.0.1:0"', 1)
sub('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"', 1)
sub('url = "amqps://mynamespace.servicebus.windows.net"', 'url = "amqp://127.0.0.1:%s"' % rport, 2)
sub('entity = "orders"', 'entity = "/amq/queue/orders"', 2)
sub('auth = "entra";                        # managed identity, token put on $cbs as jwt',
    'auth = "plain"; username = "guest"; password = "guest"; reconnect_delay_max = "1s";', 1)
sub('      auth = "entra";\n      prefetch',
    '      auth = "plain"; username = "guest"; password = "guest"; reconnect_delay_max = "1s";\n      prefetch', 1)
sub('abandon_outcome = "modified";', 'abandon_outcome = "released";', 1)
sub('lock_renewal = "30s";', 'lock_renewal = "0";', 1)
sub('endpoint = "https://myaccount.documents.azure.com:443/";',
    'endpoint = "https://127.0.0.1:%s/"; ca_file = "%s";' % (cport, ca), 1)
s, n = re.subn(r'auth = "token";\s*token_url = "[^"]*";', 'auth = "key"; key = "%s";' % ckey, s)
if n != 1: sys.exit("cosmos auth/token_url not found")
sub('endpoint = "https://mytopic.westeurope-1.eventgrid.azure.net/api/events";',
    'endpoint = "https://127.0.0.1:%s/api/events"; ca_file = "%s";' % (eport, ca), 1)
s, n = re.subn(r'auth = "entra";\s*token_url = "[^"]*";', 'auth = "key"; key = "%s";' % ekey, s)
if n != 1: sys.exit("eventgrid auth/token_url not found")
if 'table = "skus.json"' not in s: sys.exit("enrich table not found")
open(path, "w").write(s)
PY
check "edited azure.conf passes --check-config" quiet "$ORDERD_BIN" --check-config -c "$CONF"

# start_az NAME : orderd on $CONF, Order API port in $T/api.port
start_az() {
    start_orderd "$1" "$CONF" -S "$T/state" || return 1
    local p
    p=$(curl -s "http://127.0.0.1:$ODPORT/metrics" |
        sed -n 's/^orderd_plugin_http_port{pipeline="intake"[^}]*} \([0-9]*\)$/\1/p')
    [ -n "$p" ] || { fail "no orderd_plugin_http_port metric for intake"; return 1; }
    echo "$p" > "$T/api.port.tmp" && mv "$T/api.port.tmp" "$T/api.port"
}

# accepted FILE... : ids answered 202, sorted and unique
accepted() { cat "$@" | awk '$2 == 202 { print $1 }' | LC_ALL=C sort -u; }

# verify IDS_FILE : "docs_ok extra_docs missing_docs events_ok missing_notif multi_id dup_deliveries invalid_reqs"
# docs: every id has exactly one document in shop/orders (status created) and
# no other document exists; notifications: per order id (data.orderId) the
# distinct event ids among accepted requests, and repeated deliveries.
snapshot() {
    sdk all shop orders > "$T/docs.json" 2> "$T/sdk.err" || return 1
    $PY - "$1" "$T/docs.json" "$T/eg.ndjson" <<'PY'
import collections, json, sys
want = set(l.strip() for l in open(sys.argv[1]) if l.strip())
docs = json.load(open(sys.argv[2]))
ids = collections.Counter(d["id"] for d in docs)
missing_docs = len(want - set(ids))
extra_docs = len(set(ids) - want)
dup_docs = sum(1 for c in ids.values() if c > 1)
bad_status = sum(1 for d in docs if d["id"] in want and d.get("status") not in (None, "created"))
per = collections.defaultdict(collections.Counter)
invalid = 0
for line in open(sys.argv[3]):
    if not line.strip():
        continue
    r = json.loads(line)
    if r.get("method") != "POST":
        continue
    if r.get("status") != 200:
        invalid += 1
        continue
    for ev in json.loads(r["body"]):
        data = ev.get("data") or {}
        oid = data.get("orderId") or ev.get("subject", "").rpartition("/")[2]
        per[oid][ev["id"]] += 1
missing_notif = len(want - set(per))
multi_id = sum(1 for o in want if len(per.get(o, {})) > 1)
dups = sum(c - 1 for o in want for c in per.get(o, {}).values())
print(missing_docs, extra_docs, dup_docs, bad_status, missing_notif, multi_id, dups, invalid)
PY
}
zeros() { local v; for v in "$@"; do [ "$v" -eq 0 ] || return 1; done; }

# wait_for TIMEOUT_S COMMAND... : wall-time bound (each try runs node and python)
wait_for() {
    local end=$((SECONDS + $1)); shift
    while :; do
        "$@" && return 0
        [ "$SECONDS" -ge "$end" ] && return 1
        sleep 0.5
    done
}

all_there() {   # all_there IDS_FILE : every doc and notification present
    local r
    r=$(snapshot "$1") || return 1
    set -- $r
    [ "$1" -eq 0 ] && [ "$5" -eq 0 ]
}

# 1. N1 orders through the whole pipeline --------------------------------------
start_az run1 || finish
"$PY" "$CLIENT" post --port-file "$T/api.port" --count "$N1" --threads 8 --prefix a --out "$T/post1.txt"
accepted "$T/post1.txt" > "$T/ids1.txt"
check "batch 1: all $N1 orders answered 202" [ "$(wc -l < "$T/ids1.txt")" -eq "$N1" ]
awk '$2 != 202' "$T/post1.txt" | sed 's/^/batch 1, not 202: /'
check "batch 1: every order stored and notified" wait_for 120 all_there "$T/ids1.txt"
read -r md xd dd bs mn mi du inv <<< "$(snapshot "$T/ids1.txt")"
echo "batch 1: missing docs $md, extra docs $xd, duplicated docs $dd, bad status $bs, missing notifications $mn, orders with >1 event id $mi, repeated deliveries $du, refused publish requests $inv"
check "batch 1: each order exactly one document, none extra" zeros "$md" "$xd" "$dd" "$bs"
check "batch 1: each order exactly one notification" zeros "$mn" "$mi" "$du"
check "batch 1: every publish request accepted by the SDK's deserializer" \
    zeros "$inv" "$(( $(grep -c '"method":"POST"' "$T/eg.ndjson") - $(grep -c '"verdict":"accepted"' "$T/eg.ndjson") ))"
check "batch 1: every Cosmos request passed the signature check" bash -c "! grep -v '\"auth\":\"ok\"' '$T/cosmos-requests.jsonl' | grep -q ."

# 2. restarts of orderd and of the broker in the middle of a second batch ----
# ids b1..bN2, posted slowly in the background; errors (5xx, no answer) are
# recorded and those orders not counted.
"$PY" "$CLIENT" post --port-file "$T/api.port" --count "$N2" --threads 4 --prefix b --pause 0.1 \
    --retry-conn 15 --out "$T/post2.txt" 2> "$T/post2.log" &
POSTER=$!
PIDS+=("$POSTER")
wait_until 30 has_lines "$T/post2.txt" $((N2 / 5)) || fail "batch 2: posting did not start"
at_stop=$(lines "$T/post2.txt")
stop_orderd
check "orderd stopped cleanly (SIGTERM) mid-batch ($at_stop of $N2 answered)" [ "$ODRC" -eq 0 ]
check "orderd restart happened while orders were still being posted" [ "$at_stop" -lt "$N2" ]
start_az run2 || finish
wait_until 30 has_lines "$T/post2.txt" $((N2 * 2 / 5)) || fail "batch 2: posting did not resume after the orderd restart"
at_down=$(lines "$T/post2.txt")
"$RMQ" stop-node > "$T/rmq-stop.log" 2>&1
check "broker stopped mid-batch" bash -c "! ss -ltnH 'sport = :$RMQ_PORT' | grep -q ."
sleep 2    # an outage long enough for posts and deliveries to fail
RMQ_KEEP_STATE=1 "$RMQ" start > "$T/rmq-restart.log" 2>&1 || { fail "RabbitMQ did not restart"; cat "$T/rmq-restart.log" >&2; }
at_up=$(lines "$T/post2.txt")
echo "batch 2: $at_stop answered when orderd was stopped, $at_down when the broker was stopped, $at_up when it was back"
# (orders posted during the outage wait for the broker: 202 once it is back,
# or 504 after acknowledge_timeout, or 503 while orderd stops)
check "broker stopped while orders were still being posted" [ "$at_down" -lt "$N2" ]
wait "$POSTER"
accepted "$T/post1.txt" "$T/post2.txt" > "$T/ids2.txt"
n2=$(accepted "$T/post2.txt" | wc -l)
echo "batch 2: $n2 of $N2 orders answered 202 ($(awk '$2 != 202' "$T/post2.txt" | cut -d' ' -f2 | sort | uniq -c | tr '\n' ' '))"
check "batch 2: most orders accepted across the restarts" [ "$n2" -ge $((N2 / 2)) ]
check "batch 2: every 202'd order stored and notified" wait_for 180 all_there "$T/ids2.txt"
read -r md xd dd bs mn mi du inv <<< "$(snapshot "$T/ids2.txt")"
echo "after restarts: missing docs $md, extra docs $xd, duplicated docs $dd, bad status $bs, missing notifications $mn, orders with >1 event id $mi, repeated deliveries $du, refused publish requests $inv"
check "after restarts: each 202'd order exactly one document" zeros "$md" "$dd" "$bs"
# an order answered 5xx may still have reached the queue (its 202 was lost):
# such documents are allowed, and counted above as "extra docs"
check "after restarts: each 202'd order notified, with exactly one event id" zeros "$mn" "$mi"
check "after restarts: every publish request accepted by the SDK's deserializer" [ "$inv" -eq 0 ]

# 3. no 202 while the broker is down -----------------------------------------
"$RMQ" stop-node > "$T/rmq-stop2.log" 2>&1
check "broker stopped again" bash -c "! ss -ltnH 'sport = :$RMQ_PORT' | grep -q ."
probe=$(curl -s -o "$T/probe.body" -w '%{http_code}' --max-time 4 -H 'Content-Type: application/json' \
        -d '{"id":"probe-1","customerId":"c-1","currency":"EUR","items":[{"sku":"sku-1","qty":1,"price":9.99}]}' \
        "http://127.0.0.1:$(cat "$T/api.port")/orders")
check "broker down: the order is not answered 202 (got '$probe' within 4 s)" [ "$probe" != 202 ]
RMQ_KEEP_STATE=1 "$RMQ" start > "$T/rmq-restart2.log" 2>&1 || { fail "RabbitMQ did not restart"; cat "$T/rmq-restart2.log" >&2; }
{ cat "$T/ids2.txt"; echo probe-1; } | LC_ALL=C sort -u > "$T/ids3.txt"
check "the order the client gave up on is stored and notified once the broker is back" wait_for 120 all_there "$T/ids3.txt"
read -r md xd dd bs mn mi du inv <<< "$(snapshot "$T/ids3.txt")"
check "probe: exactly one document, one event id" zeros "$md" "$dd" "$bs" "$mn" "$mi"
stop_orderd
check "clean exit at the end" [ "$ODRC" -eq 0 ]
finish
