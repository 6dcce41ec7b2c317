#!/usr/bin/env python3
"""Two builds side by side over HTTP: a leader with one network replica and one local
replica per build, loaded in turn with wrk (10-word POSTs to the leader, 1-word GETs
to each replica; the local replica's after the POSTs, so it maps their files),
alternating which build goes first each round; medians of the rounds. For a change
that must not cost throughput (a refactor, a new layer), compare the build before it
with the one after.

    scripts/bench_ab.py OLD_BIN NEW_BIN [--rounds 3] [--duration 5s]

Needs wrk. Uses free ports on 127.0.0.1 and temp dirs; stops what it starts.
"""
import argparse
import tempfile

import benchlib as b


def round_for(binary, duration):
    with tempfile.TemporaryDirectory() as d:
        with b.Node(["leader", "--data-dir", d + "/l"], binary=binary) as leader:
            with b.Node(["replica", "--leader", leader.url, "--heartbeat", "100ms"],
                        binary=binary) as replica:
                post = b.wrk(leader.url + "/post", duration, "post.lua").rps
                get = b.wrk(replica.url + "/wordcount?word=hello", duration).rps
                with b.Node(["local-replica", "--data-dir", d + "/l"],
                            binary=binary) as local:
                    local_get = b.wrk(local.url + "/wordcount?word=hello", duration).rps
                return post, get, local_get


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="5s")
    a = ap.parse_args()
    res = b.ab_rounds(a.rounds, a.old, a.new, lambda x: round_for(x, a.duration))
    print("| build | POST /post, 10 words (req/s) | GET /wordcount on a network replica "
          "(req/s) | GET /wordcount on a local replica (req/s) |")
    print("|---|---|---|---|")
    med = {}
    for x, rows in res.items():
        med[x] = tuple(b.median(r[i] for r in rows) for i in range(3))
        print(f"| {x} | " + " | ".join(f"{m:,.0f}" for m in med[x]) + " |")
    print("| new / old | " + " | ".join(
        f"{n / o:.2f}×" for n, o in zip(med[a.new], med[a.old])) + " |")


if __name__ == "__main__":
    main()
