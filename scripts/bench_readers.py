#!/usr/bin/env python3
"""Embedded readers side by side, in one run: a lookup in-process (Rust, C, Python)
against an HTTP GET on a local replica (from Rust and Python) and Redis HGET from
redis-py, at each table size.

    scripts/bench_readers.py --words 1000000 10000000 [--lookups 200000]

For each size: a release leader ingests that many distinct words, a local replica maps
them, and Redis (redis-server on a free port, no persistence) holds the same words in
one hash. Every client looks up the same random sample of words that exist, one at a
time on one thread; it reports the median of single lookups timed one by one and the
lookups per second of a tight loop (one core). Needs: a release build with the
examples and the C library (the script builds them), redis-server, and the Python
venv of scripts/test_python.sh (redis-py is installed into it).
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib as b

ROOT = b.ROOT
VENV_PY = os.path.join(ROOT, "target", "python-venv", "bin", "python")
BODY_WORDS = 20_000

PY_BENCH = r"""
import http.client, json, sys, time, urllib.parse
import memdb, redis
data_dir, words_file, n, replica, redis_port = sys.argv[1:6]
n = int(n)
words = open(words_file).read().split()
def report(how, each, per_sec):
    each.sort()
    print(json.dumps({"lang": "python", "how": how, "p50_ns": each[len(each) // 2],
                      "p99_ns": each[len(each) * 99 // 100], "per_sec": round(per_sec)}))
def run(how, look, m):
    for w in words[:1000]:
        look(w)
    ns = time.perf_counter_ns
    each = []
    for i in range(m):
        w = words[i % len(words)]
        t = ns(); look(w); each.append(ns() - t)
    t = time.perf_counter()
    for i in range(m):
        look(words[i % len(words)])
    report(how, each, m / (time.perf_counter() - t))
r = memdb.Reader(data_dir)
for w in words:
    r.count(w)
run("in-process", r.count, n)
host, port = replica.split("//")[1].split(":")
conn = http.client.HTTPConnection(host, int(port))
def get(w):
    conn.request("GET", "/wordcount?word=" + w)
    resp = conn.getresponse(); resp.read()
    assert resp.status == 200
run("http-get", get, max(n // 20, 1000))
red = redis.Redis(host="127.0.0.1", port=int(redis_port))
run("redis-hget", lambda w: red.hget("words", w), max(n // 20, 1000))
"""


def build():
    for what in (["-p", "memdb", "-p", "memdb-c"], ["-p", "memdb", "--example", "reader_bench"]):
        subprocess.run(["cargo", "build", "--release", "--locked", *what], cwd=ROOT, check=True)
    exe = os.path.join(ROOT, "target", "release", "c_reader_bench")
    lib = os.path.join(ROOT, "target", "release")
    subprocess.run(["cc", "-O2", "-std=c11", "-Wall", "-Werror", "-o", exe,
                    os.path.join(ROOT, "bindings/c/bench/reader_bench.c"),
                    "-I", os.path.join(ROOT, "bindings/c/include"), "-L", lib,
                    f"-Wl,-rpath,{lib}", "-lmemdb_c"], check=True)
    if not os.path.exists(VENV_PY):
        subprocess.run([os.path.join(ROOT, "scripts", "test_python.sh"), "--co", "-q"],
                       cwd=ROOT, check=True)
    # The binding in release (pip builds it so) and redis-py.
    subprocess.run([VENV_PY, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "redis>=5", os.path.join(ROOT, "bindings", "python")], check=True)
    return exe


def ingest(leader, words):
    for start in range(0, words, BODY_WORDS):
        text = " ".join(f"w{i}" for i in range(start, min(start + BODY_WORDS, words)))
        b.post(leader.url + "/post", "text=" + text,
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    seq = b.get(leader.url + "/health")["seq"]
    leader.wait(lambda c, h: (h.get("snapshot") or {}).get("seq", 0) >= seq,
                "the leader to publish everything")
    return seq


def redis_load(port, words):
    import_py = ("import redis,sys\nr=redis.Redis(port=int(sys.argv[1]))\nn=int(sys.argv[2])\n"
                 "for s in range(0,n,50000):\n"
                 "    r.hset('words', mapping={f'w{i}': 1 for i in range(s, min(s+50000,n))})\n"
                 "assert r.hlen('words')==n\n")
    subprocess.run([VENV_PY, "-c", import_py, str(port), str(words)], check=True)


def one_size(words, lookups, c_exe, out):
    tmp = tempfile.mkdtemp(prefix="memdb-readers-")
    nodes, red = [], None
    try:
        data = os.path.join(tmp, "data")
        leader = b.Node(["leader", "--data-dir", data], log=os.path.join(tmp, "leader.log"))
        nodes.append(leader)
        t = time.monotonic()
        ingest(leader, words)
        print(f"{words} words ingested in {time.monotonic() - t:.1f} s", file=sys.stderr)
        local = b.Node(["local-replica", "--data-dir", data], log=os.path.join(tmp, "local.log"))
        nodes.append(local)
        rng = random.Random(7)
        sample = os.path.join(tmp, "sample")
        with open(sample, "w") as f:
            f.write("\n".join(f"w{rng.randrange(words)}" for _ in range(100_000)) + "\n")
        redis_port = b.free_port()
        red = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no", "--dir", tmp],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        b.wait_until("redis", lambda: subprocess.run(
            ["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).returncode == 0)
        redis_load(redis_port, words)
        runs = [
            [os.path.join(ROOT, "target/release/examples/reader_bench"), data, sample,
             str(lookups), local.url],
            [c_exe, data, sample, str(lookups)],
            [VENV_PY, "-c", PY_BENCH, data, sample, str(lookups), local.url, str(redis_port)],
        ]
        for cmd in runs:
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for line in res.stdout.splitlines():
                row = json.loads(line)
                row["words"] = words
                out.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        if red is not None:
            red.terminate()
            red.wait()
        b.stop_all(nodes)
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows):
    lines = ["| words | language | lookup | p50 | p99 | lookups/s (one core) | against in-process |",
             "|---|---|---|---|---|---|---|"]
    base = {(r["words"], r["lang"]): r for r in rows if r["how"] == "in-process"}
    py_base = {r["words"]: r for r in rows if r["how"] == "in-process" and r["lang"] == "python"}
    for r in rows:
        ref = base.get((r["words"], r["lang"])) or py_base.get(r["words"])
        ratio = r["p50_ns"] / ref["p50_ns"] if ref else 0
        lines.append(f"| {r['words']:,} | {r['lang']} | {r['how']} | {r['p50_ns'] / 1000:.2f} µs"
                     f" | {r['p99_ns'] / 1000:.2f} µs | {r['per_sec']:,} | "
                     f"{'—' if r['how'] == 'in-process' else f'{ratio:.0f}× slower'} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--lookups", type=int, default=200_000)
    args = ap.parse_args()
    for tool in ["cc", "redis-server", "redis-cli"]:
        b.need(tool)
    c_exe = build()
    rows = []
    for words in args.words:
        one_size(words, args.lookups, c_exe, rows)
    print(table(rows))


if __name__ == "__main__":
    main()
