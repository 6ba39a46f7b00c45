"""The merge runner: one merge of an agent's branch, in a process of its own.

Started detached by the merge queue (`landing`), so a pass never waits for
git or for the merge check. In the worktree orchestrate keeps for the target
branch, checked out detached at the target's commit, it merges the agent's
commit, runs the merge check on the merged tree, and records the outcome in
`runs/<run id>.merged` (fsynced, then renamed). It never moves a branch: the
queue advances `merge_into` from that record, under the scheduling lock, with
a compare-and-swap. So a kill -9 here at any moment leaves the target as it
was, and the merge is simply redone.

Its stdout and stderr are the agent's `<agent>.merge.log`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..core.checks import FEEDBACK_LINES, Verdict, command_text, last_line
from ..core.landing import CHECK_FAILED, CONFLICT, MERGED
from ..core.stopping import StopPolicy
from .state import write_atomic
from .stopping import killpg, stop_group

IDENTITY = {"GIT_AUTHOR_NAME": "orchestrate", "GIT_AUTHOR_EMAIL": "orchestrate@localhost",
            "GIT_COMMITTER_NAME": "orchestrate", "GIT_COMMITTER_EMAIL": "orchestrate@localhost"}


class MergeError(RuntimeError):
    """Git failed for a reason other than a conflict."""


def git(where: Path, *args: str, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise MergeError(f"git {args[0]}: {last_line((proc.stderr or proc.stdout).splitlines())}")
    return proc


def registered(root: Path, path: Path) -> bool:
    listing = git(root, "worktree", "list", "--porcelain").stdout
    return f"worktree {path.resolve()}" in listing.splitlines()


def prepare(root: Path, tree: Path, start: str) -> None:
    """The target's worktree, clean and detached at `start`, whatever an
    interrupted merge left there (ignored files, caches, stay)."""
    if not (tree / ".git").exists() or not registered(root, tree):
        shutil.rmtree(tree, ignore_errors=True)
        git(root, "worktree", "prune")
        tree.parent.mkdir(parents=True, exist_ok=True)
        git(root, "worktree", "add", "--detach", str(tree), start)
        return
    git(tree, "merge", "--abort", check=False)
    git(tree, "reset", "-q", "--hard")
    git(tree, "clean", "-fdq")
    git(tree, "checkout", "-q", "--detach", start)


def identity(tree: Path) -> dict[str, str]:
    """The environment for a merge commit: orchestrate's name when git has none."""
    env = dict(os.environ)
    if git(tree, "var", "GIT_COMMITTER_IDENT", check=False).returncode != 0:
        env.update(IDENTITY)
    return env


def merge(tree: Path, head: str, message: str) -> dict[str, Any] | None:
    """Merge `head` into the detached tree; the conflict's outcome, or None."""
    proc = git(tree, "merge", "--no-ff", "--no-edit", "-m", message, head, check=False,
               env=identity(tree))
    print(proc.stdout + proc.stderr, end="", flush=True)
    if proc.returncode == 0:
        return None
    files = git(tree, "diff", "--name-only", "--diff-filter=U").stdout.split()
    git(tree, "merge", "--abort", check=False)
    if not files:
        raise MergeError(f"git merge: {last_line((proc.stderr or proc.stdout).splitlines())}")
    return {"outcome": CONFLICT, "files": files}


def kill_leftover_check(pid_file: Path) -> None:
    """A merge runner killed while its check ran left the check's group
    running in the worktree about to be reset: end it first."""
    try:
        pgid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    killpg(pgid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def stop_on_signal(process: subprocess.Popen, grace: float) -> None:
    """The merge is abandoned (its agent was cancelled): the check's group
    goes with the runner, within the agent's kill_grace."""
    def on_signal(number: int, _frame: Any) -> None:
        stop_group(process, StopPolicy(grace))
        sys.exit(128 + number)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, on_signal)


def run_check(tree: Path, spec: dict[str, Any]) -> Verdict:
    command = spec["command"] if isinstance(spec["command"], str) else tuple(spec["command"])
    print(f"# merge check: {command_text(command)}", flush=True)
    process = subprocess.Popen(command, shell=isinstance(command, str),
                               cwd=tree / spec.get("cwd", "."),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, process_group=0)
    stop_on_signal(process, spec["grace"])
    pid_file = Path(spec["check_pid"])
    write_atomic(pid_file, f"{process.pid}\n", durable=False)
    timed_out = False
    try:
        output, _ = process.communicate(timeout=spec["timeout"])
        killpg(process.pid, signal.SIGKILL)   # what it left in its group ends with it
    except subprocess.TimeoutExpired:
        stop_group(process, StopPolicy(spec["grace"]))
        output, _ = process.communicate()
        timed_out = True
    pid_file.unlink(missing_ok=True)
    text = output.decode(errors="replace")
    print(text, end="", flush=True)
    tail = text.splitlines()[-FEEDBACK_LINES:]
    if timed_out:
        line = f"timed out after {spec['timeout']:g}s (check_timeout)"
        tail.append(f"[orchestrate] the merge check was killed: {line}")
    else:
        line = last_line(tail)
    return Verdict(command_text(command), None if timed_out else process.returncode, line,
                   tuple(tail), timed_out)


def attempt(spec: dict[str, Any]) -> dict[str, Any]:
    root, tree = Path(spec["root"]), Path(spec["worktree"])
    kill_leftover_check(Path(spec["check_pid"]))
    prepare(root, tree, spec["start"])
    conflict = merge(tree, spec["head"], f"orchestrate: merge {spec['task']} into {spec['into']}")
    if conflict is not None:
        return conflict
    sha = git(tree, "rev-parse", "HEAD").stdout.strip()
    if spec.get("command") is None:
        return {"outcome": MERGED, "sha": sha}
    verdict = run_check(tree, spec)
    return {"outcome": MERGED if verdict.passed else CHECK_FAILED, "sha": sha,
            "check": verdict.to_json()}


def main(spec_json: str) -> None:
    """Merge, check, record the outcome durably (a git failure is an outcome too)."""
    spec = json.loads(spec_json)
    write_atomic(Path(spec["runner_pid"]), f"{os.getpid()}\n", durable=False)
    print(f"# merge {spec['task']} ({spec['head'][:12]}) into {spec['into']} "
          f"(at {spec['start'][:12]})", flush=True)
    try:
        outcome = attempt(spec)
    except (MergeError, OSError) as err:
        outcome = {"outcome": "error", "detail": str(err)}
    print(f"# outcome: {json.dumps(outcome)}", flush=True)
    write_atomic(Path(spec["verdict"]), json.dumps(outcome) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
