"""Reasons that carry their cause: what a person needs to fix a failure.

"exit 127" says nothing to someone who never learnt shell exit codes; the
shell's own message at the end of the log does ("...: no-such-program: not
found"). "No such file or directory" does not say which file. A misspelt
key is best answered with the key meant. Pure text functions; reading a
log's end and looking at the disk is `runtime.causes`.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

# dash: "sh: 1: no-such-program: not found"; bash: "bash: line 1: x: command not found";
# busybox/zsh: "sh: x: not found" / "zsh: command not found: x"
_NOT_FOUND = (re.compile(rb":\s*([^\s:]+): (?:command )?not found\s*$"),
              re.compile(rb"command not found: (\S+)\s*$"))
_NOT_EXECUTABLE = re.compile(rb":\s*([^\s:]+): [Pp]ermission denied\s*$")
def exit_cause(code: int, tail: bytes) -> str | None:
    """What the shell said about exit 127 (not found) or 126 (not executable)."""
    if code not in (126, 127):
        return None
    for line in reversed(tail.splitlines()[-20:]):
        if code == 127:
            for pattern in _NOT_FOUND:
                found = pattern.search(line)
                if found:
                    return f"command not found: {found.group(1).decode(errors='replace')}"
        else:
            found = _NOT_EXECUTABLE.search(line)
            if found:
                return f"not executable: {found.group(1).decode(errors='replace')}"
    return None


def suggestion(word: str, known: Iterable[str]) -> str:
    """"unknown key (did you mean 'timeout'?)", or a short pointer to the list."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (see the README's key table)"
