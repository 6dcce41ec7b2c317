#!/usr/bin/env python3
"""A rolling upgrade of a raft group under writes: nothing lost, nothing doubled.

Three voters of the OLD binary formed with --peers take --words distinct words in keyed
posts of 20,000, then --writers threads post keyed 10-word writes (each retried through
any voter until acknowledged) for the whole trial. Voter by voter, followers first and
the leader last, each is stopped (SIGTERM) and started again on its data directory with
the NEW binary; the next waits until it holds the group's seq and digest. Then the
writers stop and every voter must hold exactly the words acknowledged, each counted
once. Reports the time each voter took to rejoin, the writes acknowledged, whether the
new leader batches writes once every voter runs the new binary, and any difference.

    scripts/trial_rolling_upgrade.py OLD_BIN NEW_BIN [--words 1000000] [--writers 8]

Build OLD_BIN from an earlier commit, e.g.:
    git worktree add /tmp/old <rev> && (cd /tmp/old && cargo build --release)

Uses ports 18740-18742 on 127.0.0.1 and temp dirs; stops what it starts.
"""
import argparse
import json
import tempfile
import threading
import time
import urllib.request

import benchlib as b
from benchlib import wait_until

PORTS = [18740, 18741, 18742]
URLS = [f"http://127.0.0.1:{p}" for p in PORTS]
PEERS = ",".join(f"{i + 1}={u}" for i, u in enumerate(URLS))


def health(url):
    code, body = b.health(url, timeout=1)
    return body if code == 200 else None


def post(url, text, key, timeout=5):
    """POST once, following one 307; True if acknowledged."""
    return b.post_following(url, text.encode(), {"Idempotency-Key": key,
                                                 "Content-Type": "text/plain"}, timeout)


def until_acked(text, key, start):
    i = start
    give_up = time.monotonic() + 120
    while not post(URLS[i % 3], text, key):
        if time.monotonic() > give_up:
            raise SystemExit(f"write {key} not acknowledged in 120 s")
        i += 1
        time.sleep(0.02)


def leader():
    def agreed():
        ids = {h["raft"]["leader_id"] for h in map(health, URLS) if h}
        return ids.pop() - 1 if len(ids) == 1 and None not in ids else None
    return wait_until("an agreed leader", agreed)


def same_state():
    hs = [health(u) for u in URLS]
    return all(hs) and len({(h["seq"], h["digest"]) for h in hs}) == 1 or None


def table(url):
    with urllib.request.urlopen(url + "/sync", timeout=60) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--words", type=int, default=1_000_000)
    ap.add_argument("--writers", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        dirs = [f"{d}/v{i}" for i in range(3)]
        procs = [None] * 3

        def start(i, binary):
            procs[i] = b.Node(["leader", "--port", str(PORTS[i]), "--data-dir", dirs[i],
                               "--node-id", str(i + 1), "--peers", PEERS,
                               "--max-body", "8MiB"], binary=binary,
                              log=f"{d}/v{i}.log")
        try:
            for i in range(3):
                start(i, a.old)
            leader()
            want = {}
            for at in range(0, a.words, 20_000):
                words = [f"u{j}" for j in range(at, min(a.words, at + 20_000))]
                until_acked(" ".join(words), f"bulk{at}", at)
                for w in words:
                    want[w] = 1
            acked = [0]
            lock = threading.Lock()
            stop = threading.Event()

            def writer(w):
                i = 0
                while not stop.is_set():
                    until_acked(f"w{w} n{i} shared", f"{w}-{i}", w + i)
                    with lock:
                        for word in (f"w{w}", f"n{i}", "shared"):
                            want[word] = want.get(word, 0) + 1
                        acked[0] += 1
                    i += 1
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(a.writers)]
            for t in threads:
                t.start()
            time.sleep(2)
            lead = leader()
            order = [i for i in range(3) if i != lead] + [lead]
            rejoin = []
            for i in order:
                procs[i].stop()
                started = time.monotonic()
                start(i, a.new)
                wait_until(f"voter {i + 1} at the group's seq and digest", same_state,
                           timeout=300, every=0.1)
                rejoin.append(time.monotonic() - started)
                print(f"voter {i + 1} upgraded: exact {rejoin[-1]:.2f} s after its start; "
                      f"{acked[0]} writes acknowledged so far")
                time.sleep(2)
            time.sleep(3)
            stop.set()
            for t in threads:
                t.join()
            wait_until("every voter at one seq and digest", same_state, timeout=300)
            lead = leader()
            r = health(URLS[lead])["raft"]
            diffs = {}
            for i in range(3):
                got = table(URLS[i])
                keys = set(got) | set(want)
                bad = {k: (got.get(k, 0), want.get(k, 0)) for k in keys
                       if got.get(k, 0) != want.get(k, 0)}
                diffs[i + 1] = len(bad)
                if bad:
                    print(f"voter {i + 1}: {len(bad)} words differ, e.g. "
                          f"{list(bad.items())[:5]} (got, acknowledged)")
            print(json.dumps({"words": a.words, "small_writes_acked": acked[0],
                              "rejoin_s": [round(s, 2) for s in rejoin],
                              "differing_words": diffs,
                              "new_leader_proposed_writes": r["proposed_writes"],
                              "new_leader_proposed_entries": r["proposed_entries"]}))
            if any(diffs.values()):
                raise SystemExit("the upgrade lost or doubled writes")
            print("every voter holds exactly the acknowledged writes, each counted once")
        finally:
            b.stop_all(procs)


if __name__ == "__main__":
    main()
