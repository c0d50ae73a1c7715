#!/usr/bin/env bash
# Where the time goes (docs/BENCHMARKS.md).
#
#   bench/profile.sh mosquitto|pricefeed      (release binaries: run bench/run.sh once first)
#
# One broker at 10,000 subscribers at the product's rate ("What bounds the fan-out p99"): runs the
# fan-out scenario against that broker and samples its process with `perf record` (Debian's
# linux-perf; cpu-clock, so it works without hardware counters) for 20 s once the subscribers are
# connected, then prints where the samples fell: kernel or user space, the system calls, and the
# hottest user-space functions.
#
#   bench/profile.sh heap [N]
#
# Finds where the embedded broker's memory per subscriber goes:
# it runs pricefeed under heaptrack (Debian's heaptrack; installed if missing) while the fan-out
# scenario connects N idle subscribers (default 10,000), and kills it with SIGKILL one second after
# they are all connected, so that what heaptrack reports as not freed is exactly what was live at
# that moment; then prints the allocation sites holding the most, with their call counts (a site
# called N times holds that much per subscriber), and the process's resident memory by mapping.
#
#   bench/profile.sh history [HISTORY_API]
#
# The history API's answers that no answer cache serves ("Where an uncached answer's time goes"):
# builds history-api with line tables (target/profiling), generates a year store once
# (bench/results/profile-store, the same every time: a fixed end), and runs history-api (or the
# binary given, to profile another version of the code on the same store) under callgrind on a
# copy of it. Instructions are counted only while 200 distinct questions of one kind are asked on
# one connection: the last hour ("tail": the benchmark's last hour with the answer cache
# defeated), a page of the same size at the start of the store ("deep": `since` one second apart,
# as the benchmark asks), the same page at starts an hour apart across the year ("spread": no two
# questions reach the same ticks), and, after a tick is committed by another process, the next
# question (answered from SQLite) and the refresh of the tail it starts ("refresh", ten commits).
# Then the same binary runs without callgrind and thousands of questions of each of the first three
# kinds measure its CPU time per answer (utime + stime: noisy on a shared machine). Prints instructions
# per answer by where they were spent (self cost, grouped by function and file).
# Needs valgrind, curl and sqlite3 (Debian's packages of those names).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:?usage: bench/profile.sh mosquitto|pricefeed|heap [N]|history [HISTORY_API]}"
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

profile_history() {
    local tool
    for tool in valgrind callgrind_control callgrind_annotate curl sqlite3; do
        command -v "$tool" >/dev/null || { echo "$tool is required (apt-get install -y valgrind curl sqlite3)" >&2; exit 2; }
    done
    # Symbols and line tables, so callgrind can name the inlined code; the release profile otherwise.
    CARGO_TARGET_DIR=target/profiling CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        CARGO_PROFILE_RELEASE_STRIP=none cargo build --release --locked -p history-server -p bench
    local api="${1:-target/profiling/release/history-api}"
    local store=bench/results/profile-store/year.db
    if [ ! -f "$store" ]; then
        mkdir -p "$(dirname "$store")"
        target/profiling/release/pricefeed-bench gen-store --db "$store" --days 365 \
            --end 2026-12-01T00:00:00Z
    fi
    out="bench/results/profile-history-$(date -u +%Y%m%dT%H%M%SZ)"
    mkdir -p "$out"
    {
        echo "binary: $api"
        echo "git: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (uncommitted changes)')"
        echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    } > "$out/machine.txt"
    # Commits below change the store: each run works on its own copy.
    db="$out/year.db"
    cp "$store" "$db"
    pid=""
    trap 'rm -f "$db" "$db-wal" "$db-shm"; [ -z "$pid" ] || kill "$pid" 2>/dev/null || true' EXIT
    local first last n=200
    first=$(sqlite3 "$db" "SELECT min(ts) / 1000 FROM ticks WHERE currency = 840")
    last=$(sqlite3 "$db" "SELECT max(ts) / 1000 FROM ticks WHERE currency = 840")
    # The benchmark's two uncached questions: the last hour, and a page of the same size (1,442
    # ticks) at the start of the store; `since` one second apart, so no answer repeats.
    local hour=$((last - 3600)) deep=$((first + 1000))
    local tail_q="currency=USD,EUR&since=" deep_q="currency=USD,EUR&limit=1442&since="
    ask_many() { # ask_many KIND COUNT: COUNT distinct questions of KIND, on one connection
        local k
        for k in $(seq "$2"); do
            case $1 in
                # As the benchmark asks: 1,000 `since` values one second apart, in turn.
                tail) echo "url = \"http://127.0.0.1:$port/v1/ticks?$tail_q$((hour - k % 1000))\"" ;;
                deep) echo "url = \"http://127.0.0.1:$port/v1/ticks?$deep_q$((deep - k % 1000))\"" ;;
                spread) echo "url = \"http://127.0.0.1:$port/v1/ticks?$deep_q$((first + 3600 * k))\"" ;;
            esac
        done > "$out/urls.txt"
        curl -sf --config "$out/urls.txt" > /dev/null
    }

    start() { # start LOG [COMMAND PREFIX...]: runs history-api, sets pid and port
        local log="$1"
        shift
        RUST_LOG=info,history_api=debug "$@" "$api" --db "$db" --http-listen 127.0.0.1:0 \
            --http-rate-limit 0 --interval 5s > "$log" 2>&1 &
        pid=$!
        port=""
        for _ in $(seq 600); do
            port=$(grep -o 'address=127.0.0.1:[0-9]*' "$log" | head -1 | cut -d: -f2 || true)
            [ -n "$port" ] && return
            sleep 0.1
        done
        echo "history-api did not start: $log" >&2
        exit 1
    }
    ask() { curl -sf "http://127.0.0.1:$port/v1/ticks?$1" > /dev/null; }
    answered() { # answered SOURCE: pricefeed_history_answers_total{source=SOURCE}
        curl -sf "http://127.0.0.1:$port/metrics" \
            | sed -n "s/^pricefeed_history_answers_total{source=\"$1\"} //p"
    }
    refreshes() { grep -c 'recent ticks read into memory' "$1" || true; }
    warm() { # the tail in memory, SQLite's pages and a reader connection warm
        local memory
        ask "$tail_q$hour"
        for _ in $(seq 1200); do
            memory=$(answered memory)
            ask "$tail_q$((hour + 1))"
            [ "$(answered memory)" -gt "$memory" ] && break
            sleep 0.1
        done
        ask "$deep_q$deep"
    }
    commit() { # commit K: another process stores the next slot of both currencies
        local ts=$(((last + 5 * $1) * 1000))
        sqlite3 "$db" "PRAGMA busy_timeout = 5000;
            INSERT INTO ticks (currency, ts, price) VALUES (840, $ts, '96000.5'), (978, $ts, '89000.25');" > /dev/null
    }

    # Counting is switched on only around each phase: zeroing the counts instead (`-z`) leaves
    # the calls in progress at that moment (the runtime's threads) holding costs they did not
    # incur, in every function on their stacks.
    start "$out/callgrind.log" valgrind --tool=callgrind --instr-atstart=no \
        --callgrind-out-file="$out/callgrind.out"
    warm
    local name
    # Each dump holds what was counted since the one before.
    for name in tail deep spread; do
        callgrind_control -i on "$pid" > /dev/null
        ask_many $name $n
        callgrind_control -d "$name" "$pid" > /dev/null
        callgrind_control -i off "$pid" > /dev/null
    done
    # A commit retires the tail; the next question is answered from SQLite and starts the refresh.
    callgrind_control -i on "$pid" > /dev/null
    local k done_before
    for k in $(seq 10); do
        done_before=$(refreshes "$out/callgrind.log")
        commit "$k"
        ask "$tail_q$((hour + 5 * k))"
        for _ in $(seq 1200); do
            [ "$(refreshes "$out/callgrind.log")" -gt "$done_before" ] && break
            sleep 0.1
        done
    done
    callgrind_control -d refresh "$pid" > /dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true

    # The same questions without callgrind, for the CPU time they take.
    start "$out/plain.log"
    warm
    cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
    local hz before
    hz=$(getconf CLK_TCK)
    local count
    for name in tail deep spread; do
        # Enough answers that the clock's ticks (10 ms) are a few microseconds per answer.
        [ $name = spread ] && count=3000 || count=5000
        before=$(cpu)
        ask_many $name $count
        echo "$name $(( ($(cpu) - before) * 1000000 / hz / count )) µs ($count answers)" >> "$out/cpu.txt"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/machine.txt"

    # Self cost per function, grouped; the first rule that matches "file:function" wins.
    group() {
        callgrind_annotate --auto=no --threshold=100 "$1" 2>/dev/null \
            | sed -nE 's/^ *([0-9,]+) \([^)]*\) +(.*)$/\1 \2/p' | grep -v 'PROGRAM TOTALS' \
            | awk -v per="$2" '
            {
                n = $1; gsub(",", "", n); $1 = ""; f = $0
                if (f ~ /sqlite3\.c:|rusqlite|fallible_streaming_iterator/) g = "SQLite: statements, b-tree, rusqlite"
                else if (f ~ /Price::write_to|Timedate::write_to|Tick::write_wire|write_wire_from_text/) g = "encode: ticks into JSON (timedates, prices)"
                else if (f ~ /Price as core::str::traits::FromStr|from_ascii_radix|history_store::|str::converts::from_utf8/) g = "decode: rows into ticks (price parse, UTF-8 check)"
                else if (f ~ /twox_hash/) g = "entity tag (XXH3 of the body)"
                else if (f ~ /answer::cut/) g = "limit cut (merge of the currencies)"
                else if (f ~ /history-api\/src\/(server|limits|metrics)\.rs/) g = "HTTP: hyper, axum, tower, our layers"
                else if (f ~ /history_api|history-api\/src/) g = "page: assembly, JSON envelope, cache, query"
                else if (f ~ /hyper|axum|tower|http|h1::/) g = "HTTP: hyper, axum, tower, our layers"
                else if (f ~ /:(__)?mem(cpy|move)/) g = "memcpy (counted per byte, see the note)"
                else if (f ~ /malloc|free|realloc|calloc|_int_|arena|unlink_chunk|tcache|raw_vec|RawVec/) g = "allocation"
                else if (f ~ /fmt/) g = "std formatting (format!)"
                else if (f ~ /tokio|mio|parking|futex|pthread|syscall|epoll|std::sys|std::thread/) g = "runtime: tasks, threads, locks"
                else g = "other"
                sum[g] += n; total += n
            }
            END {
                for (g in sum) printf "%12.0f  %5.1f%%  %s\n", sum[g] / per, 100 * sum[g] / total, g
                printf "%12.0f  100.0%%  total instructions per answer\n", total / per
            }' | sort -rn
    }
    {
        echo "## instructions per answer, by where they were spent (callgrind, self cost)"
        # callgrind numbers its dumps in the order asked: tail, deep, spread, refresh.
        echo "### tail: the last hour ($n answers)"
        group "$out/callgrind.out.1" "$n"
        echo "### deep: a page at the start of the store, since one second apart ($n answers)"
        group "$out/callgrind.out.2" "$n"
        echo "### spread: the same page at starts an hour apart ($n answers)"
        group "$out/callgrind.out.3" "$n"
        echo "### refresh: per commit, the question after it (from SQLite) and the tail read again (10 commits)"
        group "$out/callgrind.out.4" 10
        echo "## CPU per answer without callgrind (utime + stime)"
        cat "$out/cpu.txt"
        echo "## refreshes of the tail (elapsed, without callgrind)"
        grep 'recent ticks read into memory' "$out/plain.log" | sed -E 's/.*elapsed_ms=([0-9.]+).*/\1 ms/' || true
        cat "$out/machine.txt"
    } | tee "$out/summary.txt"
}

if [ "$kind" = history ]; then
    profile_history "${2:-}"
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
