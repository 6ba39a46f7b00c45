"""Reasons that carry their cause: what a person needs to fix a failure.

"exit 127" says nothing to someone who never learnt shell exit codes; the
shell's own message at the end of the log does ("...: no-such-program: not
found"). "No such file or directory" does not say which file. A misspelt
key is best answered with the key meant. Pure text functions, except the
one that reads the end of a log.
"""
from __future__ import annotations

import difflib
import errno
import os
import re
from pathlib import Path
from typing import Iterable

# dash: "sh: 1: no-such-program: not found"; bash: "bash: line 1: x: command not found";
# busybox/zsh: "sh: x: not found" / "zsh: command not found: x"
_NOT_FOUND = (re.compile(rb":\s*([^\s:]+): (?:command )?not found\s*$"),
              re.compile(rb"command not found: (\S+)\s*$"))
_NOT_EXECUTABLE = re.compile(rb":\s*([^\s:]+): [Pp]ermission denied\s*$")
TAIL_BYTES = 4096


def log_tail(path: Path, size: int = TAIL_BYTES) -> bytes:
    """The last `size` bytes of a log (empty if it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read()
    except OSError:
        return b""


def last_line(path: Path) -> str:
    """The last non-empty line of a log, for a summary."""
    for line in reversed(log_tail(path).splitlines()):
        text = line.decode(errors="replace").strip()
        if text:
            return text if len(text) <= 160 else text[:157] + "..."
    return ""


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


def exit_reason(code: int, described: str, log: Path) -> str:
    """`described` ("exit 127"), or the cause the log names ("command not found: x")."""
    cause = exit_cause(code, log_tail(log))
    return f"{cause} ({described})" if cause else described


def start_failure(err: OSError, cwd: Path, root: Path) -> str:
    """`could not start: ...` naming the file that is missing or refused."""
    def shown(path: Path | str) -> str:
        try:
            return str(Path(path).relative_to(root)) or "."
        except ValueError:
            return str(path)
    if err.errno == errno.ENOENT:
        if not cwd.is_dir():
            return f"could not start: working directory {shown(cwd)} does not exist (key 'cwd')"
        if err.filename:
            return f"could not start: {err.filename} not found"
    if err.errno in (errno.EACCES, errno.EPERM) and err.filename:
        return f"could not start: {err.filename}: permission denied"
    detail = err.strerror or str(err)
    return f"could not start: {detail}" + (f": {err.filename}" if err.filename else "")


def suggestion(word: str, known: Iterable[str]) -> str:
    """"unknown key (did you mean 'timeout'?)", or a short pointer to the list."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return "unknown key (see the README's key table)"


def check_prompt_files(root: Path, pipeline, problems) -> None:
    """A preset agent's prompt_file must exist before anything launches,
    unless an agent of its pipeline declares it as an output (it is made)."""
    from fnmatch import fnmatch
    made = [pattern for agent in pipeline.agents for pattern in agent.outputs]
    for agent in pipeline.agents:
        name = agent.prompt_file
        if not name or (root / name).is_file():
            continue
        if any(fnmatch(name, pattern) or name == pattern for pattern in made):
            continue
        problems.add(pipeline.path, agent.name, "prompt_file",
                     f"'{name}' does not exist (expected a file, relative to the workspace)")
