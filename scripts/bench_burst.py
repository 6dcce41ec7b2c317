#!/usr/bin/env python3
"""A thousand connections opened at once, as the Go original's load tool does: each
posts one text. Reports, per round, the slowest request and the listen-queue overflows
the kernel counted (nstat), for each leader binary given, alternating them.

    scripts/bench_burst.py [--rounds 8] [--body-bytes N] BIN [BIN...]

With --body-bytes, each connection posts a body of that size instead (the field
trial's 2000 clients posting 1 MiB each), and the leader's peak RSS is reported too.

Starts each leader on 127.0.0.1 in a temp dir and stops it after its round. A dropped
SYN is retried by the client's kernel after a second, so an overflow shows as a
slowest request just over 1 s.
"""
import argparse
import asyncio
import resource
import subprocess
import tempfile
import time

import benchlib

PORT = None  # the leader's, set for each round

BODY = b"text=hello+burst"


async def one():
    t = time.time()
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    body = BODY
    w.write(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await w.drain()
    line = await r.readline()
    w.close()
    return time.time() - t, line[9:12]


async def burst(n):
    res = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    ok = [x for x in res if not isinstance(x, Exception) and x[1] == b"202"]
    refused = sum(1 for x in res if not isinstance(x, Exception) and x[1] == b"503")
    return len(ok), refused, max((x[0] for x in ok), default=0.0)


def overflows():
    out = subprocess.run(["nstat", "-z", "TcpExtListenOverflows"], capture_output=True,
                         text=True).stdout
    return sum(int(l.split()[1]) for l in out.splitlines() if "ListenOverflows" in l)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--body-bytes", type=int)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    global BODY, PORT
    if a.body_bytes:
        BODY = b"text=" + (b"word+" * (a.body_bytes // 5 + 1))[: a.body_bytes - 5]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = {b: [] for b in a.bins}
    for _ in range(a.rounds):
        for b in a.bins:
            with tempfile.TemporaryDirectory() as d:
                with benchlib.Node(["leader", "--data-dir", d + "/l"], binary=b) as leader:
                    PORT = leader.port
                    subprocess.run(["nstat", "-n"], check=True)
                    ok, refused, slowest = asyncio.run(burst(a.connections))
                    peak = benchlib.rss_mib(leader.pid, "VmHWM")
                    rows[b].append((ok, slowest, overflows(), refused, peak))
    print("| binary | rounds with overflows | overflows (sum) | rounds slowest > 1 s | "
          "median slowest | accepted (median) | refused 503 (median) | peak RSS (median) |")
    print("|---|---|---|---|---|---|---|---|")
    med = benchlib.median
    for b, r in rows.items():
        print(f"| {b} | {sum(1 for x in r if x[2])}/{len(r)} | {sum(x[2] for x in r)} | "
              f"{sum(1 for x in r if x[1] > 1)}/{len(r)} | {med([x[1] for x in r]):.3f} s | "
              f"{med([x[0] for x in r]):.0f} | {med([x[3] for x in r]):.0f} | "
              f"{med([x[4] for x in r]):.0f} MiB |")


if __name__ == "__main__":
    main()
