"""The one stop policy: TERM, a grace, KILL, bounded (pure).

Modelled on trio's `deliver_cancel`: whoever stops something (an agent's
run, a check, a hook) sends SIGTERM when the stop begins, SIGKILL once the
grace is over and again every `rekill` seconds while anything of it remains,
and stops waiting `settle` seconds after the KILL was due. What is not
confirmed gone by then is reported, never waited on for ever (a Slurm
controller that does not answer cannot hang `doit cancel`).

The transition machine (`transitions`) follows it pass by pass for agents
(TERM when the stop begins, KILL at `kill_at`); `runtime.stopping` drives it
to its end where a caller waits (`doit cancel`, a check, a hook). Times are
arguments: nothing here reads a clock. No imports, so that a hook's
supervisor (which loads only the lightest modules) can use it.
"""
from __future__ import annotations

# The two signals a stop sends, as numbers (Linux's): the core names them
# without importing `signal`, and the executors send them as they are.
SIGTERM, SIGKILL = 15, 9
SETTLE = 10.0   # seconds past the KILL a waiter waits for confirmation, then reports
REKILL = 1.0    # seconds between SIGKILLs to what remains


class StopPolicy:
    """TERM at `began`, KILL at `began + grace` and every `rekill` seconds
    after while something remains, give up at `began + grace + settle`."""

    __slots__ = ("grace", "settle", "rekill")

    def __init__(self, grace: float, settle: float = SETTLE, rekill: float = REKILL) -> None:
        self.grace = max(0.0, grace)
        self.settle = settle
        self.rekill = rekill

    def kill_at(self, began: float) -> float:
        return began + self.grace

    def give_up_at(self, began: float) -> float:
        """When a waiter stops waiting and reports what it could not confirm."""
        return began + self.grace + self.settle

    def signal_due(self, began: float, now: float, killed_at: float | None) -> int | None:
        """The signal to send now to what remains of a stop begun at `began`
        (whose SIGTERM was sent then), `killed_at` the last SIGKILL's time."""
        if now < self.kill_at(began):
            return None
        if killed_at is None or now - killed_at >= self.rekill:
            return SIGKILL
        return None

    def next_due(self, began: float, killed_at: float | None) -> float:
        """When `signal_due` may next say something, or the waiting ends."""
        due = self.kill_at(began) if killed_at is None else killed_at + self.rekill
        return min(due, self.give_up_at(began))

    def __repr__(self) -> str:
        return f"StopPolicy(grace={self.grace:g}, settle={self.settle:g}, rekill={self.rekill:g})"
