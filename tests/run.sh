#!/usr/bin/env bash
# Runs every test of the workspace, installing first what the end-to-end tests use as real
# third-party parts: Debian's Mosquitto (broker, mosquitto_sub, mosquitto_pub, mosquitto_passwd),
# etcd (etcd-server, etcdctl), curl and HAProxy, protoc (the cluster and etcd builds need it),
# openssl (the TLS tests make their certificates with it), Node.js and npm, Chromium (the live
# page's test drives it headless), the Python MQTT client paho-mqtt and the Python gRPC client and
# stub generator (grpcio, grpcio-tools) from PyPI, and from npm the JavaScript MQTT client MQTT.js
# (`npm ci` in tests/clients) and playwright-core (`npm ci` in tests/browser), the versions their
# package-lock.json files pin. Then builds pricefeed with both ways of running several nodes
# (cluster and etcd), MQTT over TLS and gRPC, and runs their tests (three nodes each, one test at a
# time), the TLS tests and the gRPC tests.
# Arguments go to every test run. Nothing here reaches the internet at
# test time: price APIs are served from tests/fixtures by a local server.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in mosquitto:mosquitto mosquitto_sub:mosquitto-clients mosquitto_passwd:mosquitto curl:curl \
    protoc:protobuf-compiler haproxy:haproxy etcd:etcd-server etcdctl:etcd-client openssl:openssl \
    chromium:chromium node:nodejs npm:npm; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} from Debian's packages" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import paho.mqtt.client' >/dev/null 2>&1; then
    echo "installing paho-mqtt from PyPI" >&2
    python3 -m pip install -q 'paho-mqtt==2.1.0'
fi
# MQTT.js for tests/tests/foreign_clients.rs, as tests/clients/package-lock.json pins it.
if [ ! -d tests/clients/node_modules/mqtt ]; then
    echo "installing MQTT.js from npm" >&2
    (cd tests/clients && npm ci --no-audit --no-fund --silent)
fi
# The gRPC tests' Python client: grpcio, and grpcio-tools to generate its stubs from the .proto.
if ! python3 -c 'import grpc, grpc_tools.protoc' >/dev/null 2>&1; then
    echo "installing grpcio and grpcio-tools from PyPI" >&2
    python3 -m pip install -q 'grpcio==1.85.1' 'grpcio-tools==1.85.1'
fi
# The live page's test: playwright-core, exactly as tests/browser/package-lock.json pins it. It
# drives the Chromium above and downloads no browser of its own.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
    echo "installing playwright-core from npm" >&2
    (cd tests/browser && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi

# The end-to-end tests run the binaries of other packages than their own, which `cargo test` alone
# does not build.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# Several nodes, TLS and gRPC: the `cluster,etcd,tls,grpc` build of pricefeed (target/…/pricefeed
# is now that one), then the tests that start three of it (a raft cluster of embedded brokers;
# nodes on Mosquitto elected with etcd), the election's own tests against etcd, MQTT over TLS and
# HTTPS with mosquitto_sub and curl, and gRPC with a Rust and a Python client (and the standalone
# history-api's gRPC, from its `grpc` build).
features=publisher/cluster,publisher/etcd,publisher/tls,publisher/grpc,pricefeed-tests/cluster,pricefeed-tests/etcd,pricefeed-tests/tls,pricefeed-tests/grpc
cargo build --locked -p publisher --features cluster,etcd,tls,grpc --bin pricefeed
cargo build --locked -p history-server --features grpc --bin history-api
# A cluster test that fails is run once more, and says so (nextest prints it as FLAKY): three
# raft nodes per test on a shared 2-core machine. The one cause seen so far, a node's raft port
# handed to an outgoing connection before the node bound it, is fixed in the test kit (node ports
# below the ephemeral range); a FLAKY line means another cause, and its log says which. Where
# cargo-nextest is missing, no retry.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked -p pricefeed-tests -p publisher --features "$features" \
        --test cluster --test elected --test etcd_election --test tls --test grpc \
        --retries 1 --test-threads 1 --no-tests fail "$@"
else
    cargo test --locked -p pricefeed-tests -p publisher --features "$features" \
        --test cluster --test elected --test etcd_election --test tls --test grpc "$@" -- --test-threads=1
fi
