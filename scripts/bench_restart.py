#!/usr/bin/env python3
"""How long network replicas take to follow a restarted leader, side by side:

- continue: the leader's history.json is kept, so replicas adopt the new incarnation
  and carry on from their seq;
- full sync: history.json is removed before the restart (what every restart did before
  it existed), so every replica downloads and rebuilds the whole table.

For each mode and run: a leader and REPLICAS network replicas, WORDS distinct words
loaded, a clean SIGTERM of the leader (the replicas keep running), and a restart.
Measured from the restarted leader's first healthy answer to the moment every replica
serves a write made after the restart (a `min_seq` read), with the full syncs the
replicas did.

    scripts/bench_restart.py          # WORDS=1000000 REPLICAS=2 RUNS=3

Needs a release build (or MEMDB_BIN). Uses free ports and temp dirs under ./run.
"""

import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse

import benchlib as b

WORDS = int(os.environ.get("WORDS", "1000000"))
REPLICAS = int(os.environ.get("REPLICAS", "2"))
RUNS = int(os.environ.get("RUNS", "3"))
PLAIN = {"content-type": "text/plain"}


def one_run(mode, tmp):
    data = os.path.join(tmp, "leader")
    lport = b.free_port()
    leader_url = f"http://127.0.0.1:{lport}"
    log = open(os.path.join(tmp, f"{mode}.log"), "ab")
    procs = []
    leader = None
    try:
        # Replicas named with --replica: the restarted leader contacts them at once
        # (rather than when their retry backoff next reaches it).
        replicas = [f"http://127.0.0.1:{b.free_port()}" for _ in range(REPLICAS)]
        lead_args = ["leader", "--port", str(lport), "--data-dir", data]
        for r in replicas:
            lead_args += ["--replica", r]
        leader = b.Node(lead_args, log)
        for r in replicas:
            port = r.rsplit(":", 1)[1]
            procs.append(b.Node(["replica", "--port", port, "--leader", leader_url], log))
        chunk = 80_000
        for s in range(0, WORDS, chunk):
            words = " ".join("w%07d" % i for i in range(s, min(WORDS, s + chunk)))
            b.post(leader_url + "/post", words, PLAIN)
        seq = b.get(leader_url + "/health")["seq"]
        for r in replicas:
            b.get(f"{r}/wordcount?word=w0000001&min_seq={seq}")
        leader.stop()
        if mode == "full sync":
            os.remove(os.path.join(data, "history.json"))
        leader = b.Node(lead_args, log)
        t0 = time.monotonic()
        after = b.post(leader_url + "/post", "after restart", PLAIN)["seq"]
        for r in replicas:
            while True:
                try:
                    q = urllib.parse.urlencode({"word": "after", "min_seq": after})
                    if b.get(f"{r}/wordcount?{q}", timeout=10).get("after") == 1:
                        break
                except urllib.error.HTTPError:
                    pass
        elapsed = time.monotonic() - t0
        syncs = sum(b.get(r + "/health")["syncs"] - 1 for r in replicas)
        return elapsed, syncs
    finally:
        b.stop_all([leader, *procs])
        log.close()


def main():
    print(f"{WORDS} distinct words, {REPLICAS} network replicas, median of {RUNS} runs")
    print(f"{'after restart':<14} {'replicas current after':>24} {'full syncs':>11}")
    results = {}
    for mode in ["continue", "full sync"]:
        times, syncs = [], []
        for _ in range(RUNS):
            run = os.path.join(b.ROOT, "run")
            os.makedirs(run, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=run) as tmp:
                t, s = one_run(mode, tmp)
            times.append(t)
            syncs.append(s)
        results[mode] = b.median(times)
        print(f"{mode:<14} {results[mode] * 1e3:>21.1f} ms {b.median(syncs):>11.0f}")
    print(f"ratio full sync / continue: {results['full sync'] / results['continue']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
