"""Reasons that need the disk: the end of a log, the folder or file a
failed start names (the pure text rules are `core.causes`)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..core.causes import exit_cause

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
