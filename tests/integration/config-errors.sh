#!/bin/bash
# A bad configuration is refused with every error, each with file:line, and
# exit status 78 (EX_CONFIG), both by --check-config and by the daemon itself.
. "$(dirname "$0")/lib.sh"

cat > "$T/bad.conf" <<'CONF'
state_dir = "state";
wrokers = 2;
pipelines = (
  { name = "intake";
    input = { plugin = "file"; };
    transforms = ( { plugin = "nosuch"; } );
    publish = ( { plugin = "file"; path = "out"; fsync = "sometimes"; fsync_interval = "5 fortnights"; } );
  } );
CONF
"$ORDERD_BIN" --check-config -c "$T/bad.conf" > "$T/check.out" 2> "$T/check.err"; rc=$?
check "--check-config exits 78" [ "$rc" -eq 78 ]
check "unknown key with line and suggestion" grep -q "bad.conf:2: unknown key 'wrokers' in the top level; did you mean 'workers'?" "$T/check.err"
check "missing required key with line" grep -q "bad.conf:5: missing required key 'path' in input stage 'file'" "$T/check.err"
check "unknown plugin with line" grep -q "bad.conf:6: plugin 'nosuch' not found" "$T/check.err"
check "bad choice with line" grep -q "bad.conf:7: 'fsync' must be one of always|interval|never" "$T/check.err"
check "bad duration with line" grep -q "bad.conf:7: 'fsync_interval' is not a duration" "$T/check.err"
check "error count" grep -q "5 errors" "$T/check.err"

"$ORDERD_BIN" -c "$T/bad.conf" > /dev/null 2> "$T/run.err"; rc=$?
check "daemon refuses to start with 78" [ "$rc" -eq 78 ]
check "daemon prints the same errors" grep -q "bad.conf:2: unknown key 'wrokers'" "$T/run.err"

printf 'pipelines = ( { name = "x" ' > "$T/syntax.conf"
"$ORDERD_BIN" -t -c "$T/syntax.conf" 2> "$T/syntax.err"; rc=$?
check "syntax error exits 78" [ "$rc" -eq 78 ]
check "syntax error has file:line" grep -q "syntax.conf:1:" "$T/syntax.err"

"$ORDERD_BIN" -t -c "$T/missing.conf" 2> "$T/missing.err"; rc=$?
check "missing file exits 78" [ "$rc" -eq 78 ]
check "missing file is named" grep -q "missing.conf" "$T/missing.err"

cat > "$T/good.conf" <<'CONF'
state_dir = "state";
pipelines = ( { name = "p"; input = { plugin = "file"; path = "in"; };
                publish = ( { plugin = "file"; path = "out"; } ); } );
CONF
"$ORDERD_BIN" -t -c "$T/good.conf" > "$T/good.out" 2>&1; rc=$?
check "valid config exits 0" [ "$rc" -eq 0 ]
check "valid config says OK" grep -q "configuration OK (1 pipeline)" "$T/good.out"

"$ORDERD_BIN" --dump-config -c "$T/good.conf" > "$T/dump.out"; rc=$?
check "--dump-config prints effective values" grep -q '"fsync_interval": 1000' "$T/dump.out"

# the shipped configs must pass too
for f in "$TOP_SRCDIR"/etc/orderd/*.conf; do
    [ -f "$f" ] || continue
    "$ORDERD_BIN" -t -c "$f" -S "$T/shipped" > "$T/shipped.out" 2>&1
    check "shipped $(basename "$f") passes --check-config" [ $? -eq 0 ]
done

"$ORDERD_BIN" --version | grep -q "plugin ABI 1\." ; check "--version names the ABI" [ $? -eq 0 ]
# The allocator --version names is the one serving the process: jemalloc
# answers MALLOC_CONF=stats_print by printing its statistics at exit.
if "$ORDERD_BIN" --version | grep -q "allocator jemalloc)"; then
    MALLOC_CONF=stats_print:true "$ORDERD_BIN" --version 2>&1 | grep -q "Begin jemalloc statistics"
    check "jemalloc is the process allocator" [ $? -eq 0 ]
else
    "$ORDERD_BIN" --version | grep -q "allocator libc)"
    check "--version names the allocator (libc)" [ $? -eq 0 ]
fi
"$ORDERD_BIN" --list-plugins > "$T/list.out"
check "--list-plugins lists file" grep -q "^file .*input, publish" "$T/list.out"
"$ORDERD_BIN" --help-plugin file > "$T/help.out"
check "--help-plugin shows keys" grep -q "fsync_interval" "$T/help.out"
"$ORDERD_BIN" --help-plugin file --json > "$T/help.json"
check "--help-plugin --json is JSON" grep -q '"key": "fsync_interval"' "$T/help.json"
"$ORDERD_BIN" --help-plugin nosuch 2> "$T/nosuch.err"; rc=$?
check "--help-plugin unknown fails" [ "$rc" -ne 0 ]
"$ORDERD_BIN" --bogus 2>/dev/null; rc=$?
check "bad option exits 64" [ "$rc" -eq 64 ]
finish
