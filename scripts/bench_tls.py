#!/usr/bin/env python3
"""What TLS costs, side by side: a leader with one network replica over plain HTTP and
the same over HTTPS (mutual TLS between the two nodes, certificates from
`memdb certs`), loaded in turn with wrk in each round; medians of the rounds.

Measured per mode: 1-word GETs to the replica over kept-alive connections, the same
with a new connection per request (`Connection: close`: a TCP and, over TLS, a
handshake each time), and 4 KiB POSTs to the leader (words/s; every batch is also
pushed to the replica, over TLS in the TLS mode).

    scripts/bench_tls.py [--bin target/release/memdb] [--rounds 3] [--duration 5s]

Needs wrk (built with TLS, as Debian's is). Uses ports 18700-18701 and 18710-18711 on
127.0.0.1 and temp dirs; stops what it starts.
"""
import argparse
import os
import re
import ssl
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait(url, context=None):
    for _ in range(400):
        try:
            urllib.request.urlopen(url, timeout=1, context=context)
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} never became healthy")


def wrk(url, duration, script=None, close=False):
    cmd = ["wrk", "-t1", "-c32", f"-d{duration}", "--latency"]
    if script:
        cmd += ["-s", os.path.join(ROOT, "scripts/wrk", script)]
    if close:
        cmd += ["-H", "Connection: close"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True)
    text = out.stdout
    if "Non-2xx" in text:
        raise SystemExit(f"{url}: error responses\n{text}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    wpr = re.search(r"words_per_request=(\d+)", out.stderr)
    return rps, int(wpr.group(1)) if wpr else None


def run_mode(binary, base, certs, tls, duration):
    scheme = "https" if tls else "http"
    flags = []
    if tls:
        flags = ["--tls-cert", f"{certs}/node.pem", "--tls-key", f"{certs}/node-key.pem",
                 "--tls-ca", f"{certs}/ca.pem", "--tls-client-ca", f"{certs}/ca.pem"]
    lp, rp = base, base + 1
    leader_url, replica_url = f"{scheme}://127.0.0.1:{lp}", f"{scheme}://127.0.0.1:{rp}"
    context = ssl.create_default_context(cafile=f"{certs}/ca.pem") if tls else None
    with tempfile.TemporaryDirectory() as d:
        leader = subprocess.Popen([binary, "leader", "--port", str(lp), "--data-dir", d] + flags,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        replica = subprocess.Popen([binary, "replica", "--port", str(rp), "--leader", leader_url,
                                    "--heartbeat", "100ms"] + flags,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait(leader_url + "/health", context)
            wait(replica_url + "/health", context)
            get, _ = wrk(replica_url + "/wordcount?word=hello", duration)
            get_new, _ = wrk(replica_url + "/wordcount?word=hello", duration, close=True)
            post, wpr = wrk(leader_url + "/post", duration, "post4k.lua")
            return {"get": get, "get_new_conn": get_new, "ingest_words": post * wpr}
        finally:
            for p in (replica, leader):
                p.terminate()
                p.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/memdb"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as certs:
        subprocess.run([a.bin, "certs", "--dir", certs, "--host", "127.0.0.1"], check=True,
                       stdout=subprocess.DEVNULL)
        results = {"plain": [], "tls": []}
        for r in range(a.rounds):
            # Alternate which goes first, so drift on a shared machine hits both.
            order = ["plain", "tls"] if r % 2 == 0 else ["tls", "plain"]
            for mode in order:
                base = 18700 if mode == "plain" else 18710
                m = run_mode(a.bin, base, certs, mode == "tls", a.duration)
                results[mode].append(m)
                print(f"round {r + 1} {mode:5}: GET {m['get']:.0f}/s, GET new connection "
                      f"{m['get_new_conn']:.0f}/s, 4 KiB ingest {m['ingest_words']:.0f} words/s",
                      flush=True)
    print(f"\nmedians of {a.rounds} rounds ({a.duration} each):")
    print(f"{'':34} {'plain':>12} {'TLS':>12} {'TLS/plain':>10}")
    for key, label in [("get", "replica GET (kept alive) req/s"),
                       ("get_new_conn", "replica GET (new conn.) req/s"),
                       ("ingest_words", "4 KiB ingest words/s")]:
        p = statistics.median(m[key] for m in results["plain"])
        t = statistics.median(m[key] for m in results["tls"])
        print(f"{label:34} {p:12.0f} {t:12.0f} {t / p:10.2f}")


if __name__ == "__main__":
    main()
