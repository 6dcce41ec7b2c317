#!/usr/bin/env python3
"""A raft voter whose data directory is wiped rejoins and becomes exact.

Three voters formed with --peers; --words words in posts of 20,000 (keyed), then
--small-seconds of 10-word keyed posts (past --raft-snapshot-every, so the log is
purged behind a snapshot); a follower is SIGKILLed and its data directory emptied;
after --down-seconds of more posts it is started again with the same flags while posts
go on. Reports how long the wiped
voter took to hold the same seq and digest as the others (or that it never did within
--deadline), and whether any voter logged a panic.

    scripts/trial_wiped_voter.py [--bin target/release/memdb] [--words 1000000]

Uses ports 18730-18732 on 127.0.0.1 and temp dirs; stops what it starts.
"""
import argparse
import json
import os
import shutil
import tempfile
import time

import benchlib as b

PORTS = [18730, 18731, 18732]
TOKEN = "trial-token-0123456789abcdef"


def call(url, data=None, key=None, timeout=10):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if key:
        headers["Idempotency-Key"] = key
    if data is not None:
        headers["Content-Type"] = "text/plain"
    return json.loads(b.call(url, data, headers, timeout) or b"null")


def health(port):
    """A voter's /health body (a 503's too); None if it does not answer."""
    code, body = b.health(f"http://127.0.0.1:{port}", timeout=2)
    return body if code is not None else None


def leader_port():
    for p in PORTS:
        h = health(p)
        if h and h.get("raft") and h["raft"]["state"] == "leader":
            return p
    return None


def post(text, key, deadline=30):
    give_up = time.time() + deadline
    while time.time() < give_up:
        p = leader_port()
        if p:
            try:
                return call(f"http://127.0.0.1:{p}/post", text.encode(), key)
            except OSError:
                pass
        time.sleep(0.05)
    raise SystemExit(f"write {key} not acknowledged in {deadline}s")


def start(binary, i, dirs, logs, snapshot_every):
    peers = ",".join(f"{j + 1}=http://127.0.0.1:{p}" for j, p in enumerate(PORTS))
    return b.Node(
        ["leader", "--port", str(PORTS[i]), "--data-dir", dirs[i], "--node-id",
         str(i + 1), "--peers", peers, "--auth-token", TOKEN,
         "--raft-snapshot-every", str(snapshot_every)],
        logs[i], binary=binary, wait=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=b.default_bin())
    ap.add_argument("--words", type=int, default=1_000_000)
    ap.add_argument("--vocabulary", type=int, default=1_000_000,
                    help="distinct words among the big posts")
    ap.add_argument("--small-seconds", type=float, default=10)
    ap.add_argument("--snapshot-every", type=int, default=1000)
    ap.add_argument("--deadline", type=float, default=120)
    ap.add_argument("--down-seconds", type=float, default=5,
                    help="how long the wiped voter stays down while posts go on")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="memdb-wipe-")
    dirs = [os.path.join(tmp, f"v{i + 1}") for i in range(3)]
    logs = [open(os.path.join(tmp, f"v{i + 1}.log"), "ab") for i in range(3)]
    procs = [start(a.bin, i, dirs, logs, a.snapshot_every) for i in range(3)]
    try:
        while not leader_port():
            time.sleep(0.1)
        n = 0
        for at in range(0, a.words, 20_000):
            words = " ".join(f"w{(at + j) % a.vocabulary}"
                             for j in range(min(20_000, a.words - at)))
            post(words, f"big{at}")
        until = time.time() + a.small_seconds
        while time.time() < until:
            post(" ".join(f"s{(n + j) % 997}" for j in range(10)), f"small{n}")
            n += 1
        lead = leader_port()
        wiped = next(i for i, p in enumerate(PORTS) if p != lead)
        procs[wiped].kill()
        shutil.rmtree(dirs[wiped])
        os.makedirs(dirs[wiped])
        until = time.time() + a.down_seconds
        while time.time() < until:
            post(" ".join(f"s{(n + j) % 997}" for j in range(10)), f"small{n}")
            n += 1
        print(f"{n} small posts; voter {wiped + 1} wiped and restarted", flush=True)
        restarted = time.time()
        procs[wiped] = start(a.bin, wiped, dirs, logs, a.snapshot_every)
        for k in range(200):
            post(" ".join(f"late{k % 31}" for _ in range(3)), f"late{k}")
        exact = None
        while time.time() - restarted < a.deadline:
            hs = [health(p) for p in PORTS]
            if all(hs) and len({(h["seq"], h["digest"]) for h in hs}) == 1:
                exact = time.time() - restarted
                break
            time.sleep(0.2)
        for f in logs:
            f.flush()
        panics = [i + 1 for i in range(3)
                  if "panicked" in open(os.path.join(tmp, f"v{i + 1}.log"), errors="replace").read()]
        hs = [health(p) for p in PORTS]
        print(json.dumps({
            "words": a.words, "small_posts": n,
            "wiped_voter": wiped + 1,
            "exact_after_s": round(exact, 2) if exact is not None else None,
            "panicked_voters": panics,
            "seqs": [h and h["seq"] for h in hs],
            "statuses": [h and h["status"] for h in hs],
        }))
    finally:
        b.stop_all(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
