#!/usr/bin/env bash
# Where a broker's time goes at 10,000 subscribers at the product's rate (docs/BENCHMARKS.md,
# "What bounds the fan-out p99"): runs the fan-out scenario against one broker and samples that
# broker's process with `perf record` (Debian's linux-perf; cpu-clock, so it works without
# hardware counters) for 20 s once the subscribers are connected, then prints where the samples
# fell: kernel or user space, the system calls, and the hottest user-space functions.
#
#   bench/profile.sh mosquitto|pricefeed      (release binaries: run bench/run.sh once first)
#
# `bench/profile.sh heap [N]` instead finds where the embedded broker's memory per subscriber goes:
# it runs pricefeed under heaptrack (Debian's heaptrack; installed if missing) while the fan-out
# scenario connects N idle subscribers (default 10,000), and kills it with SIGKILL one second after
# they are all connected, so that what heaptrack reports as not freed is exactly what was live at
# that moment; then prints the allocation sites holding the most, with their call counts (a site
# called N times holds that much per subscriber), and the process's resident memory by mapping.
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: bench/profile.sh mosquitto|pricefeed|heap [N]}"
if [ "$kind" = heap ]; then
    n="${2:-10000}"
    if ! command -v heaptrack >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq heaptrack >/dev/null
    fi
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    out="$(pwd)/bench/results/profile-heap-$n-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$out/bin"
    real="$(pwd)/target/release/pricefeed"
    preload="$(dirname "$(readlink -f "$(command -v heaptrack)")")/../lib/heaptrack/libheaptrack_preload.so"
    interpret="$(dirname "$preload")/libexec/heaptrack_interpret"
    # The fan-out scenario starts `pricefeed` from --bin-dir: this one records every allocation.
    printf '#!/bin/sh\nLD_PRELOAD=%s DUMP_HEAPTRACK_OUTPUT=%s/raw.$$ exec %s "$@"\n' \
        "$preload" "$out" "$real" > "$out/bin/pricefeed"
    chmod +x "$out/bin/pricefeed"
    target/release/pricefeed-bench fanout --bin-dir "$out/bin" --out "$out" --name fanout \
        --brokers pricefeed --subscribers "$n" --ticks 60 --tick-every 1s --feed-interval 5s \
        --attempts 1 > /dev/null 2> "$out/fanout.log" &
    bench=$!
    pid=""
    until [ -n "$pid" ]; do sleep 0.1; pid=$(pgrep -n -f "^$real --db" || true); done
    until [ "$(ls "/proc/$pid/fd" | wc -l)" -ge $((n + 10)) ]; do sleep 0.1; done
    sleep 1
    grep -E 'VmRSS|Threads' "/proc/$pid/status" > "$out/status.txt"
    cp "/proc/$pid/smaps" "$out/smaps.txt"
    kill -9 "$pid"
    wait "$bench" || true # the scenario fails once its broker is gone
    "$interpret" < "$out/raw.$pid" | gzip > "$out/heaptrack.gz"
    rm "$out/raw.$pid"
    {
        echo "## pricefeed with $n idle subscribers"
        cat "$out/status.txt"
        echo "## resident memory by mapping (kB)"
        awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "anonymous" : ($6 ~ /^\// ? "files" : $6)) }
             /^Rss:/ { rss[name] += $2 }
             END { for (k in rss) printf "%10d  %s\n", rss[k], k }' "$out/smaps.txt" | sort -rn
        echo "## live heap by allocation site: bytes, allocations, site"
        heaptrack_print -f "$out/heaptrack.gz" --print-peaks 0 --print-allocators 0 \
            --print-temporary 0 --print-leaks 1 -n 30 -s 3 2> /dev/null > "$out/heaptrack.txt"
        awk '/leaked over/ && !/calls from:/ { size = $1; calls = $4; getline; print size, calls, $0 }' \
            "$out/heaptrack.txt" | head -30 | cut -c1-160
        grep 'total memory leaked' "$out/heaptrack.txt"
    } | tee "$out/summary.txt"
    exit 0
fi
command -v perf >/dev/null || { echo "perf is required (apt-get install -y linux-perf)" >&2; exit 2; }
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
out="bench/results/profile-$kind-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
target/release/pricefeed-bench fanout --bin-dir target/release --out "$out" --name fanout \
    --brokers "$kind" --subscribers 10000 --ticks 40 --tick-every 1s --feed-interval 5s \
    --attempts 1 2> "$out/fanout.log" &
bench=$!
# Connecting 10,000 subscribers takes a second or two; the timed ticks run for 40 s.
sleep 12
if [ "$kind" = mosquitto ]; then pid=$(pgrep -n -x mosquitto); else pid=$(pgrep -n -f "release/pricefeed --source demo"); fi
perf record -F 499 -g -p "$pid" -o "$out/perf.data" -- sleep 20 2> "$out/perf-record.log"
wait "$bench"
report() { perf report -i "$out/perf.data" --stdio -g none "$@" 2>/dev/null | grep -E '^ +[0-9]'; }
{
    echo "## $kind: the fan-out measured while sampling"
    grep '| 10000' "$out/fanout.md"
    echo "## samples by object"
    report --no-children --sort dso | head -5
    echo "## system calls and the loopback receive path (inclusive)"
    report --children --sort symbol \
        | grep -E 'do_syscall_64|ksys_write|do_writev|ksys_read|__sys_recvfrom|__x64_sys_epoll|net_rx_action' | cut -c1-60
    echo "## hottest user-space functions (exclusive)"
    report --no-children --sort dso,symbol | grep -v kernel.kallsyms | head -15 | cut -c1-140
} | tee "$out/summary.txt"
