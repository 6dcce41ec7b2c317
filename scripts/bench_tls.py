#!/usr/bin/env python3
"""What TLS costs, side by side: a leader with one network replica over plain HTTP and
the same over HTTPS (mutual TLS between the two nodes, certificates from
`memdb certs`), loaded in turn with wrk in each round; medians of the rounds.

Measured per mode: 1-word GETs to the replica over kept-alive connections, the same
with a new connection per request (`Connection: close`: a TCP and, over TLS, a
handshake each time), and 4 KiB POSTs to the leader (words/s; every batch is also
pushed to the replica, over TLS in the TLS mode).

    scripts/bench_tls.py [--bin target/release/memdb] [--rounds 3] [--duration 5s]

Needs wrk (built with TLS, as Debian's is). Uses free ports on 127.0.0.1 and temp
dirs; stops what it starts.
"""
import argparse
import ssl
import subprocess
import tempfile

import benchlib as b


def run_mode(binary, certs, tls, duration):
    scheme = "https" if tls else "http"
    flags = []
    if tls:
        flags = ["--tls-cert", f"{certs}/node.pem", "--tls-key", f"{certs}/node-key.pem",
                 "--tls-ca", f"{certs}/ca.pem", "--tls-client-ca", f"{certs}/ca.pem"]
    context = ssl.create_default_context(cafile=f"{certs}/ca.pem") if tls else None
    with tempfile.TemporaryDirectory() as d:
        with b.Node(["leader", "--data-dir", d] + flags, binary=binary, scheme=scheme,
                    context=context) as leader:
            with b.Node(["replica", "--leader", leader.url, "--heartbeat", "100ms"] + flags,
                        binary=binary, scheme=scheme, context=context) as replica:
                url = replica.url + "/wordcount?word=hello"
                get = b.wrk(url, duration).rps
                get_new = b.wrk(url, duration, headers=["Connection: close"]).rps
                post = b.wrk(leader.url + "/post", duration, "post4k.lua")
                return {"get": get, "get_new_conn": get_new,
                        "ingest_words": post.rps * post.words_per_request}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=b.default_bin())
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
                m = run_mode(a.bin, certs, mode == "tls", a.duration)
                results[mode].append(m)
                print(f"round {r + 1} {mode:5}: GET {m['get']:.0f}/s, GET new connection "
                      f"{m['get_new_conn']:.0f}/s, 4 KiB ingest {m['ingest_words']:.0f} words/s",
                      flush=True)
    print(f"\nmedians of {a.rounds} rounds ({a.duration} each):")
    print(f"{'':34} {'plain':>12} {'TLS':>12} {'TLS/plain':>10}")
    for key, label in [("get", "replica GET (kept alive) req/s"),
                       ("get_new_conn", "replica GET (new conn.) req/s"),
                       ("ingest_words", "4 KiB ingest words/s")]:
        p = b.median(m[key] for m in results["plain"])
        t = b.median(m[key] for m in results["tls"])
        print(f"{label:34} {p:12.0f} {t:12.0f} {t / p:10.2f}")


if __name__ == "__main__":
    main()
