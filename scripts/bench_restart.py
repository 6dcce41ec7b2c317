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

Run through scripts/bench-restart.sh.
"""

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

BIN = os.environ["MEMDB_BIN"]
WORDS = int(os.environ.get("WORDS", "1000000"))
REPLICAS = int(os.environ.get("REPLICAS", "2"))
RUNS = int(os.environ.get("RUNS", "3"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def post(url, body):
    req = urllib.request.Request(url, data=body.encode(), headers={"content-type": "text/plain"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def wait_health(url, deadline=30.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url + "/health", timeout=1).read()
            return
        except Exception:
            time.sleep(0.005)
    raise SystemExit(f"{url} did not become healthy")


def start(args, log):
    return subprocess.Popen([BIN, *args], stdout=log, stderr=subprocess.STDOUT)


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)


def one_run(mode, tmp):
    data = os.path.join(tmp, "leader")
    lport = free_port()
    leader_url = f"http://127.0.0.1:{lport}"
    log = open(os.path.join(tmp, f"{mode}.log"), "ab")
    procs = []
    try:
        # Replicas named with --replica: the restarted leader contacts them at once
        # (rather than when their retry backoff next reaches it).
        replicas = [f"http://127.0.0.1:{free_port()}" for _ in range(REPLICAS)]
        lead_args = ["leader", "--port", str(lport), "--data-dir", data]
        for r in replicas:
            lead_args += ["--replica", r]
        leader = start(lead_args, log)
        wait_health(leader_url)
        for r in replicas:
            port = r.rsplit(":", 1)[1]
            procs.append(start(["replica", "--port", port, "--leader", leader_url], log))
        chunk = 80_000
        for s in range(0, WORDS, chunk):
            post(leader_url + "/post", " ".join("w%07d" % i for i in range(s, min(WORDS, s + chunk))))
        seq = get(leader_url + "/health")["seq"]
        for r in replicas:
            get(f"{r}/wordcount?word=w0000001&min_seq={seq}")
        stop(leader)
        if mode == "full sync":
            os.remove(os.path.join(data, "history.json"))
        leader = start(lead_args, log)
        wait_health(leader_url)
        t0 = time.monotonic()
        after = post(leader_url + "/post", "after restart")["seq"]
        for r in replicas:
            while True:
                try:
                    q = urllib.parse.urlencode({"word": "after", "min_seq": after})
                    if get(f"{r}/wordcount?{q}", timeout=10).get("after") == 1:
                        break
                except urllib.error.HTTPError:
                    pass
        elapsed = time.monotonic() - t0
        syncs = sum(get(r + "/health")["syncs"] - 1 for r in replicas)
        return elapsed, syncs
    finally:
        for p in procs:
            stop(p)
        if "leader" in locals():
            stop(leader)
        log.close()


def main():
    print(f"{WORDS} distinct words, {REPLICAS} network replicas, median of {RUNS} runs")
    print(f"{'after restart':<14} {'replicas current after':>24} {'full syncs':>11}")
    results = {}
    for mode in ["continue", "full sync"]:
        times, syncs = [], []
        for _ in range(RUNS):
            with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
                t, s = one_run(mode, tmp)
            times.append(t)
            syncs.append(s)
        results[mode] = statistics.median(times)
        print(f"{mode:<14} {results[mode] * 1e3:>21.1f} ms {statistics.median(syncs):>11.0f}")
    print(f"ratio full sync / continue: {results['full sync'] / results['continue']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
