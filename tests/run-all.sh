#!/bin/bash
# run-all.sh - the whole test suite, as CI runs it, from a clean checkout:
#   1. install build and test dependencies (Debian 12, as root)
#   2. build with -Werror and run `make check`
#   3. build with AddressSanitizer + UndefinedBehaviorSanitizer and run it again
#   4. `make distcheck` (tarball builds, installs, uninstalls, passes its tests)
# Build trees go to build/ (ignored by git).  Prints a summary line per stage.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
jobs=$(nproc 2>/dev/null || echo 2)

if [ "$(id -u)" -eq 0 ] && [ -z "${SKIP_DEPS:-}" ]; then
    ./contrib/deps.sh
fi
autoreconf -fi >/dev/null 2>&1 || autoreconf -fi

summary=()
run_suite() {   # run_suite NAME CONFIGURE-ARGS...
    local name=$1; shift
    local dir=$top/build/$name
    rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    echo "=== $name: configure $*"
    "$top/configure" -q "$@"
    echo "=== $name: make"
    make -s -j"$jobs" >/dev/null
    echo "=== $name: make check"
    if ! make -s -j"$jobs" check; then
        find . -name '*.log' -path '*tests*' -exec grep -l -E '^(FAIL|ERROR)' {} + 2>/dev/null |
            while read -r f; do echo "--- $f"; tail -n 60 "$f"; done
        echo "$name: make check FAILED"
        exit 1
    fi
    summary+=("$name: $(grep -h '^# PASS:' tests/test-suite.log | awk '{print $3}') passed, $(grep -h '^# FAIL:' tests/test-suite.log | awk '{print $3}') failed")
    cd "$top"
}

run_suite werror --enable-werror
ASAN_OPTIONS=detect_leaks=1 run_suite sanitizers --enable-werror --enable-sanitizers

echo "=== distcheck"
cd "$top/build/werror"
if ! make -s -j"$jobs" distcheck >distcheck.out; then
    # The failed tree is left in place: show what failed there.
    grep -E '^(FAIL|ERROR):' distcheck.out || tail -n 40 distcheck.out
    find . -path '*/_build/*' -name '*.log' -path '*tests*' -exec grep -l -E '^(FAIL|ERROR)' {} + 2>/dev/null |
        while read -r f; do echo "--- $f"; tail -n 60 "$f"; done
    echo "distcheck FAILED"
    exit 1
fi
summary+=("distcheck: ok")
cd "$top"

printf '%s\n' "${summary[@]}"
