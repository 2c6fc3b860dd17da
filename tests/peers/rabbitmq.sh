#!/bin/bash
# rabbitmq.sh start|stop - a private RabbitMQ 3.x node (Debian rabbitmq-server)
# with the AMQP 1.0 plugin, for the servicebus plugin's tests.
#
# Environment:
#   RMQ_DIR         state directory (required; config, mnesia, logs, pid file)
#   RMQ_PORT        AMQP port on 127.0.0.1 (default 25772; avoid 35672-35682, the CLI tools' own range)
#   RMQ_TLS_PORT    AMQPS port (default RMQ_PORT+1); needs RMQ_CERT_DIR with
#                   ca.crt, server.crt, server.key to be enabled
#   RMQ_DIST_PORT   Erlang distribution port (default RMQ_PORT+2)
#   RMQ_EPMD_PORT   private epmd port (default RMQ_PORT+3)
#   RMQ_KEEP_STATE  1: keep the queues and their messages from the last run
#   RMQ_DELIVERY_LIMIT  x-delivery-limit of quorum queue qq (default 3)
#   RMQ_QUEUES      extra classic queues to declare
#   RMQ_QUORUM_QUEUES  extra quorum queues, configured as qq
# Declared on start: classic q1, q2, dlq; quorum qq (x-delivery-limit,
# dead-lettering to dlq).  AMQP 1.0 address of a queue: /amq/queue/<name>.
# Everything listens on 127.0.0.1 only; processes are stopped by PID.
set -u
: "${RMQ_DIR:?set RMQ_DIR}"
PORT=${RMQ_PORT:-25772}
TLS_PORT=${RMQ_TLS_PORT:-$((PORT + 1))}
DIST_PORT=${RMQ_DIST_PORT:-$((PORT + 2))}
EPMD_PORT=${RMQ_EPMD_PORT:-$((PORT + 3))}
LIMIT=${RMQ_DELIVERY_LIMIT:-3}
SBIN=/usr/lib/rabbitmq/bin
CTL=$SBIN/rabbitmqctl
NODE=orderd-test-$PORT@localhost

die() { echo "rabbitmq.sh: $*" >&2; exit 1; }
[ -x "$SBIN/rabbitmq-server" ] || die "rabbitmq-server is not installed (apt-get install rabbitmq-server)"

mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/log"
cat > "$RMQ_DIR/env.sh" <<ENV
export HOME=$RMQ_DIR/home
export RABBITMQ_CONF_ENV_FILE=$RMQ_DIR/env.conf
export RABBITMQ_NODENAME=$NODE
export RABBITMQ_DIST_PORT=$DIST_PORT
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$EPMD_PORT
export RABBITMQ_CONFIG_FILE=$RMQ_DIR/rabbitmq.conf
export RABBITMQ_ENABLED_PLUGINS_FILE=$RMQ_DIR/enabled_plugins
export RABBITMQ_MNESIA_BASE=$RMQ_DIR/mnesia
export RABBITMQ_LOG_BASE=$RMQ_DIR/log
export RABBITMQ_PID_FILE=$RMQ_DIR/rabbitmq.pid
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
. "$RMQ_DIR/env.sh"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# One rabbitmqctl call for all queues: each call costs an Erlang VM start.
declare_queues() {  # "name|erlang-args-list" ...
    local expr="" q name args
    for q in "$@"; do
        name=${q%%|*}; args=${q#*|}; [ "$args" = "$q" ] && args="[]"
        expr="$expr rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"$name\">>), true, false, $args, none, <<\"orderd-tests\">>),"
    done
    $CTL -q eval "${expr%,}." > /dev/null
}

start() {
    alive "$RMQ_DIR/rabbitmq.pid" && die "already running (pid $(cat "$RMQ_DIR/rabbitmq.pid"))"
    [ "${RMQ_KEEP_STATE:-0}" = 1 ] || rm -rf "$RMQ_DIR/mnesia"
    mkdir -p "$RMQ_DIR/mnesia"
    : > "$RMQ_DIR/env.conf"
    echo '[rabbitmq_amqp1_0].' > "$RMQ_DIR/enabled_plugins"
    {
        echo "listeners.tcp.default = 127.0.0.1:$PORT"
        if [ -n "${RMQ_CERT_DIR:-}" ]; then
            echo "listeners.ssl.default = 127.0.0.1:$TLS_PORT"
            echo "ssl_options.cacertfile = $RMQ_CERT_DIR/ca.crt"
            echo "ssl_options.certfile = $RMQ_CERT_DIR/server.crt"
            echo "ssl_options.keyfile = $RMQ_CERT_DIR/server.key"
            echo "ssl_options.verify = verify_none"
            echo "ssl_options.fail_if_no_peer_cert = false"
        fi
        echo "loopback_users.guest = true"
        echo "amqp1_0.default_user = guest"
        echo "amqp1_0.default_vhost = /"
        echo "log.console = false"
        echo "log.file.level = info"
    } > "$RMQ_DIR/rabbitmq.conf"
    # a private epmd on its own port, so this node never meets another one
    /usr/bin/epmd -address 127.0.0.1 -port "$EPMD_PORT" -daemon 2>/dev/null ||
        /usr/lib/erlang/bin/epmd -address 127.0.0.1 -port "$EPMD_PORT" -daemon
    EPMD_PID=$(ss -ltnpH "sport = :$EPMD_PORT" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
    [ -n "$EPMD_PID" ] && echo "$EPMD_PID" > "$RMQ_DIR/epmd.pid"
    setsid "$SBIN/rabbitmq-server" > "$RMQ_DIR/log/stdout.log" 2>&1 < /dev/null &
    if ! timeout 60 $CTL -q wait --timeout 60 "$RMQ_DIR/rabbitmq.pid" > "$RMQ_DIR/log/wait.log" 2>&1; then
        tail -20 "$RMQ_DIR/log/stdout.log" >&2
        stop_all
        die "node did not come up within 60 s"
    fi
    if [ "${RMQ_KEEP_STATE:-0}" != 1 ]; then
        QARGS="[{<<\"x-queue-type\">>, longstr, <<\"quorum\">>}, {<<\"x-delivery-limit\">>, long, $LIMIT}, {<<\"x-dead-letter-exchange\">>, longstr, <<\"\">>}, {<<\"x-dead-letter-routing-key\">>, longstr, <<\"dlq\">>}]"
        set -- q1 q2 dlq ${RMQ_QUEUES:-} "qq|$QARGS"
        for q in ${RMQ_QUORUM_QUEUES:-}; do set -- "$@" "$q|$QARGS"; done
        declare_queues "$@" || { stop_all; die "declaring the queues failed"; }
    fi
}

stop_pid() {  # pid [grace_s]: TERM, then KILL after the grace period (10 s)
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for i in $(seq $(( ${2:-10} * 10 ))); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
}

# SIGTERM makes the node shut down cleanly (queues and messages are kept),
# and at once: rabbitmqctl would first spend seconds starting a VM.
stop() {
    alive "$RMQ_DIR/rabbitmq.pid" && stop_pid "$(cat "$RMQ_DIR/rabbitmq.pid")" 30
    rm -f "$RMQ_DIR/rabbitmq.pid"
}

stop_all() {
    stop
    alive "$RMQ_DIR/epmd.pid" && stop_pid "$(cat "$RMQ_DIR/epmd.pid")"
    rm -f "$RMQ_DIR/epmd.pid"
}

case "${1:-}" in
start) start ;;
stop) stop_all ;;
stop-node) stop ;;                 # the node only (epmd stays): a broker outage
restart-node) stop; start ;;       # keeps epmd; use with RMQ_KEEP_STATE=1
*) die "usage: rabbitmq.sh start|stop|stop-node|restart-node" ;;
esac
