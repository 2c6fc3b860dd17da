#!/bin/bash
# The real daemon against the Cosmos DB-compatible server (tests/peers/cosmos-server.js:
# @vercel/cosmosdb-server over HTTPS with a throw-away CA, master-key signatures checked
# with @azure/cosmos's own code):
#   run 1: file input -> cosmos store (append, partition key /customerId); documents are
#          read back with the official SDK; a restart re-reads nothing twice (409 = stored).
#   run 2: cosmos change feed input -> file publish: every stored document comes out once.
. "$(dirname "$0")/lib.sh"

command -v node >/dev/null || { echo "FAIL: node not found (contrib/deps.sh installs it)"; exit 1; }
NM="$("$TESTS_SRCDIR/peers/setup.sh")/node_modules" || { echo "FAIL: tests/peers/setup.sh could not install the npm tools"; exit 1; }
export NODE_PATH="$NM"
KEY='C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=='

# throw-away CA + server certificate for 127.0.0.1
( cd "$T" && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 1 -subj /CN=orderd-it-ca &&
  openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 &&
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > srv.ext &&
  openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 1 -extfile srv.ext ) \
  > "$T/openssl.log" 2>&1 || { fail "certificates"; finish; }

node "$TESTS_SRCDIR/peers/cosmos-server.js" --cert "$T/srv.crt" --key "$T/srv.key" \
    --port-file "$T/cosmos.port" --log "$T/cosmos-requests.jsonl" > "$T/cosmos.log" 2>&1 &
PIDS+=("$!")
wait_until 20 test -s "$T/cosmos.port" || { fail "cosmos server did not start"; finish; }
PORT=$(cat "$T/cosmos.port")
sdk() {
    COSMOS_ENDPOINT="https://127.0.0.1:$PORT/" COSMOS_KEY="$KEY" NODE_EXTRA_CA_CERTS="$T/ca.crt" \
        node "$TESTS_SRCDIR/peers/cosmos-readback.js" "$@"
}
check "database and container created with the SDK" sdk setup shop orders /customerId

make_lines "$T/in.ndjson" 1 40
cat > "$T/store.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "intake";
  input = { plugin = "file"; path = "$T/in.ndjson"; follow = true; poll_interval = "20ms"; commit_interval = "50ms"; };
  store = { plugin = "cosmos"; endpoint = "https://127.0.0.1:$PORT/"; database = "shop"; container = "orders";
            key_env = "COSMOS_TEST_KEY"; ca_file = "$T/ca.crt"; partition_key = "/customerId"; }; } );
CONF
export COSMOS_TEST_KEY="$KEY"
count_docs() { sdk all shop orders | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
has_docs() { [ "$(count_docs)" -ge "$1" ]; }

start_orderd run1 "$T/store.conf" || finish
check "40 documents stored" wait_until 60 has_docs 40
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
check "document read back with the SDK" bash -c "$(declare -f sdk); PORT=$PORT KEY='$KEY' T='$T' TESTS_SRCDIR='$TESTS_SRCDIR'; sdk read shop orders o17 c-3 | grep -q '\"n\":17'"
check "every request passed the signature check" bash -c "! grep -v '\"auth\":\"ok\"' '$T/cosmos-requests.jsonl' | grep -q ."

# the same lines again (a replay from offset 0): 409 on every id = already stored = OK
rm -rf "$T/state"
start_orderd run1b "$T/store.conf" || finish
check "replayed lines answered 409 by the server" wait_until 60 bash -c "[ \$(grep -c '\"status\":409' '$T/cosmos-requests.jsonl') -ge 40 ]"
stop_orderd
check "still exactly 40 documents" [ "$(count_docs)" -eq 40 ]
check "no dead letters from duplicates" bash -c "! grep -q 'dead-letter' '$T/run1b.log'"

cat > "$T/feed.conf" <<CONF
state_dir = "$T/state2";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "feed";
  input = { plugin = "cosmos"; endpoint = "https://127.0.0.1:$PORT/"; database = "shop"; container = "orders";
            key_env = "COSMOS_TEST_KEY"; ca_file = "$T/ca.crt"; partition_key = "/customerId"; poll_interval = "100ms"; };
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; format = "envelope"; fsync = "always"; } ); } );
CONF
start_orderd run2 "$T/feed.conf" || finish
check "change feed published 40 documents" wait_until 60 has_lines "$T/out.ndjson" 40
check "checkpoint written" wait_until 10 bash -c "ls '$T/state2'/cosmos-feed-feed-*.json >/dev/null 2>&1"
stop_orderd
check "clean exit after the feed" [ "$ODRC" -eq 0 ]
check "each document exactly once" exactly_once "$T/out.ndjson" 40
check "partition key carried over" grep -q '"partition_key":"c-3"' "$T/out.ndjson"
finish
