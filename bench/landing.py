"""What the merge queue adds: N agents merged into one branch, one at a time,
each merge checked by a `merge_check` of known length. The figure is the
time from the first agent done to the last one merged, as a multiple of the
sum of the merge checks' own times (1.0: the merges themselves cost nothing)."""
from __future__ import annotations

import json
import subprocess
from datetime import datetime

from .harness import doit, events, workspace


def _git(root, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def merge_queue_ratio(agents: int, check_seconds: float) -> tuple[float, float, float]:
    """(ratio, seconds first done to last merged, sum of the checks' seconds)."""
    tables = "".join(
        f"[agents.a{i:02d}]\ncommand = {json.dumps(f'echo {i} > a{i:02d}.txt')}\n"
        f'isolation = "worktree"\nmerge = true\n'
        f"merge_check = {json.dumps(f'sleep {check_seconds}')}\n\n" for i in range(agents))
    with workspace({"bench": tables}) as root:
        _git(root, "init", "-q", "-b", "main")
        _git(root, "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit",
             "-q", "--allow-empty", "-m", "start")
        doit(root, "wait")
        seen = events(root)
        queued = [_epoch(e["ts"]) for e in seen if e.get("event") == "finish"]
        merged = [_epoch(e["ts"]) for e in seen if e.get("event") == "merged"]
        if len(merged) != agents:
            raise RuntimeError(f"{len(merged)} of {agents} merged")
    total = max(merged) - min(queued)
    checks = agents * check_seconds
    return total / checks, total, checks
