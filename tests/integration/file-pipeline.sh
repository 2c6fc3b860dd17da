#!/bin/bash
# A file pipeline moves every record exactly once, across a restart: the
# input's durable offset resumes where the last run stopped.
. "$(dirname "$0")/lib.sh"

make_lines "$T/in.ndjson" 1 5000
cat > "$T/p.conf" <<CONF
state_dir = "$T/state";
admin = { listen = "127.0.0.1:0"; };
workers = 2;
batch = { max = 32; };
pipelines = ( { name = "orders";
  input = { plugin = "file"; path = "in.ndjson"; follow = true; poll_interval = "20ms";
            commit_interval = "50ms"; };
  transforms = ( { plugin = "testkit"; tag = "seen"; } );
  publish = ( { plugin = "file"; path = "$T/out.ndjson"; format = "envelope"; fsync = "always"; } ); } );
CONF
start_orderd run1 "$T/p.conf" || finish
check "first 5000 records published" wait_until 60 has_lines "$T/out.ndjson" 5000
stop_orderd
check "clean exit" [ "$ODRC" -eq 0 ]
check "each record once" exactly_once "$T/out.ndjson" 5000
check "transform ran on every record" [ "$(grep -c '"testkit":"seen"' "$T/out.ndjson")" -eq 5000 ]

# more lines while stopped, then a second run: only the new ones move
make_lines "$T/in.ndjson" 5001 6000
start_orderd run2 "$T/p.conf" || finish
check "new records published after restart" wait_until 60 has_lines "$T/out.ndjson" 6000
# appended while running (follow)
make_lines "$T/in.ndjson" 6001 6500
check "appended records followed" wait_until 60 has_lines "$T/out.ndjson" 6500
stop_orderd
check "every record exactly once over two runs" exactly_once "$T/out.ndjson" 6500
finish
