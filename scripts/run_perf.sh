#!/usr/bin/env bash
# Fresh cluster, one `memdb perf` run against it, cluster stopped (whatever happened).
#
#   scripts/run_perf.sh network|local|ha [memdb perf flags...]
#
# ha: a raft group of three voters (each with a local replica); the writes carry
# Idempotency-Keys and are retried through any voter; the leader is killed (SIGKILL)
# in the middle of the writes and started again a second later. Fails unless every
# node holds exactly what was acknowledged.
#
# The perf cluster lives in a run directory of its own (run/perf/<mode>), never the
# one `make start-servers` uses, and its data is wiped only after checking that no
# process of ours still runs there and that no leader holds the directory's lock.
set -euo pipefail
mode=${1:?usage: $0 network|local [perf flags]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MEMDB_BIN:-$root/target/release/memdb}
export MEMDB_RUN_DIR=${MEMDB_PERF_RUN_DIR:-$root/run/perf}
data="$MEMDB_RUN_DIR/$mode/data"

# Check first, delete after.
for m in network local ha; do
  if "$root/scripts/cluster.sh" running "$m"; then
    echo "a perf cluster ($m) is still running under $MEMDB_RUN_DIR; stop it first" >&2
    exit 1
  fi
done
for lock in "$data"/*/LOCK; do
  if [ -e "$lock" ] && ! flock -n "$lock" true; then
    echo "a leader holds $lock; not deleting its data" >&2
    exit 1
  fi
done
rm -rf "$data"
"$root/scripts/cluster.sh" start "$mode" >/dev/null
trap '"$root/scripts/cluster.sh" stop "$mode" >/dev/null' EXIT
if [ "$mode" != ha ]; then
  "$bin" perf http://localhost:8080 http://localhost:8081 http://localhost:8082 http://localhost:8083 "$@"
  exit $?
fi
leader=$("$root/scripts/cluster.sh" leader ha)
ports=(8080 8180 8280)
check=${ports[$((leader % 3))]} # a follower: the table to compare against
voters=http://localhost:8080,http://localhost:8180,http://localhost:8280
replicas=()
for p in "${ports[@]}"; do
  [ "$p" = "$check" ] || replicas+=("http://localhost:$p")
  replicas+=("http://localhost:$((p + 1))")
done
echo "voter $leader leads; it is killed 2s into the writes and started again 1s later" >&2
"$bin" perf "http://localhost:$check" "${replicas[@]}" --write-to "$voters" --retry-with-keys \
  --duration 6s --concurrency 64 --converge-timeout 20s "$@" &
perf=$!
sleep 2
kill -KILL "$(cat "$MEMDB_RUN_DIR/ha/pids/voter-$leader.pid")"
echo "killed voter $leader (SIGKILL)" >&2
sleep 1
"$root/scripts/cluster.sh" revive ha "$leader" >/dev/null
echo "voter $leader is back" >&2
wait "$perf"
