#!/usr/bin/env python3
"""memdb at scale, beside Redis holding the same words, in one run.

For each size N (distinct words, posted as unique words in bodies of --chunk words):

memdb (a release build): a leader in a temp dir, then
  - leader memory once the table holds N words, its snapshot covers them and no
    compaction runs: RSS (anonymous + file-backed: the leader maps its own base file),
    and the peak (VmHWM) so far,
  - the snapshot files: the base's size, the last compaction's duration,
  - a network replica joining: spawn to serving the leader's seq, and its RSS (and
    restarted on its data directory: the time, and what it downloaded again),
  - freshness: a local replica follows while ingest goes on at full speed with a
    Zipf-like mix of repeated and new words (--fresh-seconds); every 10 ms the
    sampler compares the replica's seq with the leader's: staleness is how long ago
    the leader passed the replica's state (median, p99, max), with the delta publish
    time and the ingest rate,
  - a leader restart (SIGTERM, then start on the same data dir): spawn to healthy,
    then the freshness run again with --snapshot-interval 100ms.
Redis (redis-server from Debian, persistence off, on a loopback port): the same N words
as fields of one hash (HINCRBY, pipelined), then used_memory, RSS, and a SAVE's
duration and RDB size.

    scripts/bench_scale.py [--words 1000000,5000000] [--bin target/release/memdb]

Needs redis-server (apt-get install redis-server). Uses ephemeral ports and temp
dirs; stops everything it starts, by PID.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import benchlib as b

ROOT = b.ROOT


def word(i):
    return "w%09d" % i


def get(url, timeout=120):
    return b.get(url, timeout)


def health(url):
    return b.health(url, timeout=5)


def zipf_bodies(n, chunk, count=12, seed=7):
    """Bodies of --chunk words drawn with density ~ 1/rank over 2n ranks (Zipf, s=1):
    mostly repeats of frequent words, a tail of rare and new ones."""
    import math
    import random
    rng = random.Random(seed)
    top = math.log(2 * n)
    return [" ".join(word(int(math.exp(rng.random() * top))) for _ in range(chunk))
            for _ in range(count)]


def freshness(leader, local, bodies, seconds, rate=None):
    """Ingests `bodies` (plus 2% never-seen words per post) from two threads for
    `seconds` (at most `rate` words/s in all, if given) while sampling the local
    replica's staleness every 10 ms."""
    import threading
    stop = threading.Event()
    posted = [0]
    lock = threading.Lock()

    per_body = bodies[0].count(" ") + 1

    def poster(k):
        i = 0
        while not stop.is_set():
            if rate:
                with lock:
                    ahead = posted[0] / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            body = bodies[(i + k) % len(bodies)]
            fresh = " ".join("z%dx%dx%d" % (k, i, j) for j in range(per_body // 50))
            req = urllib.request.Request(leader.url + "/post", data=(body + " " + fresh).encode(),
                                         headers={"content-type": "text/plain"})
            urllib.request.urlopen(req, timeout=120).read()
            with lock:
                posted[0] += per_body + per_body // 50
            i += 2

    started = time.monotonic()
    threads = [threading.Thread(target=poster, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    history = []  # (time, leader seq)
    stale = []
    while time.monotonic() - started < seconds:
        now = time.monotonic()
        lseq = health(leader.url)[1].get("seq", 0)
        history.append((now, lseq))
        rseq = health(local.url)[1].get("seq", 0)
        passed = next((t for t, s in history if s > rseq), None)
        stale.append(0.0 if passed is None else time.monotonic() - passed)
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    stale.sort()
    snap = health(leader.url)[1].get("snapshot", {})
    return {
        "rate": posted[0] / elapsed,
        "stale_p50": stale[len(stale) // 2] * 1e3,
        "stale_p99": stale[int(len(stale) * 0.99)] * 1e3,
        "stale_max": stale[-1] * 1e3,
        "delta_ms": snap.get("last_duration_ms") or 0,
        "delta_words": snap.get("last_words", snap.get("delta_words", 0)),
        "compactions": snap.get("compactions", 0),
    }


def files_mib(data):
    """The snapshot files' full size (what the leader maps): base, delta, recent deltas."""
    names = [n for n in os.listdir(data)
             if n in ("snapshot.memdb", "delta.memdb") or
             (n.startswith("recent-") and n.endswith(".memdb"))]
    return sum(os.path.getsize(os.path.join(data, n)) for n in names) / 2**20


def settled(h):
    s = h.get("snapshot", {})
    return not s.get("compacting") and not s.get("recent_files")


def Proc(binary, args, tmp, name):
    """A memdb process on a port the kernel picks, its log in `tmp`."""
    return b.Node(args, os.path.join(tmp, name + ".log"), binary=binary, wait=False)


def memdb(binary, n, chunk, fresh_seconds, rates=(None, 1_000_000)):
    tmp = tempfile.mkdtemp(prefix="memdb-scale-")
    data = os.path.join(tmp, "data")
    procs = []
    args = ["leader", "--data-dir", data, "--max-body", "8MiB"]
    try:
        leader = Proc(binary, args, tmp, "leader")
        procs.append(leader)
        peak_anon = [0.0]
        sampling = [True]

        def sample():
            while sampling[0]:
                try:
                    peak_anon[0] = max(peak_anon[0], b.rss_mib(leader.pid, "RssAnon"))
                except OSError:
                    return
                time.sleep(0.1)
        import threading
        sampler = threading.Thread(target=sample)
        sampler.start()
        for start in range(0, n, chunk):
            body = " ".join(word(i) for i in range(start, min(n, start + chunk))).encode()
            req = urllib.request.Request(leader.url + "/post", data=body,
                                         headers={"content-type": "text/plain"})
            urllib.request.urlopen(req, timeout=120).read()
        seq = health(leader.url)[1]["seq"]
        h = leader.wait(lambda c, h: h.get("snapshot", {}).get("seq") == seq and settled(h),
                        "a snapshot of the whole table, no merge under way", timeout=300)
        sampling[0] = False
        sampler.join()
        pid = leader.pid
        # At rest: the least anonymous memory over 20 s, and the files at full size.
        least = None
        for _ in range(40):
            a = b.rss_mib(pid, "RssAnon")
            least = a if least is None else min(least, a)
            time.sleep(0.5)
        out = {
            "leader_rss": b.rss_mib(pid),
            "leader_anon": least,
            "leader_file": b.rss_mib(pid, "RssFile"),
            "files_mib": files_mib(data),
            "leader_peak": b.rss_mib(pid, "VmHWM"),
            "peak_anon": peak_anon[0],
            "compaction_s": (h["snapshot"].get("last_compaction_ms") or 0) / 1e3,
            "base_mib": os.path.getsize(os.path.join(data, "snapshot.memdb")) / 2**20,
        }
        out["whole_mib"] = out["leader_anon"] + out["files_mib"]
        rdata = os.path.join(tmp, "replica")
        rargs = ["replica", "--leader", leader.url, "--data-dir", rdata]
        replica = Proc(binary, rargs, tmp, "replica")
        procs.append(replica)
        replica.wait(lambda c, h: c == 200 and h.get("seq") == seq, "the replica's join")
        out["join_s"] = time.monotonic() - replica.started
        out["replica_rss"] = b.rss_mib(replica.pid)
        out["replica_anon"] = b.rss_mib(replica.pid, "RssAnon")
        out["join_kind"] = b.health(replica.url)[1].get("last_sync_kind")
        replica.stop()
        # Restarted on its data directory: only what changed is downloaded.
        replica = Proc(binary, rargs, tmp, "replica-again")
        procs.append(replica)
        replica.wait(lambda c, h: c == 200 and h.get("seq") == seq, "the replica's rejoin")
        out["rejoin_s"] = time.monotonic() - replica.started
        out["rejoin_mib"] = (b.health(replica.url)[1]
                             .get("last_sync_downloaded_bytes") or 0) / 2**20
        replica.stop()
        bodies = zipf_bodies(n, chunk) if fresh_seconds else None
        local = Proc(binary, ["local-replica", "--data-dir", data], tmp, "local")
        procs.append(local)
        local.wait(lambda c, h: c == 200, "the local replica")
        if fresh_seconds:
            for r in rates:
                out[("fresh_1s", r)] = freshness(leader, local, bodies, fresh_seconds, r)
        seq = health(leader.url)[1]["seq"]
        leader.stop()
        leader = Proc(binary, args + ["--snapshot-interval", "100ms"], tmp, "leader")
        procs.append(leader)
        leader.wait(lambda c, h: c == 200 and h.get("seq") == seq, "the restarted leader")
        out["restart_s"] = time.monotonic() - leader.started
        if fresh_seconds:
            local.wait(lambda c, h: h.get("socket_connected"), "the local replica's socket")
            for r in rates:
                out[("fresh_100ms", r)] = freshness(leader, local, bodies, fresh_seconds, r)
            out["leader_rss_after"] = b.rss_mib(leader.pid)
            out["words_after"] = health(leader.url)[1].get("words", 0)
            out["leader_peak_after"] = b.rss_mib(leader.pid, "VmHWM")
        return out
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def resp(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        p = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def redis(n, chunk):
    if not shutil.which("redis-server"):
        sys.exit("needs redis-server: apt-get install redis-server")
    tmp = tempfile.mkdtemp(prefix="redis-scale-")
    port = b.free_port()
    srv = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", tmp, "--dbfilename", "dump.rdb"],
        stdout=open(os.path.join(tmp, "redis.log"), "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.02)
        f = s.makefile("rb")

        def call(*parts):
            s.sendall(resp(*parts))
            return read_reply(f)

        for start in range(0, n, chunk):
            end = min(n, start + chunk)
            s.sendall(b"".join(resp("HINCRBY", "words", word(i), 1) for i in range(start, end)))
            for _ in range(end - start):
                read_reply(f)
        assert call("HLEN", "words") == n
        info = call("INFO", "memory").decode()
        mem = dict(line.split(":", 1) for line in info.split("\r\n") if ":" in line)
        out = {"used_mib": int(mem["used_memory"]) / 2**20,
               "rss_mib": int(mem["used_memory_rss"]) / 2**20}
        t = time.monotonic()
        call("SAVE")
        out["save_s"] = time.monotonic() - t
        out["rdb_mib"] = os.path.getsize(os.path.join(tmp, "dump.rdb")) / 2**20
        s.close()
        return out
    finally:
        srv.terminate()
        srv.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def read_reply(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b":"):
        return int(rest) if kind == b":" else rest
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = f.read(size + 2)[:-2]
        return data
    if kind == b"-":
        sys.exit(f"redis error: {rest.decode()}")
    sys.exit(f"unexpected redis reply {line!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", default="1000000")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/memdb"))
    ap.add_argument("--chunk", type=int, default=70_000)
    ap.add_argument("--fresh-seconds", type=float, default=20)
    ap.add_argument("--no-redis", action="store_true", help="memdb only")
    a = ap.parse_args()
    sizes = [int(w) for w in a.words.split(",")]
    rows, fresh = [], []
    for n in sizes:
        m = memdb(a.bin, n, a.chunk, a.fresh_seconds)
        r = None if a.no_redis else redis(n, a.chunk)
        per = lambda mib: mib * 2**20 / n  # noqa: E731
        used = f"{r['used_mib']:.0f} ({r['rss_mib']:.0f})" if r else "-"
        ratio = f"{m['whole_mib'] / r['used_mib']:.2f}x" if r else "-"
        rows.append(
            f"| {n:,} | {m['leader_anon']:.0f} + {m['files_mib']:.0f} = {m['whole_mib']:.0f} "
            f"({per(m['whole_mib']):.0f}) | {m['peak_anon']:.0f} | {m['leader_peak']:.0f} "
            f"| {used} | {ratio} "
            f"| {m['base_mib']:.0f} ({per(m['base_mib']):.0f}) | {m['compaction_s']:.2f} "
            + (f"| {r['save_s']:.2f} | {r['rdb_mib']:.0f} ({per(r['rdb_mib']):.0f}) " if r
               else "| - | - ")
            + f"| {m['join_s']:.1f} ({m['replica_rss']:.0f}, anon {m['replica_anon']:.0f}, "
              f"{m['join_kind']}) | {m['rejoin_s']:.2f} ({m['rejoin_mib']:.1f} MiB) "
              f"| {m['restart_s']:.2f} |")
        for key, interval in (("fresh_1s", "1s"), ("fresh_100ms", "100ms")):
            for rate in (None, 1_000_000):
                f = m.get((key, rate))
                if f:
                    cap = "full speed" if rate is None else f"capped {rate / 1e6:.0f}M"
                    fresh.append(
                        f"| {n:,} | {interval} | {cap} | {f['rate'] / 1e6:.2f} "
                        f"| {f['stale_p50']:.0f} | {f['stale_p99']:.0f} | {f['stale_max']:.0f} "
                        f"| {f['delta_ms']:.0f} ({f['delta_words']:,} words) "
                        f"| {f['compactions']} |")
        if "leader_rss_after" in m:
            rows[-1] += (f" after the freshness runs ({m['words_after']:,} words): "
                         f"RSS {m['leader_rss_after']:.0f}, peak {m['leader_peak_after']:.0f}")
        print(rows[-1], flush=True)
    print()
    print("| distinct words | leader at rest: anon + files = whole MiB (B/word) "
          "| peak anon MiB | peak RSS MiB | Redis used_memory MiB (RSS) "
          "| whole / Redis used | base file MiB (B/word) | compaction s | Redis SAVE s "
          "| RDB MiB (B/word) | replica join s (RSS MiB) "
          "| replica rejoin s (downloaded) | leader restart s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if fresh:
        print()
        print("| distinct words | snapshot interval | ingest | M words/s | staleness p50 ms "
              "| p99 ms | max ms | last publish ms (words) | compactions |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(fresh))


if __name__ == "__main__":
    main()
