#!/usr/bin/env bash
# POST /post throughput and latency with --fsync always, everysec and no, side by side
# in one run: a leader alone, 64 concurrent clients (wrk -t2 -c64), 10-word bodies.
# Group commit should keep `always` within a small factor of `no`.
#
#   scripts/bench_fsync.sh            # RUNS=3 DURATION=5s CONNECTIONS=64
#
# Needs wrk and a release build. Uses port 18490 and a temp dir on the same disk as
# ./run (so the fsyncs hit the disk the data would live on).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MEMDB_BIN:-$root/target/release/memdb}
runs=${RUNS:-3}
dur=${DURATION:-5s}
conns=${CONNECTIONS:-64}
port=${PORT:-18490}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
mkdir -p "$root/run"
tmp=$(mktemp -d "$root/run/fsync.XXXXXX")
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

printf '%-9s %12s %10s %10s\n' fsync "req/s" p50 p99
for mode in always everysec no; do
  for _ in $(seq "$runs"); do
    rm -rf "$tmp/$mode"
    "$bin" leader --port "$port" --data-dir "$tmp/$mode" --fsync "$mode" >"$tmp/$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done
    wrk -t2 -c"$conns" -d"$dur" --latency -s "$root/scripts/wrk/post.lua" "http://127.0.0.1:$port/post" |
      awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} END {print r, p50, p99}'
    kill -TERM "$pid"; wait "$pid" || true; pid=""
  done | sort -n | awk -v m="$mode" '{a[NR]=$0} END {split(a[int((NR+1)/2)], f, " "); printf "%-9s %12.0f %10s %10s\n", m, f[1], f[2], f[3]}'
done
