#!/usr/bin/env python3
"""The field trial of a full disk, reproducible: how many acknowledged writes a leader
loses when its data directory's disk fills up, and how it answers meanwhile.

    sudo scripts/trial_disk_full.py [--bin target/release/memdb] [--fsync everysec]

Mounts a 16 MiB tmpfs (needs root), starts a leader on it, has 8 clients post unique
words, fills the disk after 2 s, keeps posting for 3 s more, SIGTERMs the leader, frees
the space, puts a rescue snapshot in place if the leader saved one, restarts it and
counts the acknowledged words that are missing. Everything it starts is stopped and
unmounted at the end. Traffic goes to 127.0.0.1 only.
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

import benchlib as b


def start(bin_, data, fsync, rescue, log):
    return b.Node(["leader", "--data-dir", data, "--fsync", fsync, "--snapshot-interval",
                   "1h"] + (["--rescue-dir", rescue] if rescue else []),
                  log, binary=bin_, env={"RUST_BACKTRACE": "0"}, start_timeout=20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=b.default_bin())
    ap.add_argument("--fsync", default="everysec")
    ap.add_argument("--rescue", action="store_true", help="pass --rescue-dir (new builds)")
    a = ap.parse_args()
    mnt = tempfile.mkdtemp()
    rescue = tempfile.mkdtemp() if a.rescue else None
    subprocess.check_call(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt])
    log = open(os.path.join(tempfile.gettempdir(), "trial_disk_full.log"), "w")
    leader = None
    try:
        data = os.path.join(mnt, "data")
        leader = start(a.bin, data, a.fsync, rescue, log)
        acked, statuses, slowest_refusal = [], {}, 0.0
        lock, stop = threading.Lock(), threading.Event()

        def client(c):
            nonlocal slowest_refusal
            i = 0
            while not stop.is_set():
                w = f"t{c}x{i}"
                i += 1
                t = time.time()
                s = b.status(leader.url + "/post", f"text={w}".encode())
                took = time.time() - t
                with lock:
                    statuses[s] = statuses.get(s, 0) + 1
                    if s == 202:
                        acked.append(w)
                    elif s is not None:
                        slowest_refusal = max(slowest_refusal, took)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        time.sleep(2)
        filler = os.path.join(mnt, "filler")
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        time.sleep(3)
        health = b.health(leader.url, timeout=5)[0]
        stop.set()
        for t in threads:
            t.join()
        code = leader.stop(timeout=60)
        os.remove(filler)
        saved = os.listdir(rescue) if rescue else []
        if saved:
            shutil.copy(os.path.join(rescue, saved[0]), os.path.join(data, "snapshot.memdb"))
        leader = start(a.bin, data, a.fsync, None, log)
        table = b.get(leader.url + "/sync")
        lost = [w for w in acked if w not in table]
        print(json.dumps({
            "binary": a.bin, "fsync": a.fsync,
            "answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
            "health_while_full": health,
            "slowest_refusal_s": round(slowest_refusal, 3),
            "exit_code_on_sigterm": code, "rescue_snapshot": saved[0] if saved else None,
            "acknowledged": len(acked), "acknowledged_lost": len(lost),
        }, indent=1))
    finally:
        if leader:
            leader.stop(timeout=30)
        subprocess.call(["umount", "-l", mnt])
        if rescue:
            shutil.rmtree(rescue, ignore_errors=True)


if __name__ == "__main__":
    main()
