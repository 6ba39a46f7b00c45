"""Waiting on events, not polling: one epoll over inotify and the running
agents' pidfds.

An agent's wrapper records its exit status (inotify wakes us); a wrapper
killed with SIGKILL records nothing, and its pidfd turning readable wakes
us instead. So an idle advancer costs nothing per running agent: no /proc
scan and no liveness check every second (issue 10, point 9). Where pidfds
are missing (not Linux, old kernels, too few file descriptors) the caller
falls back to checking liveness every second.
"""
from __future__ import annotations

import os
import resource
import select

from ...core.records import RunState
from .processes import is_alive


def raise_fd_limit(needed: int) -> None:
    """One pidfd per running agent: lift the soft limit on open files (1,024
    by default) to what `needed` more descriptors take, within the hard limit.
    Only as far as needed: the agents launched afterwards inherit it."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = needed + 256
        if soft != resource.RLIM_INFINITY and want > soft:
            ceiling = want * 2 if hard == resource.RLIM_INFINITY else min(hard, want * 2)
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    except (ValueError, OSError):
        pass


class PidWatch:
    """pidfds of the running agents' wrappers, polled with other fds in one epoll."""

    def __init__(self):
        self.poll = select.epoll() if hasattr(select, "epoll") else None
        self.fds: dict[tuple[int, float], int] = {}   # (pid, create time) -> pidfd
        # asked to watch, but ended before its pidfd was opened: reported by the next wait
        self.gone: set[tuple[int, float]] = set()
        self.complete = self.poll is not None and hasattr(os, "pidfd_open")

    def add_fd(self, fd: int) -> None:
        """Another fd to wake on (inotify's)."""
        if self.poll is not None:
            self.poll.register(fd, select.EPOLLIN)

    def track(self, running: list[tuple[int, float]]) -> None:
        """Watch exactly these (pid, create time) processes; True in `complete`
        when each has a pidfd (else the caller must poll their liveness)."""
        if self.poll is None or not hasattr(os, "pidfd_open"):
            self.complete = False
            return
        wanted = set(running)
        raise_fd_limit(len(wanted))
        for key in [k for k in self.fds if k not in wanted]:
            fd = self.fds.pop(key)
            self.poll.unregister(fd)
            os.close(fd)
        complete = True
        for key in wanted - self.fds.keys():
            fd = self._open(*key)
            if fd is None:
                if is_alive(*key):
                    complete = False      # alive but no pidfd: poll its liveness
                else:
                    self.gone.add(key)    # ended already: the next wait says so
                continue
            self.fds[key] = fd
            self.poll.register(fd, select.EPOLLIN)
        self.complete = complete

    @staticmethod
    def _open(pid: int, started: float) -> int | None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if not is_alive(pid, started):   # the pid was reused before we opened it
            os.close(fd)
            return None
        return fd

    def track_runs(self, records) -> dict[tuple[int, float], str]:
        """Watch the wrappers of the running local runs among `records` (the
        others have no pid); returns each watched process's run id."""
        runs = {(r.pid, r.pid_create_time): r.run_id or "" for r in records
                if r is not None and r.state == RunState.RUNNING
                and r.pid and r.pid_create_time is not None}
        self.track(list(runs))
        return runs

    def wait(self, timeout: float) -> tuple[set[tuple[int, float]], set[int]]:
        """Block up to `timeout` seconds: (the processes that ended, the other
        registered fds that are readable). A process ends once: its pidfd is
        dropped at once, or it would wake every wait until the next pass."""
        if self.poll is None:
            return set(), set()
        by_fd = {fd: key for key, fd in self.fds.items()}
        gone, self.gone = self.gone, set()
        ready = {fd for fd, _ in self.poll.poll(0.0 if gone else max(0.0, timeout))}
        ended = {by_fd[fd] for fd in ready if fd in by_fd}
        for key in ended:
            fd = self.fds.pop(key)
            self.poll.unregister(fd)
            os.close(fd)
        return ended | gone, {fd for fd in ready if fd not in by_fd}

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self.poll is not None:
            self.poll.close()
