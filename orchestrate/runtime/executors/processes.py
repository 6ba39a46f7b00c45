"""Processes orchestrate did not necessarily start itself: is pid X, started
at T, still our agent? Which processes descend from it? Stop all of them.

Every agent leads its own process group, so a signal to the group reaches
whatever it started there; a descendant that moved to a session of its own
is found through the parent links recorded while it ran.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

Tracked = list[int | float]   # [pid, create_time]: a pid alone can be reused


_BOOT_TIME: list[float] = []
_HAS_PROC = os.path.isdir("/proc/self")


def _boot_time() -> float:
    if not _BOOT_TIME:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime"):
                    _BOOT_TIME.append(float(line.split()[1]))
                    break
    return _BOOT_TIME[0]


def create_time(pid: int) -> float | None:
    """Start time in epoch seconds, computed as psutil does on Linux (boot time
    plus /proc/<pid>/stat's starttime) so both agree, without importing psutil
    in the launcher: that import alone costs ~20 ms of the first launch."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def is_alive(pid: int | None, started: float | None) -> bool:
    """True if `pid` is still the process that started at `started` (not a zombie).

    A pid alone proves nothing (pids are reused): without a start time the
    answer is False, so an unproven record is settled, never trusted. One
    read of /proc/<pid>/stat (psutil per agent costs ten times that)."""
    if not pid or started is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except FileNotFoundError:
        return False if _HAS_PROC else _psutil_alive(pid, started)
    except OSError:
        return _psutil_alive(pid, started)
    began = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return abs(began - started) <= 0.05 and fields[0] not in (b"Z", b"X")


def _psutil_alive(pid: int, started: float) -> bool:
    import psutil
    try:
        process = psutil.Process(pid)
        if abs(process.create_time() - started) > 0.05:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def carries_run_id(pid: int, run_id: str | None) -> bool:
    """Does `pid`'s environment say it belongs to run `run_id`? An environment
    we may not read (another user's process) does not count against it."""
    if not run_id:
        return True
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
    except OSError:
        return True
    if not environ:           # a zombie, or a kernel thread: nothing to tell
        return True
    return f"ORCHESTRATE_RUN_ID={run_id}".encode() in environ.split(b"\0")


def is_our_run(pid: int | None, started: float | None, run_id: str | None) -> bool:
    """The proof needed before signalling a recorded agent: same pid, same
    start time, and our run id in its environment where readable."""
    return is_alive(pid, started) and carries_run_id(pid or 0, run_id)


def _proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, fields of /proc/pid/stat after the command name) for every process:
    fields[0] is the state, [1] the parent pid, [2] the process group."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                yield int(entry.name), handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue


def parent_map() -> dict[int, list[int]]:
    """ppid -> children, from one scan of /proc (cheaper than psutil per agent)."""
    children: dict[int, list[int]] = {}
    for pid, fields in _proc_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, ()))
    return found


def track(pids: Iterable[int]) -> list[Tracked]:
    tracked = []
    for pid in pids:
        started = create_time(pid)
        if started is not None:
            tracked.append([pid, started])
    return tracked


def merge(old: list[Tracked], new: list[Tracked]) -> list[Tracked]:
    """Descendants seen so far, still alive or not: a pid is matched with its start time."""
    known = {(p, round(t, 2)) for p, t in old}
    return old + [item for item in new if (item[0], round(item[1], 2)) not in known]


def group_is_ours(pgid: int, started: float | None, run_id: str | None) -> bool:
    """May the group `pgid` (the agent's wrapper's pid) be signalled? Yes if
    the wrapper is still the process we recorded; yes if no process has that
    pid any more (a group id is never reused while the group has members, so
    what is left in it is the agent's). No if the pid now belongs to another
    process, or the record cannot prove when the wrapper started."""
    if not pgid or started is None:
        return False
    if is_our_run(pgid, started, run_id):
        return True
    try:
        os.kill(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # our wrapper, exited but not yet reaped: same start time (a zombie keeps it)
    born = create_time(pgid)
    return _is_zombie(pgid) and born is not None and abs(born - started) <= 0.05


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def signal_tree(pgid: int, tracked: list[Tracked], sig: int, started: float | None = None,
                run_id: str | None = None) -> None:
    """`sig` to the agent's process group (when it is provably the agent's,
    see `group_is_ours`) and to each tracked descendant still the same
    process; ESRCH is fine (it is gone already)."""
    if group_is_ours(pgid, started, run_id):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid, started in tracked:
        if is_alive(int(pid), started):
            try:
                os.kill(int(pid), sig)
            except (ProcessLookupError, PermissionError):
                pass


def group_alive(pgid: int) -> bool:
    """Any non-zombie process still in process group `pgid`?"""
    return pgid in live_groups()


def live_groups() -> set[int]:
    """The process groups with a non-zombie member, from one scan of /proc."""
    return {int(fields[2]) for _, fields in _proc_stats() if fields[0] != b"Z"}


def run_processes(run_id: str) -> list[int]:
    """Every live process whose environment carries ORCHESTRATE_RUN_ID=run_id:
    the wrapper and whatever the agent started, even a daemon that left its
    session and its parent (one /proc scan: for stops and recovery only)."""
    needle = f"ORCHESTRATE_RUN_ID={run_id}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def find_run_process(run_id: str) -> int | None:
    """The wrapper of run `run_id` (it leads its session), if it is alive."""
    for pid in run_processes(run_id):
        try:
            if os.getsid(pid) == pid:
                return pid
        except OSError:
            continue
    return None
