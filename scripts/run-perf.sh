#!/usr/bin/env bash
# Fresh cluster, one `memdb perf` run against it, cluster stopped (whatever happened).
#
#   scripts/run-perf.sh network|local [memdb perf flags...]
#
# The cluster's data directory is wiped first, so runs do not inherit old counts.
set -euo pipefail
mode=${1:?usage: $0 network|local [perf flags]}
shift
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MEMDB_BIN:-$root/target/release/memdb}
rm -rf "${MEMDB_RUN_DIR:-$root/run}/$mode/data"
"$root/scripts/cluster.sh" start "$mode" >/dev/null
trap '"$root/scripts/cluster.sh" stop "$mode" >/dev/null' EXIT
"$bin" perf http://localhost:8080 http://localhost:8081 http://localhost:8082 http://localhost:8083 "$@"
