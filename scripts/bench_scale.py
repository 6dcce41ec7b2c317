#!/usr/bin/env python3
"""memdb at scale, beside Redis holding the same words, in one run.

For each size N (distinct words, posted as unique words in bodies of --chunk words):

memdb (a release build): a leader in a temp dir, then
  - leader RSS once the table holds N words and its snapshot covers them,
  - the last snapshot publish (its duration and file size, from /health),
  - a network replica joining: spawn to serving the leader's seq, and its RSS,
  - a leader restart (SIGTERM, then start on the same data dir): spawn to healthy.
Redis (redis-server from Debian, persistence off, on a loopback port): the same N words
as fields of one hash (HINCRBY, pipelined), then used_memory, RSS, and a SAVE's
duration and RDB size.

    scripts/bench_scale.py [--words 1000000,5000000] [--bin target/release/memdb]

Needs redis-server (apt-get install redis-server). Uses ephemeral ports and temp
dirs; stops everything it starts, by PID.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def word(i):
    return "w%09d" % i


def get(url, timeout=120):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def health(url):
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return None, {}


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Proc:
    """A memdb process on an ephemeral port, found through --addr-file."""

    def __init__(self, binary, args, tmp, name):
        self.addr_file = os.path.join(tmp, name + ".addr")
        if os.path.exists(self.addr_file):
            os.remove(self.addr_file)
        self.log = open(os.path.join(tmp, name + ".log"), "a")
        self.started = time.monotonic()
        self.p = subprocess.Popen(
            [binary] + args + ["--port", "0", "--addr-file", self.addr_file],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.addr_file):
            if self.p.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{name} did not start; see {self.log.name}")
            time.sleep(0.005)
        self.url = "http://" + open(self.addr_file).read().strip()

    def wait(self, pred, what, deadline=600.0):
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            code, h = health(self.url)
            if pred(code, h):
                return h
            if self.p.poll() is not None:
                sys.exit(f"{what}: the process exited; see {self.log.name}")
            time.sleep(0.01)
        sys.exit(f"timed out waiting for {what}")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def memdb(binary, n, chunk):
    tmp = tempfile.mkdtemp(prefix="memdb-scale-")
    data = os.path.join(tmp, "data")
    procs = []
    try:
        leader = Proc(binary, ["leader", "--data-dir", data, "--max-body", "8MiB"], tmp, "leader")
        procs.append(leader)
        for start in range(0, n, chunk):
            body = " ".join(word(i) for i in range(start, min(n, start + chunk))).encode()
            req = urllib.request.Request(leader.url + "/post", data=body,
                                         headers={"content-type": "text/plain"})
            urllib.request.urlopen(req, timeout=120).read()
        seq = health(leader.url)[1]["seq"]
        h = leader.wait(lambda c, h: h.get("snapshot", {}).get("seq") == seq,
                        "a snapshot of the whole table")
        out = {
            "leader_rss": rss_mib(leader.p.pid),
            "publish_s": (h["snapshot"]["last_duration_ms"] or 0) / 1e3,
            "snapshot_mib": (h["snapshot"]["last_bytes"] or 0) / 2**20,
        }
        replica = Proc(binary, ["replica", "--leader", leader.url], tmp, "replica")
        procs.append(replica)
        replica.wait(lambda c, h: c == 200 and h.get("seq") == seq, "the replica's join")
        out["join_s"] = time.monotonic() - replica.started
        out["replica_rss"] = rss_mib(replica.p.pid)
        replica.stop()
        leader.stop()
        leader = Proc(binary, ["leader", "--data-dir", data, "--max-body", "8MiB"], tmp, "leader")
        procs.append(leader)
        leader.wait(lambda c, h: c == 200 and h.get("seq") == seq, "the restarted leader")
        out["restart_s"] = time.monotonic() - leader.started
        return out
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    port = free_port()
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
    a = ap.parse_args()
    sizes = [int(w) for w in a.words.split(",")]
    print("| distinct words | leader RSS MiB (B/word) | Redis used_memory MiB (RSS) | leader / Redis "
          "| snapshot publish s | snapshot MiB (B/word) | Redis SAVE s | RDB MiB (B/word) "
          "| replica join s (RSS MiB) | leader restart s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        m = memdb(a.bin, n, a.chunk)
        r = redis(n, a.chunk)
        per = lambda mib: mib * 2**20 / n  # noqa: E731
        print(f"| {n:,} | {m['leader_rss']:.0f} ({per(m['leader_rss']):.0f}) "
              f"| {r['used_mib']:.0f} ({r['rss_mib']:.0f}) | {m['leader_rss'] / r['used_mib']:.1f}× "
              f"| {m['publish_s']:.2f} | {m['snapshot_mib']:.0f} ({per(m['snapshot_mib']):.0f}) "
              f"| {r['save_s']:.2f} | {r['rdb_mib']:.0f} ({per(r['rdb_mib']):.0f}) "
              f"| {m['join_s']:.1f} ({m['replica_rss']:.0f}) | {m['restart_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
