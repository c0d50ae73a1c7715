#!/usr/bin/env bash
# Where a broker's time goes at 10,000 subscribers at the product's rate (docs/BENCHMARKS.md,
# "What bounds the fan-out p99"): runs the fan-out scenario against one broker and samples that
# broker's process with `perf record` (Debian's linux-perf; cpu-clock, so it works without
# hardware counters) for 20 s once the subscribers are connected, then prints where the samples
# fell: kernel or user space, the system calls, and the hottest user-space functions.
#
#   bench/profile.sh mosquitto|pricefeed      (release binaries: run bench/run.sh once first)
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: bench/profile.sh mosquitto|pricefeed}"
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
