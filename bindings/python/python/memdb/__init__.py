"""memdb's embedded reader: a leader's word counts, mapped in this process.

    import memdb
    reader = memdb.Reader("/var/lib/memdb")
    reader.count("hello")

See docs/readers.md in the memdb repository.
"""

from memdb._memdb import (
    CorruptError,
    MemdbError,
    NotFoundError,
    NotMemdbError,
    NotReadyError,
    Reader,
    WaitTimeoutError,
    WordError,
)

__all__ = [
    "CorruptError",
    "MemdbError",
    "NotFoundError",
    "NotMemdbError",
    "NotReadyError",
    "Reader",
    "WaitTimeoutError",
    "WordError",
]
