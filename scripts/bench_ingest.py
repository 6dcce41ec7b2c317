#!/usr/bin/env python3
"""`memdb ingest` of one large file against the leader's own ingest rate for 4 KiB
bodies (wrk), side by side on fresh leaders, alternating; words per second, medians.

    scripts/bench_ingest.py [--mb 200] [--rounds 2] [--concurrency 4] [--chunk-size 256KiB]

Uses target/release/memdb (or MEMDB_BIN), port 18950, temp dirs; needs wrk.
"""
import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MEMDB_BIN", os.path.join(ROOT, "target/release/memdb"))
URL = "http://127.0.0.1:18950"


def leader(d):
    p = subprocess.Popen([BIN, "leader", "--port", "18950", "--data-dir", d],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            urllib.request.urlopen(URL + "/health", timeout=1)
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit("leader did not start")


def stop(p):
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=120)


def wrk_words_per_s(duration):
    r = subprocess.run(["wrk", "-t1", "-c32", f"-d{duration}", "-s",
                        os.path.join(ROOT, "scripts/wrk/post4k.lua"), URL + "/post"],
                       capture_output=True, text=True, check=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", r.stdout).group(1))
    words = int(re.search(r"words_per_request=(\d+)", r.stderr + r.stdout).group(1))
    return rps * words


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", default="4")
    ap.add_argument("--chunk-size", default="256KiB")
    ap.add_argument("--duration", default="10s")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.txt")
        rnd = random.Random(1)
        # The vocabulary of scripts/wrk/post4k.lua, so that both count the same words.
        base = ["hello", "world", "distributed", "systems", "are", "awesome", "go", "rust",
                "memory", "mapped", "replica", "leader", "count", "words", "fast", "exact"]
        vocab = [f"{w}{i}" for w in base for i in range(97)]
        with open(path, "w") as f:
            written = 0
            while written < a.mb << 20:
                line = " ".join(rnd.choices(vocab, k=200)) + "\n"
                f.write(line)
                written += len(line.encode())
        ing, srv = [], []
        for r in range(a.rounds):
            d = tempfile.mkdtemp(dir=tmp)
            p = leader(d)
            try:
                out = subprocess.run([BIN, "ingest", path, "--leader", URL, "--json",
                                      "--concurrency", a.concurrency, "--chunk-size", a.chunk_size],
                                     capture_output=True, text=True, check=True).stdout
                ing.append(json.loads(out)["words_per_second"])
            finally:
                stop(p)
            d = tempfile.mkdtemp(dir=tmp)
            p = leader(d)
            try:
                srv.append(wrk_words_per_s(a.duration))
            finally:
                stop(p)
            print(f"round {r + 1}: memdb ingest {ing[-1]:,.0f} words/s, "
                  f"wrk 4 KiB POSTs {srv[-1]:,.0f} words/s", flush=True)
        mi, ms = statistics.median(ing), statistics.median(srv)
        print(f"{a.mb} MB file: memdb ingest {mi:,.0f} words/s; the leader's 4 KiB POSTs "
              f"(wrk -c32) {ms:,.0f} words/s; ingest / wrk = {mi / ms:.2f}")


if __name__ == "__main__":
    main()
