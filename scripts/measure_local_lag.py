#!/usr/bin/env python3
"""How far behind local replicas fall, as their leader reports it (`/health`
`local_replicas`): what --local-lag-floor must cover.

    scripts/measure_local_lag.py [--words 10000000] [--replicas 2]

A release leader ingests that many distinct words with two local replicas mapping its
files all along (so they load every delta and each new base of a compaction); the
script samples the leader's /health every 50 ms and reports, per replica: the longest
load it reported, the largest lag in ms and in seqs it was seen at, and then the time a
replica started afresh takes to map the 10M-word base (its first load), and one that
validates the base whole (no `snapshot.checked`: the slowest load). Temp dirs and
free ports; everything it starts is stopped.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import benchlib as b

ROOT = b.ROOT
BODY_WORDS = 20_000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--words", type=int, default=10_000_000)
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "memdb"], cwd=ROOT,
                   check=True)
    binary = os.path.join(ROOT, "target", "release", "memdb")
    tmp = tempfile.mkdtemp(prefix="memdb-local-lag-")
    nodes = []
    try:
        data = os.path.join(tmp, "data")
        leader = b.Node(["leader", "--data-dir", data], binary=binary,
                        log=os.path.join(tmp, "leader.log"))
        nodes.append(leader)
        b.post(leader.url + "/post", "text=first",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
        locals_ = [b.Node(["local-replica", "--data-dir", data], binary=binary,
                          log=os.path.join(tmp, f"local{i}.log")) for i in range(args.replicas)]
        nodes += locals_
        worst = {}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                try:
                    h = b.get(leader.url + "/health", timeout=5)
                except Exception:
                    continue
                for r in h.get("local_replicas", []):
                    w = worst.setdefault(r.get("url"), {"lag_ms": 0, "lag": 0, "load_ms": 0.0,
                                                       "problem": None})
                    w["lag_ms"] = max(w["lag_ms"], r.get("lag_ms") or 0)
                    w["lag"] = max(w["lag"], r.get("lag") or 0)
                    w["load_ms"] = max(w["load_ms"], r.get("last_load_ms") or 0.0)
                    w["problem"] = w["problem"] or r.get("problem")
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        t = time.monotonic()
        for start in range(0, args.words, BODY_WORDS):
            text = " ".join(f"w{i}" for i in range(start, min(start + BODY_WORDS, args.words)))
            b.post(leader.url + "/post", "text=" + text,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        seq = b.get(leader.url + "/health")["seq"]
        leader.wait(lambda c, h: all((r.get("seq") or 0) >= seq
                                     for r in h.get("local_replicas", [])),
                    "the local replicas to map everything")
        took = time.monotonic() - t
        stop.set()
        watcher.join()
        print(f"{args.words} words ingested and mapped in {took:.1f} s")
        for url, w in sorted(worst.items()):
            print(f"  {url}: longest load {w['load_ms']:.1f} ms, largest lag {w['lag_ms']} ms "
                  f"/ {w['lag']} seqs, problem: {w['problem']}")
        # A replica started afresh: its first load maps the whole base.
        fresh = b.Node(["local-replica", "--data-dir", data], binary=binary,
                       log=os.path.join(tmp, "fresh.log"))
        nodes.append(fresh)
        h = leader.wait(lambda c, h: any(r.get("url") == fresh.url and r.get("seq") == seq
                                         for r in h.get("local_replicas", [])),
                        "the fresh replica to map the base")
        r = next(r for r in h["local_replicas"] if r.get("url") == fresh.url)
        print(f"  a fresh replica's first load (the {args.words}-word base): "
              f"{r['last_load_ms']:.1f} ms")
        # The same base without the leader's record of what it checked: the replica
        # validates it whole (rkyv's structural check), the slowest load there is.
        copy = os.path.join(tmp, "copy")
        os.mkdir(copy, 0o700)
        for name in os.listdir(data):
            if name.endswith(".memdb") or name == "history.json":
                shutil.copy(os.path.join(data, name), copy)
        t = time.monotonic()
        unchecked = b.Node(["local-replica", "--data-dir", copy], binary=binary,
                           log=os.path.join(tmp, "unchecked.log"), wait=False)
        nodes.append(unchecked)
        unchecked.wait(lambda c, h: c == 200 and h.get("seq") == seq,
                       "the replica to validate and map the copy")
        print(f"  a first load that validates the base whole (no snapshot.checked): "
              f"{(time.monotonic() - t) * 1e3:.0f} ms from start to ready")
    finally:
        b.stop_all(nodes)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
