#!/usr/bin/env bash
# Memory of 3 network replicas vs 3 local replicas holding the same table, side by side.
# Reports each process's PSS (proportional set size: shared pages are split between the
# processes mapping them), so pages the local replicas share count once in their sum.
#
#   scripts/bench_memory.sh            # WORDS=1000000 distinct words
#
# Needs python3, curl and a release build. Uses ports 8080-8083 and ./run/mem.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
words=${WORDS:-1000000}
export MEMDB_RUN_DIR=$root/run/mem
mode=""
cleanup() { [ -z "$mode" ] || "$root/scripts/cluster.sh" stop "$mode" >/dev/null || true; }
trap cleanup EXIT

pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
rss_kib() { awk '/^Rss:/ {print $2}' "/proc/$1/smaps_rollup"; }

printf '%-8s %14s %14s %22s %20s\n' mode "leader PSS MiB" "snapshot MiB" "3 replicas PSS MiB" "per replica RSS MiB"
for mode in network local; do
  rm -rf "$MEMDB_RUN_DIR/$mode"
  "$root/scripts/cluster.sh" start "$mode" >/dev/null
  # 1M distinct words, posted in chunks under the 1 MiB body limit.
  python3 - "$words" <<'PY'
import sys, urllib.request
n = int(sys.argv[1]); chunk = 80_000
for start in range(0, n, chunk):
    body = " ".join("w%07d" % i for i in range(start, min(n, start + chunk))).encode()
    req = urllib.request.Request("http://127.0.0.1:8080/post", data=body,
                                 headers={"content-type": "text/plain"})
    urllib.request.urlopen(req, timeout=60).read()
PY
  seq=$(curl -fsS http://127.0.0.1:8080/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])')
  for p in 8081 8082 8083; do
    curl -fsS --max-time 60 "http://127.0.0.1:$p/wordcount?word=w0000001&min_seq=$seq" >/dev/null
  done
  sleep 1
  leader=$(cat "$MEMDB_RUN_DIR/$mode/pids/leader.pid")
  total=0; rss=""
  for p in 8081 8082 8083; do
    pid=$(cat "$MEMDB_RUN_DIR/$mode/pids/replica-$p.pid")
    total=$((total + $(pss_kib "$pid")))
    rss="$rss $(( $(rss_kib "$pid") / 1024 ))"
  done
  snap=$(stat -c %s "$MEMDB_RUN_DIR/$mode/data/leader/snapshot.memdb")
  printf '%-8s %14d %14d %22d %20s\n' "$mode" $(( $(pss_kib "$leader") / 1024 )) $(( snap / 1048576 )) $(( total / 1024 )) "$rss"
  "$root/scripts/cluster.sh" stop "$mode" >/dev/null
done
mode=""
