#!/bin/bash
# partner-plugin.sh - a partner builds a plugin against an installed orderd.
#
# 1. `make install DESTDIR=$tmp/root` of this build tree.
# 2. contrib/example-plugin, copied away from the source tree, is built with
#    nothing but the installed orderd-plugin.pc (PKG_CONFIG_PATH and
#    PKG_CONFIG_SYSROOT_DIR point into the staged install); its `make install`
#    puts it in the .pc's plugindir.
# 3. The installed daemon runs file input -> example -> file publish with the
#    installed plugins plus the partner's: tagged records come out, the record
#    marked reject_me lands in the dead-letter file with the plugin's reason,
#    and `orderd --help-plugin example` shows the declared keys.
#
# Environment (exported by tests/Makefile.am): TOP_BUILDDIR, TOP_SRCDIR.
# Exit: 0 pass, 1 fail, 77 skip (only when make install itself cannot run).
set -euo pipefail

top_builddir=${TOP_BUILDDIR:?TOP_BUILDDIR is not set (run through make check)}
top_srcdir=${TOP_SRCDIR:?TOP_SRCDIR is not set (run through make check)}
make=${MAKE:-make}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/orderd-partner.XXXXXX")
pid=

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for f in "$tmp/orderd.log" "$tmp/out.ndjson"; do
        [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
    done
    exit 1
}

# `make` run from inside `make check` must not inherit the outer make's
# jobserver and flags, nor install into the caller's DESTDIR.
unset MAKEFLAGS MAKELEVEL MFLAGS DESTDIR

# -- 1. stage an install ---------------------------------------------------
root=$tmp/root
if ! "$make" -C "$top_builddir" install DESTDIR="$root" >"$tmp/install.log" 2>&1; then
    tail -n 30 "$tmp/install.log" >&2
    echo "SKIP: make install DESTDIR=... failed in $top_builddir" >&2
    exit 77
fi

pc=$(find "$root" -name orderd-plugin.pc -print -quit)
orderd=$(find "$root" -path '*/sbin/orderd' -type f -print -quit)
header=$(find "$root" -path '*/include/orderd/plugin.h' -type f -print -quit)
[ -n "$pc" ] || fail "make install put no orderd-plugin.pc under $root"
{ [ -n "$orderd" ] && [ -x "$orderd" ]; } || fail "make install put no sbin/orderd under $root"
[ -n "$header" ] || fail "make install put no include/orderd/plugin.h under $root"
cmp -s "$header" "$top_srcdir/core/include/orderd/plugin.h" || fail "installed plugin.h differs from the source"

export PKG_CONFIG_PATH=${pc%/*}
export PKG_CONFIG_SYSROOT_DIR=$root
plugindir=$(pkg-config --variable=plugindir orderd-plugin)
[ -f "$plugindir/file.so" ] || fail "plugindir from the .pc ($plugindir) has no file.so"

# -- 2. build the partner plugin out of tree -------------------------------
src=$tmp/partner
cp -R "$top_srcdir/contrib/example-plugin" "$src"
chmod -R u+w "$src"
rm -f "$src/example.so"
if ! "$make" -C "$src" CPPFLAGS= CFLAGS='-O2 -g -Werror' >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2
    fail "the example plugin does not build against the installed orderd-plugin.pc"
fi
# Every include directory must come from the staged install (the sysroot
# prefixes them all), none from the orderd source or build tree.
if grep -o -e '-I[^ ]*' "$tmp/build.log" | grep -v -e "^-I$root/" >&2; then
    fail "the example plugin build used include directories outside the install"
fi
grep -q -e "-I$root/" "$tmp/build.log" || fail "the example plugin build did not use the .pc's include directory"
[ -f "$src/example.so" ] || fail "the build made no example.so"
nm -D --defined-only "$src/example.so" | awk '$2 ~ /[DdTtRrBb]/ { print $3 }' >"$tmp/exports"
[ "$(cat "$tmp/exports")" = "orderd_plugin_v1" ] ||
    fail "example.so exports more or other than orderd_plugin_v1: $(tr '\n' ' ' <"$tmp/exports")"

# The partner Makefile's install goes to the .pc's plugindir (sysroot off:
# plugindir is then the real path under DESTDIR).
(
    unset PKG_CONFIG_SYSROOT_DIR
    real_plugindir=$(pkg-config --variable=plugindir orderd-plugin)
    "$make" -C "$src" install DESTDIR="$tmp/partner-root" >"$tmp/pinstall.log" 2>&1 ||
        { cat "$tmp/pinstall.log" >&2; exit 1; }
    [ -f "$tmp/partner-root$real_plugindir/example.so" ]
) || fail "make install of the example plugin did not put example.so in plugindir"

plugin_path="$plugindir:$src"

# -- 3. --help-plugin lists the declared keys ------------------------------
"$orderd" --plugin-dir "$plugin_path" --help-plugin example >"$tmp/help.txt" 2>&1 ||
    { cat "$tmp/help.txt" >&2; fail "orderd --help-plugin example failed"; }
for key in field value; do
    grep -Eq "^[[:space:]]+${key}[[:space:]]" "$tmp/help.txt" ||
        { cat "$tmp/help.txt" >&2; fail "--help-plugin example does not list '$key'"; }
done
grep -q "transform" "$tmp/help.txt" || fail "--help-plugin example does not show a transform stage"

# -- 4. run the installed daemon -------------------------------------------
state=$tmp/state
cat >"$tmp/in.ndjson" <<'EOF'
{"id": "ord-1", "customerId": "c-1", "total": 10}
{"id": "ord-2", "customerId": "c-2", "reject_me": true}
{"id": "ord-3", "customerId": "c-3", "reject_me": false}
EOF
cat >"$tmp/orderd.conf" <<EOF
state_dir = "$state";
admin = { enabled = false; };
shutdown_timeout = "5s";
pipelines = (
  { name = "partner";
    input = { plugin = "file"; path = "$tmp/in.ndjson"; };
    transforms = ( { plugin = "example"; name = "tag"; } );
    publish = ( { plugin = "file"; path = "$tmp/out.ndjson"; fsync = "never"; } );
  } );
EOF

"$orderd" --plugin-dir "$plugin_path" -c "$tmp/orderd.conf" --check-config >"$tmp/check.log" 2>&1 ||
    { cat "$tmp/check.log" >&2; fail "orderd --check-config refused the partner pipeline"; }

"$orderd" --plugin-dir "$plugin_path" -c "$tmp/orderd.conf" >"$tmp/orderd.log" 2>&1 &
pid=$!

dlq=$state/deadletter/partner.ndjson
# Wait (bounded) for two published lines and one dead letter.
for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" || true; pid=; fail "orderd exited early"; }
    out_lines=0 dlq_lines=0
    [ -f "$tmp/out.ndjson" ] && out_lines=$(wc -l <"$tmp/out.ndjson")
    [ -f "$dlq" ] && dlq_lines=$(wc -l <"$dlq")
    [ "$out_lines" -ge 2 ] && [ "$dlq_lines" -ge 1 ] && break
    sleep 0.1
done

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" = 0 ] || fail "orderd exited with status $rc after SIGTERM"

[ -f "$tmp/out.ndjson" ] || fail "no output file"
[ "$(wc -l <"$tmp/out.ndjson")" = 2 ] || fail "expected 2 published lines, got $(wc -l <"$tmp/out.ndjson")"
for id in ord-1 ord-3; do
    line=$(grep -F "\"$id\"" "$tmp/out.ndjson") || fail "$id was not published"
    python3 - "$line" <<'EOF' || fail "$id was published without \"partner\": \"example\": $line"
import json, sys
body = json.loads(sys.argv[1])
sys.exit(0 if body.get("partner") == "example" else 1)
EOF
done
grep -qF '"ord-2"' "$tmp/out.ndjson" && fail "the reject_me record was published"

[ -f "$dlq" ] || fail "no dead-letter file $dlq"
[ "$(wc -l <"$dlq")" = 1 ] || fail "expected 1 dead letter, got $(wc -l <"$dlq")"
python3 - "$dlq" <<'EOF' || fail "dead letter lacks ord-2 or the plugin's reason: $(cat "$dlq")"
import json, sys
rec = json.loads(open(sys.argv[1]).readline())
text = json.dumps(rec)
sys.exit(0 if "ord-2" in text and "reject_me" in rec.get("reason", "")
         and rec.get("stage") == "tag" else 1)
EOF

echo "partner-plugin: out-of-tree example plugin built from the installed .pc and ran in the installed orderd"
exit 0
