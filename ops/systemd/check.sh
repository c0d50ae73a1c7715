#!/usr/bin/env bash
# Checks pricefeed.service against the built pricefeed binary:
#
# 1. `systemd-analyze verify` on a copy whose ExecStart is the built binary (verify refuses a unit
#    whose program does not exist); any warning it prints fails the check, not only errors.
# 2. `systemd-analyze security --offline`: it may count against the unit only what a network
#    service that writes its own store needs (the network, an address allow list, the host's
#    root), so a sandbox setting dropped or loosened fails. Its score is printed (1.1, "OK").
# 3. The sandbox fits the process, which systemd cannot tell without running it (and no systemd
#    runs here): pricefeed runs as an unprivileged user under strace, sampling a local price source
#    by host name, while curl (history, an SSE stream) and mosquitto_sub use it, then stops on
#    SIGTERM. Every system call it made must pass the unit's SystemCallFilter, every socket
#    RestrictAddressFamilies, every /proc file ProcSubset=pid, and every file it wrote must be in
#    its store's directory (ProtectSystem=strict leaves only the StateDirectory writable); the
#    unit's --db must be in its StateDirectory.
#
# Usage: ops/systemd/check.sh [PRICEFEED_BINARY]; by default the debug build under
# $CARGO_TARGET_DIR (or target/). Installs Debian's systemd (for systemd-analyze), strace, curl
# and mosquitto-clients if missing.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

binary=${1:-${CARGO_TARGET_DIR:-$here/../../target}/debug/pricefeed}
binary=$(realpath "$binary")
[ -x "$binary" ] || { echo "check.sh: no pricefeed binary at $binary (build it first)" >&2; exit 1; }

missing=()
for tool in systemd-analyze:systemd strace:strace curl:curl mosquitto_sub:mosquitto-clients \
    setpriv:util-linux; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} from Debian's packages" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
cleanup() {
    if [ -n "${feed_pid:-}" ]; then
        kill "$(cat "/proc/$feed_pid/task/$feed_pid/children" 2>/dev/null)" "$feed_pid" 2>/dev/null || true
    fi
    [ -n "${source_pid:-}" ] && kill "$source_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# 1. verify
sed "s#^ExecStart=/usr/local/bin/pricefeed #ExecStart=$binary #" pricefeed.service \
    >"$work/pricefeed.service"
grep -q "^ExecStart=$binary " "$work/pricefeed.service" \
    || { echo "check.sh: ExecStart of pricefeed.service is not /usr/local/bin/pricefeed …" >&2; exit 1; }
verify_out=$(cd "$work" && systemd-analyze verify --man=no --generators=no ./pricefeed.service 2>&1) \
    || { echo "$verify_out" >&2; echo "check.sh: systemd-analyze verify failed" >&2; exit 1; }
if [ -n "$verify_out" ]; then
    echo "$verify_out" >&2
    echo "check.sh: systemd-analyze verify warned about pricefeed.service" >&2
    exit 1
fi
echo "systemd-analyze verify: pricefeed.service is valid"

# 2. security: every setting systemd-analyze counts against the unit must be one of those a
# network service that writes its own store cannot do without; anything else it finds is a
# loosened sandbox.
(cd "$work" && systemd-analyze security --offline=yes ./pricefeed.service | tail -n 1)
(cd "$work" && systemd-analyze security --offline=yes --json=short ./pricefeed.service) \
    | python3 -c '
import json, sys
expected = {
    "PrivateNetwork": "it serves clients on the network",
    "IPAddressDeny": "its clients may come from any address",
    "RestrictAddressFamilies_AF_INET_INET6": "MQTT, HTTP and the price sources are IP",
    "RestrictAddressFamilies_AF_UNIX": "the name resolver may use a local socket",
    "RootDirectoryOrRootImage": "the binary and CA certificates come from the host",
    "DeviceAllow": "ProtectClock= leaves the real-time clock readable",
}
exposed = [c for c in json.load(sys.stdin) if c["exposure"] not in (None, "0.0")]
loose = [c for c in exposed if c["json_field"] not in expected]
for c in loose:
    print("pricefeed.service: {}: {}".format(c["name"], c["description"]), file=sys.stderr)
if loose:
    sys.exit("check.sh: the sandbox of pricefeed.service is looser than it was")
'

# 3. the process inside the sandbox's rules, run as an unprivileged user as under DynamicUser=
# (as root, SQLite would also chown its files, which @privileged refuses and a service never does)
if [ "$(id -u)" -ne 0 ]; then
    echo "check.sh: run as root: the traced pricefeed runs as the user nobody" >&2
    exit 1
fi
mkdir -p "$work/source/0/public" "$work/state"
cp ../../tests/fixtures/sources/kraken.json "$work/source/0/public/Ticker"
python3 -u - "$work/source" >"$work/source.port" 2>/dev/null <<'EOF' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1])
server.serve_forever()
EOF
source_pid=$!
for _ in $(seq 100); do [ -s "$work/source.port" ] && break; sleep 0.1; done
source_port=$(cat "$work/source.port")
chown -R nobody: "$work/state"
chmod 755 "$work"
# A copy the user nobody can run: the build may be in a home directory only its owner enters.
install -m 755 "$binary" "$work/pricefeed"
touch "$work/trace" && chown nobody: "$work/trace"
touch "$work/feed.log"
setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all \
    strace -f -qq -s 4096 -o "$work/trace" \
    "$work/pricefeed" --db "$work/state/pricefeed.db" --source kraken \
    --source-url "kraken=http://localhost:$source_port" --interval 1s \
    --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/feed.log" 2>&1 &
feed_pid=$!
for _ in $(seq 600); do grep -q 'pricefeed running' "$work/feed.log" && break; sleep 0.1; done
running=$(grep -m1 'pricefeed running' "$work/feed.log") \
    || { cat "$work/feed.log" >&2; echo "check.sh: pricefeed did not start" >&2; exit 1; }
http=$(sed -E 's/.* http=([0-9.:]+).*/\1/' <<<"$running")
mqtt_port=$(sed -E 's/.* broker=mqtt:\/\/[0-9.]+:([0-9]+).*/\1/' <<<"$running")
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -t 'btc/#' -C 4 -W 60 >/dev/null
curl -sSf --max-time 10 "http://$http/readyz" >/dev/null
curl -sSf --max-time 10 "http://$http/v1/ticks?since=0" >/dev/null
curl -sSf --max-time 10 "http://$http/metrics" >/dev/null
# An SSE stream does not end by itself: read it for 3 s (curl then exits 28), then look in it.
curl -sS -N --max-time 3 "http://$http/v1/stream?since=0" >"$work/stream" 2>/dev/null || true
grep -q '^event: btc/USD' "$work/stream" \
    || { echo "check.sh: no tick on /v1/stream in 3 s" >&2; exit 1; }
# SIGTERM to pricefeed itself (strace, its parent, would only detach), then strace ends with it.
kill -TERM "$(cat "/proc/$feed_pid/task/$feed_pid/children")"
wait "$feed_pid" || { cat "$work/feed.log" >&2; echo "check.sh: pricefeed did not stop cleanly" >&2; exit 1; }
feed_pid=""
systemd-analyze syscall-filter >"$work/groups" 2>/dev/null
python3 "$here/sandbox_fits.py" "$work/trace" "$work/groups" "$work/state"
