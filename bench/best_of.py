"""Best of N: N trivial candidates cost the wall time of one (they run in
parallel), and the cancelled losers leave no process."""
from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

from .harness import doit, wait_for_advancers, workspace

CANDIDATES = 4
WORK = "sleep {seconds}; echo done > out.txt"


def _isolated(seconds: float, extra: str = "") -> str:
    return (f'[agents.a]\ncommand = "{WORK.format(seconds=seconds)}"\n'
            f'isolation = "worktree"\noutputs = ["out.txt"]\ncheck = "true"\n{extra}')


def _git_repo(root: Path) -> None:
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "b@example.invalid"],
                 ["config", "user.name", "bench"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def _wall(text: str) -> float:
    """Seconds from `doit wait`'s start until it returns with the agent done."""
    with workspace({"bench": text}) as root:
        _git_repo(root)
        started = time.perf_counter()
        _, _, proc = doit(root, "wait")
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"best_of bench: doit wait exited {proc.returncode}: "
                               f"{proc.stdout[-1000:]}")
        wait_for_advancers(root, timeout=60)
    return seconds


def best_of(sizes) -> list:
    """`best_of = 4` with a judge (every candidate runs to its end, then the
    judge) and without (the first to pass wins, the rest are cancelled),
    against one isolated agent doing the same work; in turns, so that the
    machine's load falls on each alike."""
    from .scenarios import Row
    seconds = round(2.0 * sizes.scale, 2)
    texts = {"one": _isolated(seconds),
             "judged": _isolated(seconds, f'best_of = {CANDIDATES}\njudge = "echo a@1"\n'),
             "first": _isolated(seconds, f"best_of = {CANDIDATES}\n")}
    times: dict[str, list[float]] = {label: [] for label in texts}
    for _ in range(sizes.runs):
        for label, text in texts.items():
            times[label].append(_wall(text))
    one = statistics.median(times["one"])
    rows = []
    for label, how in (("judged", "all run, then a judge"), ("first", "first to pass wins")):
        mine = statistics.median(times[label])
        rows.append(Row(f"best of: {CANDIDATES} candidates of {seconds:g} s ({how})",
                        "wall seconds, best_of / one agent", [mine / one], "<= 1.10",
                        note=f"best_of {mine:.2f} s, one agent {one:.2f} s",
                        extra={"best_of_s": mine, "one_s": one}))
    return rows
