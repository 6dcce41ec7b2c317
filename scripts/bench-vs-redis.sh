#!/usr/bin/env bash
# memdb vs Redis on this machine, side by side in one run; prints ratios.
# See scripts/bench_vs_redis.py for exactly what is compared.
#
#   scripts/bench-vs-redis.sh        # RUNS=3 DURATION=5s CONNECTIONS=32
#
# Needs redis-server, redis-benchmark (Debian package `redis-server`), wrk, python3 and a
# release build. Starts Redis on 127.0.0.1:16379 (REDIS_PORT) and stops it after.
set -euo pipefail
exec python3 "$(dirname "$0")/bench_vs_redis.py" "$@"
