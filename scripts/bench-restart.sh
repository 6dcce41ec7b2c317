#!/usr/bin/env bash
# Network replicas following a restarted leader: continuing its history (the default)
# vs a full sync of the whole table (history.json removed), side by side in one run.
#
#   scripts/bench-restart.sh          # WORDS=1000000 REPLICAS=2 RUNS=3
#
# Needs python3 and a release build (cargo build --release). Uses free ephemeral ports
# and a temp dir under ./run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export MEMDB_BIN=${MEMDB_BIN:-$root/target/release/memdb}
mkdir -p "$root/run"
export TMPDIR="$root/run"
exec python3 "$root/scripts/bench_restart.py"
