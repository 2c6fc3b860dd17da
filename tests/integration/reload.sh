#!/bin/bash
# SIGHUP with a valid file swaps pipelines without losing accepted work;
# with an invalid file the old configuration keeps running and the errors
# are logged with file:line.
. "$(dirname "$0")/lib.sh"

write_conf() {   # write_conf OUTFILE
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
pipelines = ( { name = "p";
  input = { plugin = "file"; path = "in.ndjson"; follow = true; poll_interval = "20ms"; commit_interval = "20ms"; };
  publish = ( { plugin = "file"; path = "$T/$1"; fsync = "always"; } ); } );
CONF
}
write_conf out1.ndjson
make_lines "$T/in.ndjson" 1 1000
start_orderd run "$T/p.conf" || finish
check "first config delivers" wait_until 30 has_lines "$T/out1.ndjson" 1000

write_conf out2.ndjson
kill -HUP "$ODPID"
check "reload logged" wait_until 20 grep -q "reloaded: 1 pipeline" "$T/run.log"
make_lines "$T/in.ndjson" 1001 2000
check "new config delivers" wait_until 30 has_lines "$T/out2.ndjson" 1000
cat "$T/out1.ndjson" "$T/out2.ndjson" > "$T/all.ndjson"
check "nothing lost or doubled across the swap" exactly_once "$T/all.ndjson" 2000

# invalid: unknown key on line 5 -> refused, old pipelines keep running
sed -i 's/follow = true;/follow = true; folow = 1;/' "$T/p.conf"
kill -HUP "$ODPID"
check "invalid reload refused" wait_until 20 grep -q "reload refused: 1 error" "$T/run.log"
check "error has file:line" grep -q "reload: $T/p.conf:4: unknown key 'folow'" "$T/run.log"
make_lines "$T/in.ndjson" 2001 2500
check "old config still running" wait_until 30 has_lines "$T/out2.ndjson" 1500
check "still alive" kill -0 "$ODPID"
http_get /metrics; cp "$HTTP_BODY" "$T/metrics.txt"
check "reload metrics" grep -q 'orderd_reloads_total{result="refused"} 1' "$T/metrics.txt"
check "reload metrics ok" grep -q 'orderd_reloads_total{result="ok"} 1' "$T/metrics.txt"
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
cat "$T/out1.ndjson" "$T/out2.ndjson" > "$T/all.ndjson"
check "every record exactly once overall" exactly_once "$T/all.ndjson" 2500
finish
