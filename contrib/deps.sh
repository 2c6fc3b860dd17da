#!/bin/sh
# deps.sh - install what orderd needs to build, run and test on Debian 12.
# Used by the README's commands and by CI, so the list lives in one place.
#   build:   autotools, pkg-config, a C compiler
#   core:    libconfig (config files), jansson (JSON), libmicrohttpd (admin API)
#   plugins: libmicrohttpd (http), SQLite (sqlite), libcurl + OpenSSL (webhook,
#            enrich), Qpid Proton-C (servicebus), librdkafka (kafka)
#   tests:   Check (unit tests), RabbitMQ (a real AMQP 1.0 broker) and
#            Proton's Python binding (a CBS responder), curl and python3 (integration tests' clients
#            and receivers), wrk and nginx-light (benchmarks)
set -eu
export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: run as root (apt-get install)" >&2
    exit 1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    ca-certificates git build-essential autoconf automake libtool pkg-config \
    libconfig-dev libjansson-dev libmicrohttpd-dev libsqlite3-dev \
    libcurl4-openssl-dev libssl-dev libqpid-proton11-dev librdkafka-dev libjemalloc-dev \
    check curl python3 python3-qpid-proton rabbitmq-server procps openssl groff-base man-db ${ORDERD_EXTRA_PACKAGES:-} >/dev/null
# Node.js runs test-side tools only (a Cosmos DB-compatible server and the
# official Azure SDKs as independent checkers, tests/peers/).  @azure/cosmos
# needs Node >= 20 and Debian 12 ships 18: then the registry's node@20
# package (a prebuilt binary inside an npm package) goes to /usr/local/bin.
if ! command -v npm >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_major=$(node -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
    npm install -g --no-audit --no-fund --loglevel=error node@20 >/dev/null
    hash -r
fi
# RabbitMQ's Erlang resolves "localhost" itself: minimal images and chroots
# without /etc/hosts need the entry every installed system has.
if ! grep -qs '^127\.0\.0\.1[[:space:]].*localhost' /etc/hosts; then
    echo '127.0.0.1 localhost' >> /etc/hosts
fi
