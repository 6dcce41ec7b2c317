#!/usr/bin/env bash
# Side by side, in one run: a bare axum baseline, a leader alone, a leader with 3 network
# replicas and a leader with 3 local replicas, under the same wrk loads; then checks that
# every replica holds exactly the leader's counts. See scripts/bench_http.py.
#
#   scripts/bench-http.sh        # RUNS=3 DURATION=5s CONNECTIONS=32
#
# Needs wrk (Debian package `wrk`), python3 and a release build (`make build`).
# Uses ports 8080-8083 and 8090, and ./run/bench (wiped first).
set -euo pipefail
exec python3 "$(dirname "$0")/bench_http.py" "$@"
