#!/bin/bash
# docs.sh - the manual pages say what the built daemon does.
#
#  1. Every configuration key the core declares (orderd --help-config --json)
#     and every key of every plugin stage the daemon finds (--list-plugins,
#     test plugins excluded), nested group keys included, has an entry
#     `.TP` / `.B key` in orderd.conf(5): core keys under CORE KEYS, a
#     plugin's keys in its `.SS "NAME plugin"` section, after the heading of
#     the stage kind (`.B "KIND stage"`) they belong to.  (`key_file` and
#     `key_env` forms of secrets are described in prose, not listed.)
#  2. Every option `orderd --help` prints appears in the OPTIONS of orderd(8).
#  3. Every page in man/ renders with groff -man -ww without a warning, and
#     through man -l.
# A key added to a schema without re-running man/gen-options.py fails 1.
#
# Environment (tests/Makefile.am): ORDERD_BIN, ORDERD_PLUGIN_PATH, TOP_SRCDIR.
set -u
: "${ORDERD_BIN:?set ORDERD_BIN}"
: "${TOP_SRCDIR:?set TOP_SRCDIR}"
: "${ORDERD_PLUGIN_PATH:?set ORDERD_PLUGIN_PATH}"

MAN=$TOP_SRCDIR/man
T=$(mktemp -d "${TMPDIR:-/tmp}/orderd-docs.XXXXXX")
trap 'rm -rf "$T"' EXIT
FAILS=0
fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
ok()   { echo "ok: $*"; }

for page in orderd.8 orderd.conf.5 orderd-plugin.3; do
    [ -s "$MAN/$page" ] || fail "$MAN/$page is missing"
done

# ---- 1. configuration keys -------------------------------------------------
if ! "$ORDERD_BIN" --help-config --json > "$T/core.json"; then
    fail "orderd --help-config --json"
fi
# --list-plugins exits 1 when some file in the path is not a loadable plugin
# (the test tree keeps deliberately broken ones apart, but be tolerant): the
# names it did list are what we document.
"$ORDERD_BIN" --list-plugins > "$T/list.txt" 2> "$T/list.err"
plugins=$(awk 'NR > 1 && $1 !~ /^(testkit|abi.*)$/ { print $1 }' "$T/list.txt")
[ -n "$plugins" ] || fail "orderd --list-plugins found no plugins in $ORDERD_PLUGIN_PATH"
for p in $plugins; do
    "$ORDERD_BIN" --help-plugin "$p" --json > "$T/plugin-$p.json" ||
        fail "orderd --help-plugin $p --json"
done

python3 - "$MAN/orderd.conf.5" "$T" $plugins > "$T/keys.out" <<'PY'
import json, re, sys

page, tmp, plugins = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = open(page, encoding='utf-8').read().split('\n')
KEY = re.compile(r'^\.B ([A-Za-z0-9_.-]+)$')
STAGE = re.compile(r'^\.B "(input|transform|store|publish) stage"$')
bad = 0

def report(msg):
    global bad
    bad += 1
    print('MISSING: ' + msg)

def region(start_re, stop_re):
    """Lines from the first match of start_re up to the next stop_re line."""
    for i, l in enumerate(lines):
        if re.match(start_re, l):
            j = i + 1
            while j < len(lines) and not re.match(stop_re, lines[j]):
                j += 1
            return lines[i + 1:j]
    return None

def entries(block):
    """Keys with a .TP/.B entry in block."""
    out = set()
    for i, l in enumerate(block):
        m = KEY.match(l)
        if m and i > 0 and block[i - 1] == '.TP':
            out.add(m.group(1))
    return out

def walk(opts, prefix=''):
    for o in opts or []:
        yield prefix + o['key'], o['key']
        yield from walk(o.get('keys'), prefix + o['key'] + '.')

core = json.load(open(tmp + '/core.json'))
block = region(r'^\.SH "CORE KEYS"$', r'^\.SH ')
if block is None:
    report('section .SH "CORE KEYS"')
else:
    have = entries(block)
    n = 0
    for part in ('top', 'pipeline', 'spool'):
        for full, key in walk(core[part]):
            n += 1
            if key not in have:
                report('core key %s (%s) in CORE KEYS' % (full, part))
    print('core: %d keys checked' % n)

for p in plugins:
    d = json.load(open('%s/plugin-%s.json' % (tmp, p)))
    block = region(r'^\.SS "%s plugin"$' % re.escape(p), r'^\.S[SH] ')
    if block is None:
        report('section .SS "%s plugin"' % p)
        continue
    # Split the plugin's section at its stage headings.
    stages, cur = {}, None
    for l in block:
        m = STAGE.match(l)
        if m:
            cur = m.group(1)
            stages[cur] = []
        elif cur:
            stages[cur].append(l)
    n = 0
    for s in d['stages']:
        if s['kind'] not in stages:
            report('%s: heading .B "%s stage"' % (p, s['kind']))
            continue
        have = entries(stages[s['kind']])
        for full, key in walk(s.get('options')):
            n += 1
            if key not in have:
                report('%s %s stage key %s' % (p, s['kind'], full))
    print('%s: %d keys checked' % (p, n))
sys.exit(1 if bad else 0)
PY
rc=$?
cat "$T/keys.out"
if [ "$rc" -eq 0 ]; then
    ok "every core and plugin key has an entry in orderd.conf.5"
else
    fail "orderd.conf.5 lacks keys (re-run man/gen-options.py, see its header)"
fi

# ---- 2. command-line options ------------------------------------------------
"$ORDERD_BIN" --help > "$T/help.txt" || fail "orderd --help"
# The OPTIONS section of orderd.8, with roff's \- and font changes undone.
sed -n '/^\.SH OPTIONS/,/^\.SH /p' "$MAN/orderd.8" |
    sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' > "$T/options.txt"
opts=$(grep -oE '^ +(-[A-Za-z], )?--[a-z][a-z-]*' "$T/help.txt" | grep -oE -- '-[A-Za-z]\b|--[a-z][a-z-]*')
[ -n "$opts" ] || fail "no options found in orderd --help"
nopt=0
for o in $opts; do
    nopt=$((nopt + 1))
    grep -qE -- "(^|[^-A-Za-z])$o([^-A-Za-z]|\$)" "$T/options.txt" ||
        fail "option $o of orderd --help is not in the OPTIONS of orderd.8"
done
ok "$nopt options of orderd --help checked against orderd.8"

# ---- 3. rendering -------------------------------------------------------------
if ! command -v groff > /dev/null; then
    fail "groff is not installed (Debian: groff-base, Fedora: groff-base): cannot check rendering"
else
    for page in "$MAN"/*.[1-8]; do
        [ -s "$page" ] || continue
        name=$(basename "$page")
        if ! LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$page" > "$T/groff.err" 2>&1 ||
           [ -s "$T/groff.err" ]; then
            fail "groff -ww warns about $name: $(head -n 5 "$T/groff.err")"
        else
            ok "$name renders without groff warnings"
        fi
        if command -v man > /dev/null; then
            if ! LC_ALL=C.UTF-8 MANWIDTH=80 MAN_KEEP_STDERR=1 man -l "$page" > "$T/man.out" 2> "$T/man.err" ||
               [ -s "$T/man.err" ] || [ ! -s "$T/man.out" ]; then
                fail "man -l $name: $(head -n 5 "$T/man.err")"
            else
                ok "man -l $name"
            fi
        fi
    done
fi

if [ "$FAILS" -ne 0 ]; then
    echo "$FAILS check(s) failed" >&2
    exit 1
fi
exit 0
