#!/usr/bin/env python3
"""Side-by-side HTTP benchmark of memdb, in one run.

    scripts/bench_http.py        # RUNS=3 DURATION=5s CONNECTIONS=32

Needs wrk (Debian package `wrk`) and a release build (`make build`). Uses ports
8080-8083 (the clusters of scripts/cluster.sh) and a free one for the baseline, and
./run/bench (wiped first).


Cases, each measured RUNS times with wrk (median reported):
  baseline  a bare axum server (`memdb baseline`) with no work behind its routes
  alone     a leader with no replicas
  network   a leader + 3 network replicas   (scripts/cluster.sh start network)
  local     a leader + 3 local replicas     (scripts/cluster.sh start local)
Workloads: replica GET /wordcount with 1 and 32 words; leader POST /post with a 10-word
form body and a 4 KiB text/plain body. After each cluster, every replica must hold
exactly the leader's counts.
"""
import os, shutil, subprocess, sys, urllib.request

import benchlib as b

ROOT = b.ROOT
BIN = b.default_bin()
RUNS = int(os.environ.get("RUNS", "3"))
DUR = os.environ.get("DURATION", "5s")
CONNS = int(os.environ.get("CONNECTIONS", "32"))
RUN_DIR = os.path.join(ROOT, "run", "bench")
WORDS32 = ["hello", "world", "go", "is", "great", "distributed", "systems", "in", "high",
           "performance", "the", "concurrency", "model", "of", "parallel", "requests",
           "load", "test", "are", "a", "quick", "brown", "fox", "jumps", "over", "lazy",
           "dog", "again", "memory", "mapped", "replica", "leader"]


def measure(url, script=None):
    runs = [b.wrk(url, DUR, script, connections=CONNS) for _ in range(RUNS)]
    return (b.median(r.rps for r in runs), b.median(r.p50_ms for r in runs),
            b.median(r.p99_ms for r in runs), runs[0].words_per_request)


get = b.get


def check_converged(replica_ports):
    seq = get("http://127.0.0.1:8080/health")["seq"]
    q = "&".join(f"word={w}" for w in WORDS32)
    want = get(f"http://127.0.0.1:8080/wordcount?{q}")
    for p in replica_ports:
        got = get(f"http://127.0.0.1:{p}/wordcount?{q}&min_seq={seq}")
        if got != want:
            sys.exit(f"replica :{p} differs from the leader at seq {seq}: {got} vs {want}")
    return seq


rows = []


def row(case, workload, rps, p50, p99, words_per_req):
    rows.append((case, workload, rps, rps * words_per_req, p50, p99))
    print(f"{case:<9} {workload:<30} {rps:>10.0f} req/s {rps * words_per_req:>12.0f} words/s"
          f"   p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True)


def reads(case, port):
    url = f"http://127.0.0.1:{port}/wordcount"
    rps, p50, p99, _ = measure(url + "?word=hello")
    row(case, "GET /wordcount (1 word)", rps, p50, p99, 1)
    if case != "baseline":
        q = "&".join(f"word={w}" for w in WORDS32)
        rps, p50, p99, _ = measure(f"{url}?{q}")
        row(case, "GET /wordcount (32 words)", rps, p50, p99, 32)


def writes(case):
    url = "http://127.0.0.1:8080/post"
    rps, p50, p99, _ = measure(url, "post.lua")
    row(case, "POST /post (10 words)", rps, p50, p99, 10)
    rps, p50, p99, wpr = measure(url, "post4k.lua")
    row(case, "POST /post (4 KiB body)", rps, p50, p99, wpr)


def main():
    b.need("wrk")
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    os.makedirs(RUN_DIR)
    print(f"wrk -t1 -c{CONNS} -d{DUR}, median of {RUNS}; 2 cores shared by client and servers")

    with b.Node(["baseline"], os.path.join(RUN_DIR, "baseline.log")) as base:
        rps, p50, p99, _ = measure(base.url + "/wordcount?word=hello")
        row("baseline", "GET /wordcount (1 word)", rps, p50, p99, 1)
        rps, p50, p99, _ = measure(base.url + "/post", "post.lua")
        row("baseline", "POST /post (10 words)", rps, p50, p99, 10)

    with b.Node(["leader", "--port", "8080", "--data-dir", os.path.join(RUN_DIR, "alone")],
                os.path.join(RUN_DIR, "alone.log")):
        writes("alone")

    env = dict(os.environ, MEMDB_RUN_DIR=RUN_DIR)
    for mode in ["network", "local"]:
        subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "start", mode], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        try:
            urllib.request.urlopen(urllib.request.Request(
                "http://127.0.0.1:8080/post", data=b"text=hello+world")).read()
            # min_seq makes every replica hold the first write before it is measured
            for port in (8081, 8082, 8083):
                get(f"http://127.0.0.1:{port}/wordcount?word=hello&min_seq=1")
            reads(mode, 8081)
            writes(mode)
            seq = check_converged((8081, 8082, 8083))
            print(f"{mode}: all 3 replicas equal the leader at seq {seq}", flush=True)
        finally:
            subprocess.run([os.path.join(ROOT, "scripts/cluster.sh"), "stop", mode], env=env,
                           check=True, stdout=subprocess.DEVNULL)

    print("\n| case | workload | req/s | words/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for case, workload, rps, wps, p50, p99 in rows:
        print(f"| {case} | {workload} | {rps:,.0f} | {wps:,.0f} | {p50:.2f} | {p99:.2f} |")


if __name__ == "__main__":
    main()
