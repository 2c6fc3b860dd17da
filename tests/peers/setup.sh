#!/bin/bash
# setup.sh - install the test-side npm tools (package.json here) into a cache
# directory outside the source tree (which may be read-only, as in distcheck)
# and print that directory.  Reused while package-lock.json is unchanged.
#   NODE_PATH="$(tests/peers/setup.sh)/node_modules" node script.js
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
command -v npm >/dev/null || { echo "setup.sh: npm not found (contrib/deps.sh installs it)" >&2; exit 1; }
hash=$(sha256sum "$here/package-lock.json" | cut -c1-16)
dir=${ORDERD_PEERS_DIR:-${TMPDIR:-/tmp}/orderd-peers-$hash}
if [ ! -f "$dir/.done" ]; then
    mkdir -p "$dir"
    cp "$here/package.json" "$here/package-lock.json" "$dir/"
    # one installer at a time (parallel make check)
    exec 9>"$dir/.lock"
    flock 9
    if [ ! -f "$dir/.done" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
        touch "$dir/.done"
    fi
fi
echo "$dir"
