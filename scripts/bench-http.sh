#!/usr/bin/env bash
# Side by side, in one run: a leader with 3 network replicas, then a leader with 3 local
# replicas, under the same wrk load. Reports the median of RUNS runs per workload and
# checks that every replica ends with exactly the leader's counts.
#
#   scripts/bench-http.sh                 # RUNS=3 DURATION=5s CONNECTIONS=32
#
# Needs wrk (Debian package `wrk`) and a release build (`make build`). Uses ports
# 8080-8083 and ./run/bench-<mode> (wiped first).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${RUNS:-3}
dur=${DURATION:-5s}
conns=${CONNECTIONS:-32}
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
export MEMDB_RUN_DIR=$root/run/bench
mode=""
cleanup() { [ -z "$mode" ] || "$root/scripts/cluster.sh" stop "$mode" >/dev/null || true; }
trap cleanup EXIT

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rps() { wrk -t1 -c"$conns" -d"$dur" "$@" | awk '/Requests\/sec/ {printf "%d\n", $2}'; }

printf '%-8s %-34s %12s\n' mode workload "req/s (median of $runs)"
for mode in network local; do
  rm -rf "$MEMDB_RUN_DIR/$mode"
  "$root/scripts/cluster.sh" start "$mode" >/dev/null
  curl -fsS -d text='hello world' http://127.0.0.1:8080/post >/dev/null
  sleep 1.2 # local replicas: let the first snapshot with "hello" be published
  get=$(for _ in $(seq "$runs"); do rps 'http://127.0.0.1:8081/wordcount?word=hello'; done | median)
  printf '%-8s %-34s %12s\n' "$mode" "replica GET /wordcount (1 word)" "$get"
  post=$(for _ in $(seq "$runs"); do rps -s "$root/scripts/wrk/post.lua" http://127.0.0.1:8080/post; done | median)
  printf '%-8s %-34s %12s\n' "$mode" "leader POST /post (10 words)" "$post"
  # Convergence: every replica must reach the leader's seq with identical counts.
  seq=$(curl -fsS http://127.0.0.1:8080/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["seq"])')
  want=$(curl -fsS "http://127.0.0.1:8080/wordcount?word=the&word=dog&word=hello")
  for p in 8081 8082 8083; do
    got=""
    for _ in $(seq 1 100); do
      got=$(curl -fsS "http://127.0.0.1:$p/wordcount?word=the&word=dog&word=hello&min_seq=$seq" || true)
      [ "$got" = "$want" ] && break
      sleep 0.1
    done
    if [ "$got" != "$want" ]; then echo "replica :$p differs: $got vs leader $want" >&2; exit 1; fi
  done
  echo "$mode: all 3 replicas equal the leader at seq $seq"
  "$root/scripts/cluster.sh" stop "$mode" >/dev/null
done
mode=""
