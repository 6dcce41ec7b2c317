#!/usr/bin/env python3
"""A raft group against a single leader, measured on this machine.

    scripts/bench_ha.py failover [--runs 10] [--election-timeout 500ms]
    scripts/bench_ha.py ingest   [--rounds 3] [--duration 5s]
    scripts/bench_ha.py scale    [--words 10000000] [--body-words 20000] [--rejoins 5]
                                 [--group-only] [--logs DIR]
    scripts/bench_ha.py small    [--words 10000000] [--rounds 3] [--duration 5s]
    scripts/bench_ha.py solo     [--rounds 3] [--duration 5s]

failover: one group of three voters; ten times over, SIGKILL the leader while four
  writers post keyed writes through every voter, and time the kill to the first write
  acknowledged after it (a request sent after the kill); the killed voter is started
  again before the next run. Prints the median and the max.

ingest: wrk POSTs (10 words, 4 KiB) to a single leader and to a three-voter group's
  leader, each with --fsync everysec and always, alternating configurations each round;
  medians of the rounds, in one table.

scale: a group of three voters with default settings against a single leader, at
  --words distinct words posted in bodies of --body-words (keyed, through whoever
  leads): elections (terms begun) and posts refused during the ingest, how long the ingest
  took; each voter's memory at rest (the least anonymous memory over 10 s, plus the
  files of its data directory at their full size, raft log included) and its snapshot
  index, once at rest (no compaction running, no old base held by a raft snapshot
  alone); a voter restarted on its data (SIGTERM, start → the group's seq and digest);
  a follower whose data directory is wiped (start → the group's seq and digest),
  --rejoins times, a different follower each time; elections during those. The
  single leader: the same ingest, and its memory at rest counted the same way.

small: 10-word POSTs (wrk -t2 -c32, scripts/wrk/post.lua) to a single leader with two
  network replicas and to a three-voter group's leader, on an empty table and after
  --words distinct words; alternating, medians of --rounds: req/s and p99.

Uses target/release/memdb (or MEMDB_BIN), ports 18700-18702 on 127.0.0.1 for the group
(its members name each other up front), free ones otherwise, temp dirs;
solo: 10-word and 4 KiB POSTs to a single leader and to a group of one voter, which
  is what a single leader would be if memdb had one write path.

needs wrk for ingest, small and solo. Stops what it starts.
"""
import argparse
import json
import os
import shutil
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
    def __init__(self, dirs, extra, logs=None):
        self.dirs, self.extra, self.logs = dirs, extra, logs
        self.procs = [None] * len(PORTS)
        for i in range(len(PORTS)):
            self.start(i)

    def start(self, i):
        self.procs[i] = b.Node(
            ["leader", "--port", str(PORTS[i]), "--data-dir", self.dirs[i],
             "--node-id", str(i + 1), "--peers", PEERS] + self.extra,
            log=f"{self.logs}/v{i}.log" if self.logs else None)

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
    return b.post_following(url, f"text={text}".encode(), {"Idempotency-Key": key}, 1)


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


def settled(urls):
    """Waits until every node's files hold its table and no compaction runs: the state
    at rest, not the minutes after a bulk load."""
    def done(u):
        h = health(u)
        return h and h["snapshot"]["seq"] == h["seq"] and not h["snapshot"]["compacting"] \
            and h["snapshot"]["recent_files"] == 0
    wait_until("the files settled", lambda: all(done(u) for u in urls) or None,
               timeout=600, every=0.5)


def small_round(kind, preload, duration):
    """10-word POSTs from wrk -t2 -c32 to a single leader with two network replicas,
    or to a three-voter group's leader, after `preload` distinct words: (req/s, p99 ms)."""
    with tempfile.TemporaryDirectory() as d:
        if kind == "single":
            with b.Node(["leader", "--data-dir", f"{d}/l", "--max-body", "8MiB"]) as leader:
                with b.Node(["replica", "--leader", leader.url, "--heartbeat", "100ms"]), \
                        b.Node(["replica", "--leader", leader.url, "--heartbeat", "100ms"]):
                    ingest_words([leader.url], preload, 60_000, {})
                    settled([leader.url])
                    r = b.wrk(leader.url + "/post", duration, "post.lua", threads=2)
                    return r.rps, r.p99_ms
        g = Group([f"{d}/v{i}" for i in range(3)], ["--max-body", "8MiB"])
        try:
            g.leader([0, 1, 2])
            ingest_words(URLS, preload, 60_000, {})
            exact(URLS)
            settled(URLS)
            url = URLS[g.leader([0, 1, 2])]
            r = b.wrk(url + "/post", duration, "post.lua", threads=2)
            return r.rps, r.p99_ms
        finally:
            g.stop()


def small(a):
    """10-word posts: the group against a single leader with two network replicas,
    on an empty table and after --words words, alternating, medians of --rounds."""
    rows = []
    for preload in (0, a.words):
        res = b.ab_rounds(a.rounds, "single", "group",
                          lambda kind: small_round(kind, preload, a.duration))
        s = (b.median(r[0] for r in res["single"]), b.median(r[1] for r in res["single"]))
        g = (b.median(r[0] for r in res["group"]), b.median(r[1] for r in res["group"]))
        rows.append((preload, s, g))
        print(json.dumps({"preload": preload, "single": res["single"], "group": res["group"]}))
    print("| table | single leader + 2 replicas: req/s, p99 | 3-voter group: req/s, p99 "
          "| group/single |")
    print("|---|---|---|---|")
    for preload, s, g in rows:
        print(f"| {preload:,} words | {s[0]:,.0f}/s, {s[1]:.1f} ms | {g[0]:,.0f}/s, "
              f"{g[1]:.1f} ms | {g[0] / s[0]:.2f}× |")


def solo_round(kind, duration):
    """10-word and 4 KiB POSTs to a single leader, or to a group of one voter."""
    with tempfile.TemporaryDirectory() as d:
        args = ["leader", "--data-dir", f"{d}/l"]
        if kind == "one-voter group":
            args += ["--port", str(PORTS[0]), "--node-id", "1", "--peers", f"1={URLS[0]}"]
        with b.Node(args) as node:
            wait_until("the voter leads", lambda: (lambda h: h and (
                not h.get("raft") or h["raft"]["state"] == "leader"))(health(node.url)))
            return [b.wrk(node.url + "/post", duration, s, threads=2).rps
                    for s in ("post.lua", "post4k.lua")]


def solo(a):
    """One write path? A single leader against a group of one voter (no peers: what
    a single leader would be if it ran as a one-member group), alternating, medians."""
    res = b.ab_rounds(a.rounds, "single leader", "one-voter group",
                      lambda kind: solo_round(kind, a.duration))
    s = [b.median(r[i] for r in res["single leader"]) for i in (0, 1)]
    g = [b.median(r[i] for r in res["one-voter group"]) for i in (0, 1)]
    print(json.dumps(res))
    print("| POSTs | single leader | one-voter group | ratio |")
    print("|---|---|---|---|")
    for i, what in enumerate(("10 words", "4 KiB")):
        print(f"| {what} | {s[i]:,.0f}/s | {g[i]:,.0f}/s | {g[i] / s[i]:.2f}× |")


def data_mib(path):
    """The files under `path`, at their full size, each once (a raft snapshot's hard
    links are the table's files)."""
    seen = {}
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.stat(os.path.join(root, f))
            except OSError:
                continue
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values()) / 2**20


def files_by_kind(path):
    """MiB of a voter's files by what they are, each inode once: the raft log's
    segments, the files only its raft snapshot holds, and the rest (the table's files)."""
    kinds, seen = {}, set()
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            rel = os.path.relpath(p, path)
            if rel.startswith("raft/raft.log"):
                kind = "raft log"
            elif os.path.basename(rel).startswith("wal-"):
                kind = "write-ahead log"
            elif rel.startswith("raft/snapshot-") and st.st_nlink == 1:
                kind = "only the raft snapshot's"
            else:
                kind = "table"
            kinds[kind] = kinds.get(kind, 0) + st.st_size / 2**20
    return {k: round(v) for k, v in kinds.items()}


def at_rest(pid, path):
    """The least anonymous memory over 10 s, and the files at full size (MiB)."""
    least = None
    for _ in range(20):
        a = b.rss_mib(pid, "RssAnon")
        least = a if least is None else min(least, a)
        time.sleep(0.5)
    return least, data_mib(path)


def ingest_words(urls, n, body_words, refused):
    """Posts `n` distinct words in bodies of `body_words`, keyed, through any of
    `urls` (following redirects), until each is acknowledged."""
    lead = 0
    for at in range(0, n, body_words):
        text = " ".join(f"w{j}" for j in range(at, min(n, at + body_words)))
        key = f"big{at}"
        give_up = time.monotonic() + 120
        while True:
            req = urllib.request.Request(urls[lead] + "/post", data=text.encode(),
                                         method="POST",
                                         headers={"Idempotency-Key": key,
                                                  "Content-Type": "text/plain"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    if r.status == 202:
                        break
            except urllib.error.HTTPError as e:
                if e.code != 307:
                    refused[e.code] = refused.get(e.code, 0) + 1
            except OSError:
                refused["connection"] = refused.get("connection", 0) + 1
            if time.monotonic() > give_up:
                raise SystemExit(f"post {key} not acknowledged in 120 s")
            lead = (lead + 1) % len(urls)
            time.sleep(0.05)


def exact(urls, timeout=600):
    """Seconds until every voter answers with the same seq and digest."""
    start = time.monotonic()

    def same():
        hs = [health(u) for u in urls]
        if all(hs) and len({(h["seq"], h["digest"]) for h in hs}) == 1:
            return True
        return None
    wait_until("the voters at one seq and digest", same, timeout=timeout, every=0.1)
    return time.monotonic() - start


def single_leader(a, out):
    """The single leader's ingest and memory at rest, into `out`."""
    with tempfile.TemporaryDirectory() as d:
        with b.Node(["leader", "--data-dir", f"{d}/single", "--max-body", "8MiB"]) as single:
            started = time.monotonic()
            ingest_words([single.url], a.words, a.body_words, {})
            out["single_ingest_s"] = time.monotonic() - started
            settled([single.url])
            out["single_mem"] = at_rest(single.pid, f"{d}/single")
            out["single_files"] = files_by_kind(f"{d}/single")


def snapshot_held(url):
    """memdb_raft_snapshot_held_bytes from a voter's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("memdb_raft_snapshot_held_bytes "):
                return float(line.split()[1])
    raise SystemExit(f"{url}/metrics has no memdb_raft_snapshot_held_bytes")


def term():
    """The highest term any voter answering names: each election takes a new one."""
    return max(h["raft"]["term"] for h in map(health, URLS) if h)


def scale(a):
    out = {"single_ingest_s": 0, "single_mem": (1, 0)}
    if not a.group_only:
        single_leader(a, out)
    with tempfile.TemporaryDirectory() as d:
        dirs = [f"{d}/v{i}" for i in range(3)]
        g = Group(dirs, ["--max-body", "8MiB"], logs=a.logs)
        try:
            g.leader([0, 1, 2])
            before = term()
            refused = {}
            started = time.monotonic()
            ingest_words(URLS, a.words, a.body_words, refused)
            out["group_ingest_s"] = time.monotonic() - started
            exact(URLS)
            hs = [health(u) for u in URLS]
            out["elections"] = term() - before
            out["refused"] = refused
            out["snapshot_index"] = [h["raft"]["snapshot_index"] for h in hs]
            out["last_log_index"] = [h["raft"]["last_log_index"] for h in hs]
            # At rest: no compaction running, and no old base held by a raft snapshot
            # alone (a voter takes its snapshot again within 10 s once one is).
            settled(URLS)
            wait_until("no files held by a raft snapshot alone", lambda: all(
                snapshot_held(u) < 16 << 20 for u in URLS) or None, timeout=120, every=1)
            time.sleep(5)
            out["voter_mem"] = [at_rest(g.procs[i].pid, dirs[i]) for i in range(3)]
            out["voter_files"] = [files_by_kind(dirs[i]) for i in range(3)]
            leader = g.leader([0, 1, 2])
            before = term()
            other = (leader + 1) % 3
            g.procs[other].stop()
            started = time.monotonic()
            g.start(other)
            out["restart_s"] = time.monotonic() - started + exact(URLS)
            out["rejoin_s"] = []
            for r in range(a.rejoins):
                leader = g.leader([0, 1, 2])
                other = (leader + 1 + r % 2) % 3
                g.procs[other].kill()
                shutil.rmtree(dirs[other])
                os.makedirs(dirs[other])
                started = time.monotonic()
                g.start(other)
                out["rejoin_s"].append(time.monotonic() - started + exact(URLS))
            out["restart_elections"] = term() - before
        finally:
            g.stop()
    single = sum(out["single_mem"])
    print(json.dumps(out))
    print("| figure | single leader | 3-voter group |")
    print("|---|---|---|")
    print(f"| {a.words:,} words in {a.body_words:,}-word bodies | {out['single_ingest_s']:.1f} s "
          f"| {out['group_ingest_s']:.1f} s; {out['elections']} elections; refused "
          f"{out['refused'] or 'none'} |")
    mems = ", ".join(f"{an:.0f} + {f:.0f} = {an + f:.0f} ({(an + f) / single:.2f}×)"
                     for an, f in out["voter_mem"])
    print(f"| memory at rest, anon + files MiB | {out['single_mem'][0]:.0f} + "
          f"{out['single_mem'][1]:.0f} = {single:.0f} | {mems} |")
    print(f"| snapshot index / last log index | — | {out['snapshot_index']} / "
          f"{out['last_log_index']} |")
    print(f"| a voter restarted on its data (start → exact) | — | {out['restart_s']:.1f} s |")
    rejoins = ", ".join(f"{s:.1f}" for s in out["rejoin_s"])
    print(f"| a wiped voter rejoins (start → exact), {a.rejoins} runs | — | {rejoins} s "
          f"(max {max(out['rejoin_s']):.1f}) |")
    print(f"| elections during the restart and the rejoin | — | {out['restart_elections']} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["failover", "ingest", "scale", "small", "solo"])
    ap.add_argument("--words", type=int, default=10_000_000)
    ap.add_argument("--body-words", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--election-timeout", default="300ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rejoins", type=int, default=5)
    ap.add_argument("--group-only", action="store_true",
                    help="scale: skip the single leader (its figures read 0)")
    ap.add_argument("--logs", help="a directory for the voters' logs (scale)")
    ap.add_argument("--duration", default="5s")
    a = ap.parse_args()
    {"failover": failover, "ingest": ingest, "scale": scale, "small": small,
     "solo": solo}[a.what](a)


if __name__ == "__main__":
    main()
