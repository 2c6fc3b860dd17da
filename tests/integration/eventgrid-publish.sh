#!/bin/bash
# The real daemon publishes a file of orders to an Event Grid endpoint
# (tests/peers/eventgrid-receiver.js over HTTPS, which checks every batch with
# @azure/eventgrid's EventGridDeserializer and every SAS token with its
# generateSharedAccessSignature): CloudEvents with the access key, and the
# Event Grid schema with SAS tokens, in batches; each order arrives exactly
# once, with the order id as event id.
. "$(dirname "$0")/lib.sh"

command -v node >/dev/null || { echo "FAIL: node not found (contrib/deps.sh installs it)"; exit 1; }
NODE_MODULES="$("$TESTS_SRCDIR/peers/setup.sh")/node_modules" || { fail "tests/peers/setup.sh"; finish; }
KEY=ZXZlbnRncmlkLXBlZXItdGVzdC1rZXktMDEyMzQ1Njc4OQ==

# A throw-away CA and a server certificate for 127.0.0.1.
(cd "$T" &&
 openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=orderd-it-ca -keyout ca.key -out ca.crt \
     -addext basicConstraints=critical,CA:TRUE &&
 openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr &&
 printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext &&
 openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext \
     -out server.crt) > "$T/openssl.log" 2>&1 || { fail "openssl test certificates"; finish; }

# start_receiver NAME [ARGS...] : log in $T/NAME.ndjson, port in $RPORT
start_receiver() {
    local name=$1; shift
    set -- "$name" "$@"
    NODE_PATH="$NODE_MODULES" node "$TESTS_SRCDIR/peers/eventgrid-receiver.js" \
        --port-file "$T/$1.port" --log "$T/$1.ndjson" --cert "$T/server.crt" --key "$T/server.key" \
        --eg-key "$KEY" "${@:2}" > "$T/$1.log" 2>&1 &
    PIDS+=("$!")
    wait_until 60 test -s "$T/$1.port" || { fail "receiver $1 did not start"; finish; }
    RPORT=$(cat "$T/$1.port")
    : > "$T/$1.ndjson"
}

# summary LOG N : "requests accepted_requests events distinct_ids max_batch schemas auths ids_are_orders"
# (events and ids counted in accepted requests only)
summary() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
reqs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ids = [i for r in reqs if r["status"] == 200 for i in r.get("ids", [])]
print(len(reqs), sum(r["status"] == 200 for r in reqs), len(ids), len(set(ids)),
      max([r.get("count", 0) for r in reqs] or [0]),
      ",".join(sorted({r.get("schema", "-") for r in reqs})),
      ",".join(sorted({r.get("auth", "-") for r in reqs})),
      int(set(ids) == {"o%d" % i for i in range(1, int(sys.argv[2]) + 1)}))
PY
}

# published LOG : the receiver accepted at least $N events
published() { [ "$(summary "$1" "$N" | cut -d' ' -f3)" -ge "$N" ]; }

N=300
make_lines "$T/orders.ndjson" 1 "$N"
printf '%s\n' "$KEY" > "$T/eg.key"

run_case() {   # run_case NAME SCHEMA AUTH WANT_SCHEMA WANT_AUTH WANT_FAILED [RECEIVER ARGS...]
    local name=$1 schema=$2 auth=$3
    start_receiver "rcv-$name" "${@:7}"
    cat > "$T/$name.conf" <<CONF
state_dir = "$T/state-$name";
admin = { listen = "127.0.0.1:0"; };
batch = { max = 25; };
pipelines = ( { name = "orders";
  input = { plugin = "file"; path = "$T/orders.ndjson"; };
  publish = ( { plugin = "eventgrid"; endpoint = "https://127.0.0.1:$RPORT/api/events";
                ca_file = "$T/ca.crt"; key_file = "$T/eg.key"; schema = "$schema"; auth = "$auth";
                event_type = "Contoso.Orders.OrderPlaced"; subject = "orders/{id}/customer/{customerId}"; } ); } );
CONF
    start_orderd "$name" "$T/$name.conf" || return
    check "$name: every order published" wait_until 60 published "$T/rcv-$name.ndjson"
    stop_orderd
    check "$name: clean exit" [ "$ODRC" -eq 0 ]
    read -r reqs okreqs events distinct maxb schemas auths idsok <<< "$(summary "$T/rcv-$name.ndjson" "$N")"
    echo "$name: $reqs requests ($okreqs accepted), $events events ($distinct distinct), largest batch $maxb, schema $schemas, auth $auths"
    check "$name: $6 request(s) failed as planned, the rest accepted by the SDK's deserializer" \
        [ "$((reqs - okreqs))" -eq "$6" ]
    check "$name: every request was valid for the SDK" \
        [ "$(grep -c '"verdict":"\(accepted\|valid, answered by test plan\)"' "$T/rcv-$name.ndjson")" -eq "$reqs" ]
    check "$name: each order exactly once" test "$events" -eq "$N" -a "$distinct" -eq "$N"
    check "$name: events were batched" test "$maxb" -gt 1 -a "$reqs" -lt "$N"
    check "$name: schema $schemas" [ "$schemas" = "$4" ]
    check "$name: auth $auths" [ "$auths" = "$5" ]
    check "$name: event ids are the order ids o1..o$N" [ "$idsok" = 1 ]
    check "$name: subject from the template" grep -q "orders/o7/customer/c-0" "$T/rcv-$name.ndjson"
}

run_case ce cloudevents key cloudevents aeg-sas-key 0
run_case eg eventgrid sas eventgrid aeg-sas-token 0
# 429 and 503 answers: the daemon retries (after Retry-After) and every
# order still arrives exactly once.
run_case retry cloudevents sas cloudevents aeg-sas-token 3 --statuses 429,503,429 --retry-after 1
finish
