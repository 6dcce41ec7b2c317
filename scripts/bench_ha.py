#!/usr/bin/env python3
"""A raft group against a single leader, measured on this machine.

    scripts/bench_ha.py failover [--runs 10] [--election-timeout 500ms]
    scripts/bench_ha.py ingest   [--rounds 3] [--duration 5s]

failover: one group of three voters; ten times over, SIGKILL the leader while four
  writers post keyed writes through every voter, and time the kill to the first write
  acknowledged after it (a request sent after the kill); the killed voter is started
  again before the next run. Prints the median and the max.

ingest: wrk POSTs (10 words, 4 KiB) to a single leader and to a three-voter group's
  leader, each with --fsync everysec and always, alternating configurations each round;
  medians of the rounds, in one table.

Uses target/release/memdb (or MEMDB_BIN), ports 18700-18702 on 127.0.0.1 for the group
(its members name each other up front), free ones otherwise, temp dirs;
needs wrk for ingest. Stops what it starts.
"""
import argparse
import tempfile
import threading
import time
import urllib.error
import urllib.request

import benchlib as b
from benchlib import wait_until

PORTS = [18700, 18701, 18702]
URLS = [f"http://127.0.0.1:{p}" for p in PORTS]
PEERS = ",".join(f"{i + 1}={u}" for i, u in enumerate(URLS))


def health(url):
    """A voter's /health while it answers 200, else None."""
    code, body = b.health(url, timeout=0.5)
    return body if code == 200 else None


class Group:
    def __init__(self, dirs, extra):
        self.dirs, self.extra = dirs, extra
        self.procs = [None] * len(PORTS)
        for i in range(len(PORTS)):
            self.start(i)

    def start(self, i):
        self.procs[i] = b.Node(
            ["leader", "--port", str(PORTS[i]), "--data-dir", self.dirs[i],
             "--node-id", str(i + 1), "--peers", PEERS] + self.extra)

    def leader(self, alive):
        """The index every voter in `alive` names as leader, once they agree."""
        def agreed():
            ids = set()
            for i in alive:
                h = health(URLS[i])
                if not h or h["raft"]["leader_id"] is None:
                    return None
                ids.add(h["raft"]["leader_id"])
            if len(ids) != 1:
                return None
            l = ids.pop() - 1
            return l if l in alive else None
        return wait_until("an agreed leader", agreed)

    def stop(self):
        b.stop_all(self.procs)


def post(url, text, key):
    """POST once, following one 307; True if acknowledged."""
    data = f"text={text}".encode()
    for _ in range(2):
        req = urllib.request.Request(url + "/post", data=data, method="POST",
                                     headers={"Idempotency-Key": key})
        try:
            with urllib.request.urlopen(req, timeout=1) as r:
                return r.status == 202
        except urllib.error.HTTPError as e:
            if e.code == 307 and e.headers.get("Location"):
                url = e.headers["Location"].removesuffix("/post")
                continue
            return False
        except OSError:
            return False
    return False


def failover(a):
    times = []
    with tempfile.TemporaryDirectory() as d:
        g = Group([f"{d}/v{i}" for i in range(3)], ["--election-timeout", a.election_timeout])
        try:
            for run in range(a.runs):
                alive = [0, 1, 2]
                leader = g.leader(alive)
                stop = threading.Event()
                acks = []  # (sent, acknowledged)
                lock = threading.Lock()

                def writer(w):
                    n = 0
                    while not stop.is_set():
                        sent = time.monotonic()
                        if post(URLS[(w + n) % 3], f"run{run}+w{w}", f"{run}-{w}-{n}"):
                            with lock:
                                acks.append((sent, time.monotonic()))
                            n += 1
                        else:
                            n += 1  # a new key: an unacknowledged write may be lost
                            time.sleep(0.005)
                threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
                for t in threads:
                    t.start()
                time.sleep(1.0)
                g.procs[leader].kill()
                killed = time.monotonic()
                first = wait_until("a write acknowledged after the kill", lambda: next(
                    (ack for sent, ack in sorted(acks, key=lambda x: x[1]) if sent > killed), None))
                stop.set()
                for t in threads:
                    t.join()
                ms = (first - killed) * 1e3
                times.append(ms)
                print(f"run {run + 1}: voter {leader + 1} killed; first write acknowledged "
                      f"{ms:.0f} ms later", flush=True)
                g.start(leader)
                g.leader(alive)
        finally:
            g.stop()
    print(f"failover (kill to first acknowledged write), {a.runs} runs, election timeout "
          f"{a.election_timeout}: median {b.median(times):.0f} ms, "
          f"max {max(times):.0f} ms")


def ingest_round(kind, fsync, duration):
    with tempfile.TemporaryDirectory() as d:
        extra = ["--fsync", fsync]
        if kind == "single":
            with b.Node(["leader", "--data-dir", f"{d}/l"] + extra) as leader:
                return [b.wrk(leader.url + "/post", duration, s).rps
                        for s in ("post.lua", "post4k.lua")]
        g = Group([f"{d}/v{i}" for i in range(3)], extra)
        try:
            url = URLS[g.leader([0, 1, 2])]
            return [b.wrk(url + "/post", duration, s).rps for s in ("post.lua", "post4k.lua")]
        finally:
            g.stop()


def ingest(a):
    configs = [(k, f) for f in ("everysec", "always") for k in ("single", "group")]
    res = {c: [] for c in configs}
    for r in range(a.rounds):
        # Alternating the order each round: drift on a shared machine falls on all.
        for c in (configs if r % 2 == 0 else configs[::-1]):
            res[c].append(ingest_round(*c, a.duration))
    print("| --fsync | POSTs of 10 words: single leader | 3-voter group | group/single "
          "| POSTs of 4 KiB: single leader | 3-voter group | group/single |")
    print("|---|---|---|---|---|---|---|")
    for f in ("everysec", "always"):
        s = [b.median(r[i] for r in res[("single", f)]) for i in (0, 1)]
        g = [b.median(r[i] for r in res[("group", f)]) for i in (0, 1)]
        print(f"| {f} | {s[0]:,.0f}/s | {g[0]:,.0f}/s | {g[0] / s[0]:.2f}× "
              f"| {s[1]:,.0f}/s | {g[1]:,.0f}/s | {g[1] / s[1]:.2f}× |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["failover", "ingest"])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--election-timeout", default="300ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    a = ap.parse_args()
    failover(a) if a.what == "failover" else ingest(a)


if __name__ == "__main__":
    main()
