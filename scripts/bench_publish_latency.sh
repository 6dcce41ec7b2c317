#!/usr/bin/env bash
# POST /post latency while the leader publishes snapshots of a large table back to back,
# versus a leader that does not publish during the run. Same table, same load, one run.
#
#   scripts/bench_publish_latency.sh            # 1M distinct words, 10 s per case
#   WORDS=100000 SECONDS_PER_CASE=5 scripts/bench_publish_latency.sh
#
# Needs wrk (Debian package `wrk`) and a release build (`make build`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MEMDB_BIN:-$root/target/release/memdb}
words=${WORDS:-1000000}
secs=${SECONDS_PER_CASE:-10}
port=${PORT:-18480}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
[ -x "$bin" ] || { echo "no binary at $bin: run 'make build'" >&2; exit 1; }

tmp=$(mktemp -d)
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

python3 -c "
import sys
n = int(sys.argv[1])
sys.stdout.write(' '.join('w%07d' % i for i in range(n)))
" "$words" >"$tmp/prefill.txt"

health() { curl -fsS "http://127.0.0.1:$port/health"; }
field() { python3 -c "import json,sys; h=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

run_case() {
  local name=$1 interval=$2
  "$bin" leader --port "$port" --data-dir "$tmp/$name" --snapshot-interval "$interval" \
    --max-body 64MiB >"$tmp/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do health >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS -H 'content-type: text/plain' --data-binary @"$tmp/prefill.txt" \
    "http://127.0.0.1:$port/post" >/dev/null
  local before after
  before=$(health | field 'h["snapshot"]["publishes"]')
  local out
  out=$(wrk -t1 -c16 -d"${secs}s" --latency -s "$root/scripts/wrk/post.lua" "http://127.0.0.1:$port/post")
  after=$(health | field 'h["snapshot"]["publishes"]')
  local last_ms
  last_ms=$(health | field 'h["snapshot"]["last_duration_ms"]')
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  printf '%-28s %10s req/s   p50 %-9s p99 %-9s publishes during run: %s (last took %s ms)\n' \
    "$name (interval $interval)" "$rps" "$p50" "$p99" "$((after - before))" "$last_ms"
  kill -TERM "$pid"; wait "$pid" || true; pid=""
}

echo "table: $words distinct words; load: wrk -t1 -c16 -d${secs}s, 10-word POST /post"
run_case no-publishing 1h
run_case publishing 10ms
run_case no-publishing-again 1h
