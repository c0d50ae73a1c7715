#!/usr/bin/env bash
# Runs the three etcd members of broker-config/external/etcd/ on loopback (a temporary copy of each
# file with the hosts etcd1..etcd3 and the ports 2379/2380 rewritten to free loopback ports, and
# its own data directory), and checks that they form one healthy cluster of 3 members on which the
# v3 election API that `pricefeed --elect` uses elects exactly one leader.
# Needs Debian's etcd-server and etcd-client (etcd 3.4), and python3. Takes a few seconds, at most
# about a minute; exits 0 if all holds, 1 if not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export ETCDCTL_API=3

fail() {
    echo "check-etcd: FAIL: $*" >&2
    for i in 1 2 3; do
        [ -s "${tmp:-}/etcd$i.log" ] && { echo "--- etcd$i log (end)"; tail -n 15 "$tmp/etcd$i.log"; }
    done >&2
    exit 1
}
for tool in etcd etcdctl python3; do
    command -v "$tool" >/dev/null || fail "$tool not found (Debian: etcd-server, etcd-client)"
done

tmp=$(mktemp -d)
pids=()
cleanup() {
    # The candidate first, so that it resigns while the members still answer; what has not ended
    # after 2 s is killed.
    local k pid
    for ((k = ${#pids[@]} - 1; k >= 0; k--)); do kill "${pids[k]}" 2>/dev/null || true; done
    for _ in {1..20}; do
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && break; done || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# Six free loopback ports (client and peer for each member), below the ephemeral range: a member's
# outgoing connection cannot take one of them before the member that is to listen on it does.
read -r -a ports <<<"$(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
first, last = (20000, low) if low > 21000 else (low - 1000, low)
picked = []
while len(picked) < 6:
    port = random.randrange(first, last)
    if port in picked:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    picked.append(port)
print(*picked)
PY
)"
client() { echo "${ports[$((2 * $1 - 2))]}"; }
peer() { echo "${ports[$((2 * $1 - 1))]}"; }

rewrite=()
for j in 1 2 3; do
    rewrite+=(-e "s#http://etcd$j:2379#http://127.0.0.1:$(client $j)#g"
              -e "s#http://etcd$j:2380#http://127.0.0.1:$(peer $j)#g")
done
for i in 1 2 3; do
    sed "${rewrite[@]}" \
        -e "s#^listen-client-urls: http://0.0.0.0:2379\$#listen-client-urls: http://127.0.0.1:$(client $i)#" \
        -e "s#^listen-peer-urls: http://0.0.0.0:2380\$#listen-peer-urls: http://127.0.0.1:$(peer $i)#" \
        -e "s#^data-dir: .*#data-dir: $tmp/data$i#" \
        "$here/etcd/etcd$i.yml" >"$tmp/etcd$i.yml"
    # Every address outside comments rewritten, or the copy would reach for the real hosts.
    if grep -v '^#' "$tmp/etcd$i.yml" | grep -E 'etcd[0-9]+:|0\.0\.0\.0|:23(79|80)\b'; then
        fail "etcd/etcd$i.yml: the lines above were not rewritten to loopback"
    fi
    grep -qx "name: etcd$i" "$tmp/etcd$i.yml" || fail "etcd/etcd$i.yml: its name is not etcd$i"
done

for i in 1 2 3; do
    etcd --config-file "$tmp/etcd$i.yml" >"$tmp/etcd$i.log" 2>&1 &
    pids+=($!)
done
endpoints="127.0.0.1:$(client 1),127.0.0.1:$(client 2),127.0.0.1:$(client 3)"
ctl() { etcdctl --endpoints="$endpoints" --dial-timeout=2s --command-timeout=3s "$@"; }

deadline=$((SECONDS + 30))
until ctl endpoint health >"$tmp/health" 2>&1; do
    for pid in "${pids[@]:0:3}"; do kill -0 "$pid" 2>/dev/null || fail "a member exited"; done
    [ "$SECONDS" -lt "$deadline" ] || fail "not all 3 members healthy within 30 s: $(cat "$tmp/health")"
    sleep 0.5
done

ctl member list >"$tmp/members"
started=$(grep -c ', started, etcd[123], ' "$tmp/members" || true)
[ "$started" -eq 3 ] && [ "$(wc -l <"$tmp/members")" -eq 3 ] \
    || fail "member list does not show the 3 members started:
$(cat "$tmp/members")"

# The election: a first candidate wins and holds it; a second one, campaigning meanwhile, does not.
etcdctl --endpoints="$endpoints" elect /pricefeed/publisher node-1 >"$tmp/elect1" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 10))
until grep -qx node-1 "$tmp/elect1"; do
    [ "$SECONDS" -lt "$deadline" ] || fail "the first candidate was not elected within 10 s: $(cat "$tmp/elect1")"
    sleep 0.2
done
timeout -k 1 2 etcdctl --endpoints="$endpoints" elect /pricefeed/publisher node-2 >"$tmp/elect2" 2>&1 || true
if grep -qx node-2 "$tmp/elect2"; then fail "a second candidate was elected while the first held it"; fi
observed=$(timeout -k 1 2 etcdctl --endpoints="$endpoints" elect --listen /pricefeed/publisher 2>/dev/null || true)
grep -qx node-1 <<<"$observed" || fail "a listener does not see node-1 as the leader: $observed"

echo "check-etcd: ok (3 members healthy and started; one leader elected on /pricefeed/publisher)"
