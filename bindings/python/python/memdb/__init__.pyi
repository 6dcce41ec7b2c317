import os
from types import TracebackType
from typing import List, Optional, Sequence, Tuple, Type, Union

class MemdbError(Exception):
    """Base of every memdb error."""

class NotFoundError(MemdbError):
    """The data directory does not exist."""

class NotMemdbError(MemdbError):
    """The path is not a memdb data directory."""

class CorruptError(MemdbError):
    """The published files failed validation (the last good state keeps answering)."""

class NotReadyError(MemdbError):
    """Nothing is published in the directory yet."""

class WaitTimeoutError(MemdbError):
    """wait_for timed out."""

class WordError(MemdbError):
    """The text is not exactly one word under the leader's tokenizer."""

class Reader:
    """A reader of a memdb leader's data directory, mapped in this process."""

    def __init__(self, path: Union[str, os.PathLike[str]], follow: bool = True) -> None: ...
    def count(self, word: str) -> int: ...
    def count_raw(self, word: str) -> int: ...
    def counts(self, words: Sequence[str]) -> List[int]: ...
    def top(self, n: int = 10, prefix: str = "") -> List[Tuple[str, int]]: ...
    @property
    def seq(self) -> int: ...
    @property
    def incarnation(self) -> Optional[str]: ...
    def wait_for(self, seq: int, timeout: float = 5.0) -> int: ...
    def refresh(self) -> bool: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Reader": ...
    def __exit__(
        self,
        t: Optional[Type[BaseException]],
        v: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool: ...
