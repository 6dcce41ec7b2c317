#!/usr/bin/env python3
"""memdb vs Redis on the same machine, in one run; prints ratios.

    scripts/bench_vs_redis.py        # RUNS=3 DURATION=5s CONNECTIONS=32

Needs redis-server, redis-benchmark (Debian package `redis-server`), wrk and a release
build. Starts Redis on 127.0.0.1:16379 (REDIS_PORT) and stops it after.


Redis (redis-server from Debian, started here on a loopback port with persistence off,
stopped after) is loaded with redis-benchmark; memdb with wrk, at the same connection
count. Compared:
  Redis GET, no pipelining       vs memdb replica GET /wordcount, 1 word
  Redis GET, pipelined (-P 32)   vs memdb replica GET /wordcount, 32 words (words/s)
  Redis HINCRBY, pipelined       vs memdb leader POST /post, 4 KiB bodies (words/s)
"""
import os, re, shutil, subprocess, sys, tempfile, time

import bench_http as h
import benchlib as b

REDIS_PORT = int(os.environ.get("REDIS_PORT", "16379"))
N = os.environ.get("REDIS_REQUESTS", "2000000")


def redis_bench(*args):
    cmd = ["redis-benchmark", "-p", str(REDIS_PORT), "-c", str(h.CONNS), "-q"] + list(args)
    runs = []
    for _ in range(h.RUNS):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        m = re.findall(r"([\d.]+) requests per second", out)
        if not m:
            sys.exit(f"no figure from {' '.join(cmd)}:\n{out}")
        runs.append(float(m[-1]))
    return sorted(runs)[len(runs) // 2]


def main():
    for tool, package in (("redis-server", None), ("redis-benchmark", "redis-server"),
                          ("wrk", None)):
        b.need(tool, package)
    tmp = tempfile.mkdtemp()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp],
        stdout=open(os.path.join(tmp, "redis.log"), "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"],
                              capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        n_get = str(int(N) // 10)
        # The key must exist for GET to do real work.
        subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "set", "key:__rand_int__", "1"],
                       capture_output=True, check=True)
        r_get = redis_bench("-n", n_get, "-r", "1", "-t", "get")
        r_get_p = redis_bench("-n", N, "-r", "1", "-P", "32", "-t", "get")
        r_hincr = redis_bench("-n", N, "-r", "10000", "-P", "32",
                              "hincrby", "counts", "w__rand_int__", "1")
    finally:
        redis.terminate()
        redis.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    env = dict(os.environ, MEMDB_RUN_DIR=h.RUN_DIR)
    shutil.rmtree(h.RUN_DIR, ignore_errors=True)
    subprocess.run([os.path.join(b.ROOT, "scripts/cluster.sh"), "start", "network"], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    try:
        b.post("http://127.0.0.1:8080/post", "text=hello+world")
        b.get("http://127.0.0.1:8081/wordcount?word=hello&min_seq=1")
        m_get = h.measure("http://127.0.0.1:8081/wordcount?word=hello")[0]
        q = "&".join(f"word={w}" for w in h.WORDS32)
        m_get32 = h.measure(f"http://127.0.0.1:8081/wordcount?{q}")[0] * 32
        rps, _, _, wpr = h.measure("http://127.0.0.1:8080/post", "post4k.lua")
        m_post = rps * wpr
    finally:
        subprocess.run([os.path.join(b.ROOT, "scripts/cluster.sh"), "stop", "network"], env=env,
                       check=True, stdout=subprocess.DEVNULL)

    print(f"{h.CONNS} connections, median of {h.RUNS}; Redis {redis_version()}")
    print("| comparison | Redis | memdb | memdb / Redis |")
    print("|---|---|---|---|")
    for name, r, m, unit in [
        ("GET, no pipelining vs replica GET 1 word", r_get, m_get, "req/s"),
        ("GET pipelined x32 vs replica GET 32 words", r_get_p, m_get32, "words/s"),
        ("HINCRBY pipelined x32 vs leader POST 4 KiB", r_hincr, m_post, "words/s"),
    ]:
        print(f"| {name} ({unit}) | {r:,.0f} | {m:,.0f} | {m / r:.2f}x |")


def redis_version():
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"v=(\S+)", out)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    main()
