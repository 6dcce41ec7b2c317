#!/usr/bin/env python3
"""`memdb ingest` of one large file against the leader's own ingest rate for 4 KiB
bodies (wrk), side by side on fresh leaders, alternating; words per second, medians.

    scripts/bench_ingest.py [--mb 200] [--rounds 2] [--concurrency 4] [--chunk-size 256KiB]

Uses target/release/memdb (or MEMDB_BIN), free ports, temp dirs; needs wrk.
"""
import argparse
import json
import os
import random
import subprocess
import tempfile

import benchlib as b


def ingest_words_per_s(d, path, a):
    with b.Node(["leader", "--data-dir", d]) as leader:
        out = subprocess.run([b.default_bin(), "ingest", path, "--leader", leader.url,
                              "--json", "--concurrency", a.concurrency,
                              "--chunk-size", a.chunk_size],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["words_per_second"]


def wrk_words_per_s(d, duration):
    with b.Node(["leader", "--data-dir", d]) as leader:
        r = b.wrk(leader.url + "/post", duration, "post4k.lua")
        return r.rps * r.words_per_request


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
            # Alternating which goes first: drift on a shared machine falls on both.
            runs = [(ing, lambda: ingest_words_per_s(tempfile.mkdtemp(dir=tmp), path, a)),
                    (srv, lambda: wrk_words_per_s(tempfile.mkdtemp(dir=tmp), a.duration))]
            for into, run in (runs if r % 2 == 0 else runs[::-1]):
                into.append(run())
            print(f"round {r + 1}: memdb ingest {ing[-1]:,.0f} words/s, "
                  f"wrk 4 KiB POSTs {srv[-1]:,.0f} words/s", flush=True)
        mi, ms = b.median(ing), b.median(srv)
        print(f"{a.mb} MB file: memdb ingest {mi:,.0f} words/s; the leader's 4 KiB POSTs "
              f"(wrk -c32) {ms:,.0f} words/s; ingest / wrk = {mi / ms:.2f}")


if __name__ == "__main__":
    main()
