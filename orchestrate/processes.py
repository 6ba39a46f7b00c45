"""Processes orchestrate did not necessarily start itself: is pid X, started
at T, still our agent? Which processes descend from it? Stop all of them.

Every agent leads its own process group, so a signal to the group reaches
whatever it started there; a descendant that moved to a session of its own
is found through the parent links recorded while it ran.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Iterable, Iterator

Tracked = list[int | float]   # [pid, create_time]: a pid alone can be reused


_BOOT_TIME: list[float] = []


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
    """True if `pid` is still the process that started at `started` (not a zombie)."""
    import psutil
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > 0.05:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


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


def signal_tree(pgid: int, tracked: list[Tracked], sig: int) -> None:
    """`sig` to the agent's process group and to each tracked descendant still
    the same process; ESRCH is fine (it is gone already)."""
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
    return any(int(fields[2]) == pgid and fields[0] != b"Z" for _, fields in _proc_stats())


def tree_alive(pgid: int, tracked: list[Tracked]) -> bool:
    return group_alive(pgid) or any(is_alive(int(p), t) for p, t in tracked)


def stop_tree(pgid: int, tracked: list[Tracked], grace: float,
              poll: float = 0.02) -> float:
    """SIGTERM, up to `grace` seconds for everything to go, then SIGKILL.
    Returns the seconds it took until no process of the agent was left."""
    began = time.monotonic()
    signal_tree(pgid, tracked, signal.SIGTERM)
    deadline = began + grace
    while time.monotonic() < deadline:
        if not tree_alive(pgid, tracked):
            return time.monotonic() - began
        time.sleep(poll)
    signal_tree(pgid, tracked, signal.SIGKILL)
    while tree_alive(pgid, tracked) and time.monotonic() < deadline + 5:
        time.sleep(poll)
    return time.monotonic() - began


def find_run_process(run_id: str) -> int | None:
    """The pid whose environment carries ORCHESTRATE_RUN_ID=run_id, if any."""
    needle = f"ORCHESTRATE_RUN_ID={run_id}".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                found = needle in handle.read().split(b"\0")
            # the wrapper leads its session; its children carry the same id
            if found and os.getsid(int(entry.name)) == int(entry.name):
                return int(entry.name)
        except OSError:
            continue
    return None
