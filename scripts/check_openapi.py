#!/usr/bin/env python3
"""Every role's /openapi.json against a schema-driven tester: schemathesis generates
requests the document calls valid (`--mode positive`) and fails any answered with a
status other than 2xx or the state-dependent ones the document allows (401, 403, 404,
409, 412, 413, 416, 422, 429, 503, 504, 507). One exception: POST /update may answer 400
to a partial set of its three sequencing headers, which go together (OpenAPI cannot say
so of parameters; the document states it as `x-memdb-together`).

    scripts/check_openapi.py [--examples 60] [--seed 1]

Starts, on free ports and temp dirs: a leader, a network replica, a local replica and a
one-voter raft group (all debug builds, target/debug/memdb unless $MEMDB_BIN); installs
schemathesis into target/check-venv the first time.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import benchlib as b

ROOT = b.ROOT
VENV = os.path.join(ROOT, "target", "check-venv")
ALLOWED = ["2XX", "401", "403", "404", "409", "412", "413", "416", "422", "429", "503",
           "504", "507"]


def schemathesis():
    exe = os.path.join(VENV, "bin", "schemathesis")
    if not os.path.exists(exe):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q",
                        "schemathesis>=4,<5"], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    exe = schemathesis()
    binary = os.environ.get("MEMDB_BIN", os.path.join(ROOT, "target", "debug", "memdb"))
    tmp = tempfile.mkdtemp(prefix="memdb-openapi-")
    config = os.path.join(tmp, "schemathesis.toml")
    with open(config, "w") as f:
        f.write("[checks.positive_data_acceptance]\nexpected-statuses = [%s]\n"
                % ", ".join(f'"{s}"' for s in ALLOWED))
        # The one rule OpenAPI cannot state of parameters: /update's three sequencing
        # headers go together (the document says so as x-memdb-together, and
        # tests/openapi.rs checks it); a partial set is a 400.
        f.write('\n[[operations]]\ninclude-path = "/update"\ninclude-method = "POST"\n'
                "[operations.checks.positive_data_acceptance]\nexpected-statuses = [%s]\n"
                % ", ".join(f'"{s}"' for s in ALLOWED + ["400"]))
    nodes, failed = [], []
    try:
        data = os.path.join(tmp, "leader")
        leader = b.Node(["leader", "--data-dir", data], binary=binary)
        nodes.append(leader)
        b.post(leader.url + "/post", "text=hello world hello",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
        replica = b.Node(["replica", "--leader", leader.url], binary=binary)
        local = b.Node(["local-replica", "--data-dir", data], binary=binary)
        nodes += [replica, local]
        port = b.free_port()
        voter = b.Node(["leader", "--data-dir", os.path.join(tmp, "voter"), "--port", str(port),
                        "--node-id", "1", "--peers", f"1=http://127.0.0.1:{port}"],
                       binary=binary, wait=False)
        nodes.append(voter)
        voter.wait(lambda c, h: (h.get("raft") or {}).get("state") == "leader", "an election")
        for role, node in [("leader", leader), ("replica", replica), ("local replica", local),
                           ("voter", voter)]:
            print(f"--- {role} ({node.url})", flush=True)
            r = subprocess.run([exe, "--config-file", config, "run", node.url + "/openapi.json",
                                "--mode", "positive", "-c", "positive_data_acceptance",
                                "-n", str(args.examples), "--seed", str(args.seed),
                                "--generation-allow-x00", "false", "--no-color",
                                "--request-timeout", "20"],
                               cwd=tmp)  # its cache (.schemathesis/) goes with the temp dir
            if r.returncode != 0:
                failed.append(role)
    finally:
        b.stop_all(nodes)
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        sys.exit(f"requests the document calls valid were refused on: {', '.join(failed)}")
    print("every role: no valid request refused")


if __name__ == "__main__":
    main()
