#!/usr/bin/env bash
# Runs broker-config/external/mosquitto.conf with the ACL of broker-config/mosquitto/ on a free
# loopback port, in a temporary directory with a password file made by mosquitto_passwd, and checks
# that user pricefeed-publisher writes a tick (btc/USD) and a retained node role
# (pricefeed/nodes/2), that an anonymous client reads both and writes neither, that the publisher
# writes nothing outside its topics and that a wrong password is refused.
# Needs Debian's mosquitto and mosquitto-clients, and python3. Exits 0 if all holds, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
conf="$here/mosquitto.conf"
acl="$here/../mosquitto/acl"
export PATH="$PATH:/usr/sbin"

fail() {
    echo "check-mosquitto: FAIL: $*" >&2
    [ -s "${tmp:-}/log" ] && { echo "--- mosquitto log" >&2; tail -n 30 "$tmp/log" >&2; }
    exit 1
}
for tool in mosquitto mosquitto_passwd mosquitto_pub mosquitto_sub python3; do
    command -v "$tool" >/dev/null || fail "$tool not found (Debian: mosquitto, mosquitto-clients)"
done

tmp=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password="check-$RANDOM$RANDOM"
mosquitto_passwd -c -b "$tmp/passwd" pricefeed-publisher "$password"

# The configuration as it is, but on the picked port and with this check's files. Mosquitto
# started as root reads them as user mosquitto, who cannot enter the temporary directory: it
# stays root here.
{
    [ "$(id -u)" -ne 0 ] || echo "user root"
    sed -e "s#^listener .*#listener $port 127.0.0.1#" \
        -e "s#^password_file .*#password_file $tmp/passwd#" \
        -e "s#^acl_file .*#acl_file $acl#" "$conf"
} >"$tmp/mosquitto.conf"
for line in "listener $port 127.0.0.1" "password_file $tmp/passwd" "acl_file $acl"; do
    [ "$(grep -cxF "$line" "$tmp/mosquitto.conf")" -eq 1 ] || fail "$conf: expected one line to rewrite into '$line'"
done

mosquitto -c "$tmp/mosquitto.conf" >"$tmp/log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 10))
until mosquitto_pub -h 127.0.0.1 -p "$port" -t check/ready -n 2>/dev/null; do
    kill -0 "${pids[0]}" 2>/dev/null || fail "mosquitto exited"
    [ "$SECONDS" -lt "$deadline" ] || fail "mosquitto did not accept connections within 10 s"
    sleep 0.2
done

pub() { mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 "$@"; }
as_publisher=(-u pricefeed-publisher -P "$password")

# An anonymous subscriber to the ticks and the node roles; its debug lines (line-buffered) say
# when it is subscribed.
stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -d -v -t 'btc/#' -t 'pricefeed/nodes/+' -C 2 -W 10 \
    >"$tmp/seen" 2>&1 &
subscriber=$!
pids+=("$subscriber")
deadline=$((SECONDS + 10))
until grep -q SUBACK "$tmp/seen"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the anonymous subscriber was not subscribed within 10 s"
    sleep 0.1
done

# What must not arrive first, then what must: the subscriber ends after two messages, so anything
# let through above takes the place of an expected one.
pub -t btc/USD -m anonymous-tick                       # accepted by MQTT, dropped by the ACL
pub -t pricefeed/nodes/2 -r -m anonymous-role
pub "${as_publisher[@]}" -t btc/GBP -m outside-the-acl # not one of the publisher's topics
if pub -u pricefeed-publisher -P "wrong-$password" -t btc/USD -m wrong-password 2>/dev/null; then
    fail "a wrong password was accepted"
fi
pub "${as_publisher[@]}" -t btc/USD -m publisher-tick || fail "the publisher could not publish btc/USD"
pub "${as_publisher[@]}" -t pricefeed/nodes/2 -r -m publisher-role \
    || fail "the publisher could not publish pricefeed/nodes/2"
wait "$subscriber" || true
seen=$(grep -v -e '^Client ' -e '^Subscribed ' "$tmp/seen" || true)
expected=$'btc/USD publisher-tick\npricefeed/nodes/2 publisher-role'
[ "$seen" = "$expected" ] || fail "the anonymous subscriber saw:
$seen
instead of:
$expected"

# The role is retained for a client that comes later.
retained=$(mosquitto_sub -h 127.0.0.1 -p "$port" -t pricefeed/nodes/2 -C 1 -W 5 || true)
[ "$retained" = publisher-role ] || fail "retained pricefeed/nodes/2 is '$retained', not publisher-role"

echo "check-mosquitto: ok (publisher writes btc/USD and pricefeed/nodes/2; anonymous reads, writes nothing)"
