#!/usr/bin/env bash
# Tests the history API with a tool we did not write: Schemathesis generates requests for every
# route in the document the server serves (/openapi.json), valid and invalid, and checks each
# answer: never a 5xx, a status the document lists, its content type, headers and body (for
# /v1/stream, the first events of the stream, each against the document's event schema), invalid
# input refused, other methods refused with 405 and Allow. Then
# stream_check.py checks what the document says of /v1/stream in words (first events, bad
# input).
#
# The server is the built pricefeed on the demo source (no network), on free loopback ports,
# with a store of its own. Generation is random: each run tries other inputs, and prints its seed;
# PRICEFEED_SCHEMATHESIS_SEED=N repeats a run.
#
# Usage: ops/schemathesis/check.sh [PRICEFEED_BINARY]; by default the debug build under
# $CARGO_TARGET_DIR (or target/). Installs Schemathesis from PyPI (the version below) if it is
# missing or another version.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

version=4.32.5
if ! python3 -c "import schemathesis, sys; sys.exit(schemathesis.__version__ != '$version')" \
    >/dev/null 2>&1; then
    echo "installing schemathesis $version from PyPI" >&2
    python3 -m pip install -q "schemathesis==$version"
fi

binary=${1:-${CARGO_TARGET_DIR:-$here/../../target}/debug/pricefeed}
binary=$(realpath "$binary")
[ -x "$binary" ] || { echo "check.sh: no pricefeed binary at $binary (build it first)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
    [ -n "${feed_pid:-}" ] && kill "$feed_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$binary" --source demo --interval 250ms --db "$work/pricefeed.db" \
    --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$work/feed.log" 2>&1 &
feed_pid=$!
for _ in $(seq 600); do grep -q 'pricefeed running' "$work/feed.log" 2>/dev/null && break; sleep 0.1; done
running=$(grep -m1 'pricefeed running' "$work/feed.log") \
    || { cat "$work/feed.log" >&2; echo "check.sh: pricefeed did not start" >&2; exit 1; }
base="http://$(sed -E 's/.* http=([0-9.:]+).*/\1/' <<<"$running")"
# A few ticks of each currency stored, so that backfills and pages have something in them.
for _ in $(seq 300); do
    curl -sf "$base/v1/ticks?since=0&limit=8" 2>/dev/null \
        | python3 -c 'import json, sys; t = json.load(sys.stdin)["ticks"]; sys.exit(min(map(len, t.values())) < 4)' \
        && break
    sleep 0.1
done

seed=()
[ -n "${PRICEFEED_SCHEMATHESIS_SEED:-}" ] && seed=(--seed "$PRICEFEED_SCHEMATHESIS_SEED")
# Every check Schemathesis has but positive_data_acceptance: it expects any request the document
# allows to be accepted, and OpenAPI cannot say that `since` and `cursor` exclude each other (the
# document says it in words; both together are a 400 naming `cursor`).
checks=(--checks all --exclude-checks positive_data_acceptance)
# Hypothesis keeps its example database in the working directory: the temporary one.
cd "$work"
st --config-file "$here/schemathesis.toml" run "$base/openapi.json" "${checks[@]}" --exclude-path /v1/stream \
    --max-examples 100 --workers 2 "${seed[@]}"
# A stream does not end: Schemathesis reads each one's first 20 events or for 3 s, whichever
# comes first (4 slots a second, both currencies: about 3 s when nothing is backfilled).
st --config-file "$here/schemathesis.toml" run "$base/openapi.json" "${checks[@]}" --include-path /v1/stream \
    --max-examples 25 --workers 2 --request-timeout 3 "${seed[@]}"
python3 "$here/stream_check.py" "$base"
