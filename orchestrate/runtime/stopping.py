"""The one stop policy (`core.stopping`), driven to its end with the clock injected.

`drive` is trio's `deliver_cancel` for many things at once: given what was
sent SIGTERM and when, it asks ONE batched question per round (what of these
remains?), sends SIGKILL to what is due, and returns when nothing remains or
each stop's policy gives up, with what it could not confirm and why. It is
used where someone waits for a stop: `doit cancel` (a batch over an
executor's runs: one `squeue`/`scancel` per round), a check past its
`check_timeout` or whose run is stopped (`checkrun`), a hook past its limit
(`hookrun`). The advancer's passes follow the same policy for agents through
the transition machine (TERM when a stop begins, KILL at `kill_at`).

A batch is any object with `remaining(keys) -> set of keys` (raising
`CannotTell` when it cannot answer now: that is never taken as "gone") and
`send(keys, signal)`. Standard-library imports only: a hook's supervisor
loads this.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

from ..core.stopping import SIGKILL, SIGTERM, StopPolicy

POLL = 0.02   # seconds between rounds while waiting for what was signalled


class CannotTell(RuntimeError):
    """The batch cannot say now what remains (a controller down)."""


class Stop:
    """One thing being stopped: its key in the batch, when its SIGTERM was
    sent, its policy, and when it last had SIGKILL."""

    __slots__ = ("key", "began", "policy", "killed_at")

    def __init__(self, key: object, began: float, policy: StopPolicy,
                 killed_at: float | None = None):
        self.key = key
        self.began = began
        self.policy = policy
        self.killed_at = killed_at


def drive(batch, stops: Iterable[Stop], clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, until: float | None = None,
          poll: float = POLL) -> dict:
    """Wait for `stops` (each sent SIGTERM at its `began`) to end, sending
    SIGKILL as their policies say, at most until each one's policy gives up
    (and `until`, when given). Returns key -> why it is not confirmed gone:
    the batch could not tell (its error), or something of it outlived SIGKILL."""
    pending = list(stops)
    unconfirmed: dict = {}
    while pending:
        now = clock()
        said = None
        try:
            left = batch.remaining([s.key for s in pending])
        except CannotTell as err:
            left, said = {s.key for s in pending}, str(err) or "cannot tell"
        pending = [s for s in pending if s.key in left]
        kill = [s for s in pending if s.policy.signal_due(s.began, now, s.killed_at) == SIGKILL]
        if kill:
            batch.send([s.key for s in kill], SIGKILL)
            for stop in kill:
                stop.killed_at = now
        for stop in [s for s in pending if now >= _give_up_at(s, until)]:
            unconfirmed[stop.key] = said or "something of it outlived SIGKILL"
            pending.remove(stop)
        if pending:
            ahead = min(min(s.policy.next_due(s.began, s.killed_at), _give_up_at(s, until))
                        for s in pending) - clock()
            sleep(max(0.0, min(poll, ahead)))
    return unconfirmed


def _give_up_at(stop: Stop, until: float | None) -> float:
    end = stop.policy.give_up_at(stop.began)
    return end if until is None else min(end, until)


# -- one child process and its group (checks, hooks) ---------------------------
def killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ProcessGroup:
    """A batch of one: a child we started as the leader of its own group.
    It remains until the leader has exited (reaped here)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def remaining(self, keys: list) -> set:
        return set(keys) if self.process.poll() is None else set()

    def send(self, keys: list, sig: int) -> None:
        if keys:
            killpg(self.process.pid, sig)


def stop_group(process: subprocess.Popen, policy: StopPolicy,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> bool:
    """SIGTERM the child's group, SIGKILL it past the grace, then SIGKILL what
    the leader left in its group. False if the leader was still there when
    the policy gave up (an unkillable process: it is not waited on)."""
    group = ProcessGroup(process)
    group.send([process.pid], SIGTERM)
    unconfirmed = drive(group, [Stop(process.pid, clock(), policy)], clock, sleep)
    killpg(process.pid, signal.SIGKILL)
    return not unconfirmed
