#!/usr/bin/env python3
"""Two builds side by side over HTTP: a leader with one network replica per build,
loaded in turn with wrk (10-word POSTs to the leader, 1-word GETs to the replica),
alternating the builds each round; medians of the rounds. For a change that must not
cost throughput (a refactor, a new layer), compare the build before it with the one
after.

    scripts/bench_ab.py OLD_BIN NEW_BIN [--rounds 3] [--duration 5s]

Needs wrk. Uses ports 18600-18601 on 127.0.0.1 and temp dirs; stops what it starts.
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait(url):
    for _ in range(400):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never became healthy")


def wrk(url, duration, script=None):
    cmd = ["wrk", "-t1", "-c32", f"-d{duration}", "--latency"]
    if script:
        cmd += ["-s", os.path.join(ROOT, "scripts/wrk", script)]
    text = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in text:
        raise SystemExit(f"{url}: error responses\n{text}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))


def round_for(binary, duration):
    with tempfile.TemporaryDirectory() as d:
        leader = subprocess.Popen([binary, "leader", "--port", "18600", "--data-dir", d + "/l"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replica = subprocess.Popen([binary, "replica", "--port", "18601", "--leader",
                                    "http://127.0.0.1:18600", "--heartbeat", "100ms"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait("http://127.0.0.1:18600/health")
            wait("http://127.0.0.1:18601/health")
            post = wrk("http://127.0.0.1:18600/post", duration, "post.lua")
            get = wrk("http://127.0.0.1:18601/wordcount?word=hello", duration)
            return post, get
        finally:
            for p in (replica, leader):
                p.terminate()
                p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    a = ap.parse_args()
    res = {a.old: [], a.new: []}
    for _ in range(a.rounds):
        for b in (a.old, a.new):
            res[b].append(round_for(b, a.duration))
    print("| build | POST /post, 10 words (req/s) | GET /wordcount on a replica (req/s) |")
    print("|---|---|---|")
    med = {}
    for b, rows in res.items():
        med[b] = (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
        print(f"| {b} | {med[b][0]:,.0f} | {med[b][1]:,.0f} |")
    print(f"| new / old | {med[a.new][0] / med[a.old][0]:.2f}× | {med[a.new][1] / med[a.old][1]:.2f}× |")


if __name__ == "__main__":
    main()
