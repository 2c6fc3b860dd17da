# benchlib.sh - what every benchmark script here starts with.  Source it after
# setting NAME (the script's name, for messages):
#   BUILD     the build directory: first argument, $BUILD, or ../../build/werror
#   PY, U     python3 and this folder's benchutil.py
#   ORDERD    the daemon; PLUGINS the build tree's plugin path
#   T, PIDS   a temporary directory and the processes started, both cleaned up
#             on exit (processes by PID: TERM, then KILL)
#   wait_port PORT [SECONDS]   until 127.0.0.1:PORT accepts (default 10 s)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=$(cd "${1:-${BUILD:-$HERE/../../build/werror}}" 2>/dev/null && pwd) ||
    { echo "$NAME: no build directory (${1:-${BUILD:-$HERE/../../build/werror}})" >&2; exit 2; }
PY=/usr/bin/python3
U="$PY $HERE/benchutil.py"

for tool in wrk nginx "$PY"; do
    command -v "$tool" >/dev/null || { echo "$NAME: $tool not found (apt-get install wrk nginx-light python3)" >&2; exit 2; }
done
ORDERD=$BUILD/core/orderd
[ -x "$ORDERD" ] || { echo "$NAME: $ORDERD not built" >&2; exit 2; }
PLUGINS=$BUILD/plugins/http/.libs:$BUILD/plugins/validate/.libs:$BUILD/plugins/orders/.libs
PLUGINS=$PLUGINS:$BUILD/plugins/sqlite/.libs:$BUILD/plugins/webhook/.libs:$BUILD/plugins/file/.libs

T=$(mktemp -d "${TMPDIR:-/tmp}/orderd-bench.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    for _ in $(seq $(( ${2:-10} * 10 ))); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
