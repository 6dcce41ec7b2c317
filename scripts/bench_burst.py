#!/usr/bin/env python3
"""A thousand connections opened at once, as the Go original's load tool does: each
posts one text. Reports, per round, the slowest request and the listen-queue overflows
the kernel counted (nstat), for each leader binary given, alternating them.

    scripts/bench_burst.py [--rounds 8] BIN [BIN...]

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
import urllib.request

PORT = 18557


async def one():
    t = time.time()
    r, w = await asyncio.open_connection("127.0.0.1", PORT)
    body = b"text=hello+burst"
    w.write(b"POST /post HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    await w.drain()
    line = await r.readline()
    w.close()
    return time.time() - t, line.startswith(b"HTTP/1.1 202")


async def burst(n):
    res = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    ok = [x for x in res if not isinstance(x, Exception) and x[1]]
    return len(ok), max((x[0] for x in ok), default=0.0)


def overflows():
    out = subprocess.run(["nstat", "-z", "TcpExtListenOverflows"], capture_output=True,
                         text=True).stdout
    return sum(int(l.split()[1]) for l in out.splitlines() if "ListenOverflows" in l)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = {b: [] for b in a.bins}
    for _ in range(a.rounds):
        for b in a.bins:
            with tempfile.TemporaryDirectory() as d:
                p = subprocess.Popen([b, "leader", "--port", str(PORT), "--data-dir", d + "/l"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    for _ in range(100):
                        try:
                            urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=1)
                            break
                        except OSError:
                            time.sleep(0.05)
                    subprocess.run(["nstat", "-n"], check=True)
                    ok, slowest = asyncio.run(burst(a.connections))
                    rows[b].append((ok, slowest, overflows()))
                finally:
                    p.terminate()
                    p.wait(timeout=30)
    print("| binary | rounds with overflows | overflows (sum) | rounds slowest > 1 s | median slowest | all answered |")
    print("|---|---|---|---|---|---|")
    for b, r in rows.items():
        s = sorted(x[1] for x in r)
        print(f"| {b} | {sum(1 for x in r if x[2])}/{len(r)} | {sum(x[2] for x in r)} | "
              f"{sum(1 for x in r if x[1] > 1)}/{len(r)} | {s[len(s)//2]:.3f} s | "
              f"{all(x[0] == a.connections for x in r)} |")


if __name__ == "__main__":
    main()
