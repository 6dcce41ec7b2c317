"""The Python example in docs/readers.md runs as written against a live leader."""

import os
import subprocess
import sys

from conftest import ROOT


def python_block() -> str:
    doc = (ROOT / "docs" / "readers.md").read_text()
    return doc.split("```python\n")[1].split("\n```")[0] + "\n"


def test_the_documented_example_runs(leader):
    leader.post("Hello hello world")
    seq = leader.seq()
    env = dict(os.environ, MEMDB_DATA_DIR=str(leader.data_dir))
    # The leader publishes within its 20 ms interval; the example waits for seq 1
    # only, so wait for the post's seq first.
    import memdb
    memdb.Reader(leader.data_dir).wait_for(seq, 20.0)
    out = subprocess.run([sys.executable, "-c", python_block()], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "hello 2\ncounts [2, 1]\ntop hello 2\ntop world 1\n" f"seq {seq}\n"
    )
