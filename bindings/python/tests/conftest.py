"""A real memdb leader on an ephemeral port and a temp dir, for the reader's tests.

The binary is $MEMDB_BIN (make test sets it), else target/debug/memdb.
"""

import json
import os
import pathlib
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
DEADLINE = 30.0


def memdb_bin() -> str:
    path = os.environ.get("MEMDB_BIN") or str(ROOT / "target" / "debug" / "memdb")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no memdb binary at {path}: build it (cargo build) or set MEMDB_BIN")
    return path


class Leader:
    def __init__(self, data_dir: pathlib.Path, *extra: str):
        self.data_dir = data_dir
        addr_file = data_dir.parent / "addr"
        self.proc = subprocess.Popen(
            [memdb_bin(), "leader", "--port", "0", "--data-dir", str(data_dir),
             "--addr-file", str(addr_file), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + DEADLINE
        while not addr_file.exists() or not addr_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("the leader did not start")
            time.sleep(0.01)
        self.url = "http://" + addr_file.read_text().strip()

    def post(self, text: str) -> None:
        body = urllib.parse.urlencode({"text": text}).encode()
        with urllib.request.urlopen(self.url + "/post", body, timeout=DEADLINE) as r:
            assert r.status == 202

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=DEADLINE) as r:
            return json.load(r)

    def seq(self) -> int:
        return self.get("/health")["seq"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def leader(tmp_path):
    data = tmp_path / "data"
    node = Leader(data, "--snapshot-interval", "20ms", "--compact-after", "256")
    yield node
    node.stop()
