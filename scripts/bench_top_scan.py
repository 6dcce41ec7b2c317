#!/usr/bin/env python3
"""Do passes over the table stall writers? A leader holding --words distinct words takes
10-word POSTs from wrk (-c4) alone, then the same while --scanners clients hammer
`/top?prefix=zzzz` (a prefix no kept word has: each answer is a pass over the whole
table); medians of the rounds and the ratio with/alone (the target is at least 0.5).

    scripts/bench_top_scan.py [--bin target/release/memdb] [--words 1500000]
                              [--rounds 3] [--duration 5s] [--scanners 8]

Needs wrk. Uses a free port on 127.0.0.1 and a temp dir; stops what it starts.
"""
import argparse
import tempfile
import threading
import time
import urllib.error
import urllib.request

import benchlib as b


def fill(base, words):
    """Posts `words` distinct words in posts of 50,000."""
    step = 50_000
    for start in range(0, words, step):
        text = " ".join(f"w{i:08d}" for i in range(start, min(words, start + step)))
        b.post(base + "/post", text, {"Content-Type": "text/plain"})


def posts_per_second(base, duration):
    return b.wrk(base + "/post", duration, "post.lua", connections=4).rps


def scanner(base, stop, counts):
    while not stop.is_set():
        try:
            urllib.request.urlopen(base + "/top?n=5&prefix=zzzz", timeout=30).read()
            counts["ok"] += 1
        except urllib.error.HTTPError as e:
            counts[str(e.code)] = counts.get(str(e.code), 0) + 1
            time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=b.default_bin())
    ap.add_argument("--words", type=int, default=1_500_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    ap.add_argument("--scanners", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, b.Node(["leader", "--data-dir", d],
                                                    binary=a.bin) as leader:
        base = leader.url
        fill(base, a.words)
        alone, scanned = [], []
        for r in range(a.rounds):
            alone.append(posts_per_second(base, a.duration))
            stop, counts = threading.Event(), {"ok": 0}
            threads = [threading.Thread(target=scanner, args=(base, stop, counts))
                       for _ in range(a.scanners)]
            for t in threads:
                t.start()
            try:
                scanned.append(posts_per_second(base, a.duration))
            finally:
                stop.set()
                for t in threads:
                    t.join()
            print(f"round {r + 1}: POSTs alone {alone[-1]:.0f}/s, with {a.scanners} "
                  f"scanners {scanned[-1]:.0f}/s (scans {counts})", flush=True)
    m_alone, m_scanned = b.median(alone), b.median(scanned)
    print(f"\nmedians of {a.rounds} rounds ({a.duration} each), {a.words} words:")
    print(f"POSTs alone {m_alone:.0f}/s, with scans {m_scanned:.0f}/s, "
          f"ratio {m_scanned / m_alone:.2f}")


if __name__ == "__main__":
    main()
