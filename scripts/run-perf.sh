#!/usr/bin/env bash
# Fresh cluster, one `memdb perf` run against it, cluster stopped (whatever happened).
#
#   scripts/run-perf.sh network|local [memdb perf flags...]
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
for m in network local; do
  if "$root/scripts/cluster.sh" running "$m"; then
    echo "a perf cluster ($m) is still running under $MEMDB_RUN_DIR; stop it first" >&2
    exit 1
  fi
done
if [ -e "$data/leader/LOCK" ] && ! flock -n "$data/leader/LOCK" true; then
  echo "a leader holds $data/leader/LOCK; not deleting its data" >&2
  exit 1
fi
rm -rf "$data"
"$root/scripts/cluster.sh" start "$mode" >/dev/null
trap '"$root/scripts/cluster.sh" stop "$mode" >/dev/null' EXIT
"$bin" perf http://localhost:8080 http://localhost:8081 http://localhost:8082 http://localhost:8083 "$@"
