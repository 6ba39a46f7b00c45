"""The one reporter: everything a command prints goes through it.

Answers (lines a script may read) go to the command's output stream;
notes (warnings, "interrupted", a read-only state folder) go to stderr, so
`doit status --json | jq` and `doit wait | tee` see only answers. It is a
text stream too (`write`, `flush`, `isatty`), so a log's bytes, rich's live
view and doit's own writer can share it.
"""
from __future__ import annotations

import sys
from typing import IO, Iterable


class Reporter:
    def __init__(self, out: IO[str], err: IO[str] | None = None):
        self.out = out
        self.err = err if err is not None else sys.stderr

    def line(self, text: str = "") -> None:
        """One line of the answer."""
        self.out.write(text + "\n")

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.out.write(text + "\n")

    def note(self, text: str) -> None:
        """A warning or a remark for the person, never part of the answer."""
        self.err.write(text if text.endswith("\n") or not text else text + "\n")
        self.err.flush()

    def write(self, text: str) -> int:
        """Text as it is (a log's content, JSON, a picture's source)."""
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()

    def isatty(self) -> bool:
        return self.terminal

    @property
    def terminal(self) -> bool:
        try:
            return self.out.isatty()
        except (AttributeError, ValueError):
            return False


def reporter(out: IO[str] | Reporter) -> Reporter:
    """`out` as a Reporter (library callers, such as the MCP tools, pass a stream)."""
    return out if isinstance(out, Reporter) else Reporter(out)
