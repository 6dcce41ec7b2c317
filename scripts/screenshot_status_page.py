#!/usr/bin/env python3
"""Takes docs/status-page.png: a release leader with two network replicas and two local
replicas, under a steady load for a while (the page opens with the node's own history),
photographed by headless Chromium.

    scripts/screenshot_status_page.py [--seconds 60] [--out docs/status-page.png]

Free ports and a temp dir; everything it starts is stopped.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

import benchlib as b

ROOT = b.ROOT


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "status-page.png"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "memdb"], cwd=ROOT,
                   check=True)
    binary = os.path.join(ROOT, "target", "release", "memdb")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("needs chromium (apt-get install chromium)")
    tmp = tempfile.mkdtemp(prefix="memdb-screenshot-")
    nodes = []
    try:
        data = os.path.join(tmp, "data")
        leader = b.Node(["leader", "--data-dir", data, "--snapshot-interval", "500ms"],
                        binary=binary)
        nodes.append(leader)
        nodes += [b.Node(["replica", "--leader", leader.url], binary=binary) for _ in range(2)]
        nodes += [b.Node(["local-replica", "--data-dir", data], binary=binary)
                  for _ in range(2)]
        rng = random.Random(3)
        vocabulary = [f"word{i}" for i in range(5000)]
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            # A load that changes: a few hundred to a few thousand words a second.
            n = int(200 + 150 * (1 + ((time.monotonic() % 20) - 10) / 10) * 5)
            text = " ".join(rng.choices(vocabulary[: 50 + int(time.monotonic()) % 4000], k=n))
            b.post(leader.url + "/post", "text=" + text,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
            time.sleep(0.1)
        profile = os.path.join(tmp, "chromium")
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars",
                        f"--user-data-dir={profile}", "--window-size=1400,1400",
                        "--virtual-time-budget=4000", f"--screenshot={args.out}",
                        leader.url + "/"], check=True, capture_output=True)
        print(f"wrote {args.out}")
    finally:
        b.stop_all(nodes)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
