#!/usr/bin/env bash
# The Python binding's tests (make test runs this): a virtual environment under the
# build directory (target/python-venv, made once and reused), maturin and pytest in it,
# the binding installed from bindings/python (a debug build; cargo reuses it), then pytest
# against the debug memdb binary.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python-venv
python=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import maturin, pytest' 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check "maturin>=1.7,<2" "pytest>=7"
fi
# A debug build: it shares the memdb library's build with the Rust tests (a release
# build would compile every dependency again; scripts/bench_readers.py installs one).
MATURIN_PEP517_ARGS="--profile dev" \
  "$venv/bin/pip" install -q --disable-pip-version-check ./bindings/python
MEMDB_BIN="${MEMDB_BIN:-$PWD/target/debug/memdb}" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider bindings/python/tests "$@"
