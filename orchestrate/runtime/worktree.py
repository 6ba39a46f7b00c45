"""`isolation = "worktree"`: each such agent works in its own git worktree, on
branch `orchestrate/<pipeline>/<agent>`, so parallel coding agents cannot
clobber each other's files. Real git; nothing here guesses.

A worktree left by a crash is reused when git knows it as this agent's
worktree on its branch, and removed and made again otherwise: an agent never
silently runs in the main checkout instead.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from ..core.spec import Agent
from .state import Layout, is_inside


class WorktreeError(OSError):
    """Git could not give the agent its worktree (the agent is not started)."""


def branch(agent: Agent) -> str:
    return f"orchestrate/{agent.pipeline}/{agent.name}"


def path(layout: Layout, agent: Agent) -> Path:
    return layout.base / "worktrees" / agent.pipeline / agent.name


def output_root(layout: Layout, agent: Agent) -> Path:
    """Where the agent's outputs (and relative cwd) live."""
    return path(layout, agent) if agent.isolation == "worktree" else layout.root


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise WorktreeError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _registered(root: Path) -> dict[Path, str]:
    """Worktree path -> branch, as git knows them."""
    found: dict[Path, str] = {}
    current: Path | None = None
    for line in _git(root, "worktree", "list", "--porcelain").stdout.splitlines():
        if line.startswith("worktree "):
            current = Path(line[len("worktree "):]).resolve()
            found[current] = ""
        elif line.startswith("branch ") and current is not None:
            found[current] = line[len("branch refs/heads/"):]
    return found


def ensure(layout: Layout, agent: Agent, base: Agent | None) -> Path:
    """The agent's worktree, made if needed from HEAD or from `base`'s branch."""
    root = layout.root
    if _git(root, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        raise WorktreeError(f"isolation = \"worktree\" needs a git repository at {root}")
    target = path(layout, agent)
    known = _registered(root)
    if known.get(target.resolve()) == branch(agent) and target.is_dir():
        return target                       # ours, from an earlier run or a crash: reuse
    if not is_inside(root, target.parent):
        raise WorktreeError(f"{target.parent} resolves outside the workspace; not touched")
    if target.exists() or target.resolve() in known:
        shutil.rmtree(target, ignore_errors=True)   # not a usable worktree: remove
        _git(root, "worktree", "prune")
    target.parent.mkdir(parents=True, exist_ok=True)
    has_branch = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch(agent)}",
                      check=False).returncode == 0
    if has_branch:
        _git(root, "worktree", "add", str(target), branch(agent))
    else:
        start = branch(base) if base is not None else "HEAD"
        _git(root, "worktree", "add", "-b", branch(agent), str(target), start)
    return target


def remove(layout: Layout, agent: Agent) -> None:
    """`doit clean`: the worktree and its branch go."""
    target = path(layout, agent)
    if _git(layout.root, "rev-parse", "--is-inside-work-tree", check=False).returncode != 0:
        return
    if target.exists() and is_inside(layout.root, target):
        _git(layout.root, "worktree", "remove", "--force", str(target), check=False)
        shutil.rmtree(target, ignore_errors=True)
    _git(layout.root, "worktree", "prune", check=False)
    _git(layout.root, "branch", "-D", branch(agent), check=False)


# -- what the agent's wrapper does in its worktree (shell lines) ---------------
SETUP_DONE = "orchestrate-setup-done"   # in the worktree's own git folder
IDENTITY = ("GIT_AUTHOR_NAME=orchestrate GIT_AUTHOR_EMAIL=orchestrate@localhost "
            "GIT_COMMITTER_NAME=orchestrate GIT_COMMITTER_EMAIL=orchestrate@localhost")


def git_dir(worktree: Path) -> Path:
    """The worktree's own folder in the repository's `.git/worktrees/`: it is
    made with the worktree and goes with it, so a marker there means "this
    very worktree" (a worktree made again is fresh)."""
    text = (worktree / ".git").read_text().strip()
    found = Path(text.removeprefix("gitdir:").strip())
    return found if found.is_absolute() else (worktree / found).resolve()


def setup_marker(worktree: Path) -> Path:
    return git_dir(worktree) / SETUP_DONE


def setup_line(agent: Agent, worktree: Path, log: Path, failed: Path) -> str:
    """Run `setup` in a worktree not yet set up; on failure record it (the
    run's reason reads the setup log's last line) and end the run with its
    exit status. The marker is written only after it passed."""
    command = agent.setup if isinstance(agent.setup, str) else shlex.join(agent.setup or ())
    marker = shlex.quote(str(setup_marker(worktree)))
    return (f"if [ ! -e {marker} ]; then\n"
            f"(cd {shlex.quote(str(worktree))} && exec /bin/sh -c {shlex.quote(command)}) "
            f"> {shlex.quote(str(log))} 2>&1 < /dev/null\n"
            f'src=$?; [ "$src" -eq 0 ] || {{ : > {shlex.quote(str(failed))}; exit "$src"; }}\n'
            f": > {marker}\nfi\n")


def commit_line(agent: Agent, run_id: str, worktree: Path, failed: Path) -> str:
    """Commit whatever the agent left (untracked too, ignored files not) on
    its branch. Without a git identity, orchestrate's own is used. A failed
    commit fails the run (git's error stays in `failed`, for its reason):
    its work must not live only in the worktree."""
    at = f"git -C {shlex.quote(str(worktree))}"
    message = shlex.quote(f"orchestrate: {agent.task} run {run_id}")
    errors = shlex.quote(str(failed))
    return (f"{{ {at} add -A && {{ {{ {at} diff --cached --quiet && "
            f"! {at} rev-parse -q --verify MERGE_HEAD > /dev/null; }} || {{ "
            f"{at} var GIT_COMMITTER_IDENT > /dev/null 2>&1 || export {IDENTITY}; "
            f"{at} commit -q --no-verify -m {message}; }}; }}; }} 2> {errors} "
            f'|| {{ rc=$?; cat {errors} >&2; echo "orchestrate: auto-commit failed (exit $rc)" >&2; }}'
            f'; [ "$rc" -ne 0 ] || rm -f {errors}')


# -- what the agent changed ------------------------------------------------------
def base_ref(agent: Agent) -> str:
    """Where the agent's branch starts: its base agent's branch, else HEAD."""
    return f"orchestrate/{agent.pipeline}/{agent.base}" if agent.base else "HEAD"


def has_branch(root: Path, name: str) -> bool:
    return _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}",
                check=False).returncode == 0


def fork_point(root: Path, agent: Agent) -> str:
    """The commit the agent's changes are measured from: the merge-base of
    its branch and its base (so commits made on the base since do not show)."""
    return _git(root, "merge-base", branch(agent), base_ref(agent)).stdout.strip()


def diff(root: Path, agent: Agent, stat: bool = False) -> str:
    """What is committed on the agent's branch since its fork point."""
    args = ["diff", "--no-color", "--no-ext-diff", *(["--stat"] if stat else []),
            fork_point(root, agent), branch(agent)]
    return _git(root, *args).stdout


def discard(layout: Layout, agent: Agent) -> None:
    """A best_of loser's worktree goes; its branch stays (until `doit clean`)."""
    target = path(layout, agent)
    if not target.exists() or not is_inside(layout.root, target):
        return
    if _git(layout.root, "worktree", "remove", "--force", str(target),
            check=False).returncode != 0:   # not a worktree git knows: plain files
        shutil.rmtree(target, ignore_errors=True)
        _git(layout.root, "worktree", "prune", check=False)


def adopt(layout: Layout, agent: Agent, candidate: Agent) -> Path:
    """A best_of winner's worktree and work become the agent's: moved to the
    agent's path, on the agent's branch (`orchestrate/<pipeline>/<agent>`,
    at the winner's commit; the candidate's branch is kept). Each step can
    be done again: a crash in between finishes it next time."""
    root = layout.root
    target, source = path(layout, agent), path(layout, candidate)
    if not is_inside(root, target.parent):
        raise WorktreeError(f"{target.parent} resolves outside the workspace; not touched")
    if source.is_dir():   # still where the candidate ran: the agent's older one goes
        if target.exists() or target.resolve() in _registered(root):
            _git(root, "worktree", "remove", "--force", str(target), check=False)
            shutil.rmtree(target, ignore_errors=True)
            _git(root, "worktree", "prune")
        target.parent.mkdir(parents=True, exist_ok=True)
        _git(root, "worktree", "move", str(source), str(target))
    if not target.is_dir():   # the candidate's worktree is gone: its branch is not
        _git(root, "worktree", "prune")
        _git(root, "worktree", "add", "-B", branch(agent), str(target), branch(candidate))
    _git(target, "checkout", "-B", branch(agent))
    return target


def diff_stat(layout: Layout, agent: Agent) -> str:
    """`git diff --stat` of the worktree (committed and not, new files
    included) against where its branch started, without touching its index."""
    import os
    import tempfile
    target = path(layout, agent)
    start = _git(target, "merge-base", "HEAD", _git(layout.root, "rev-parse", "HEAD")
                 .stdout.strip(), check=False).stdout.strip() or "HEAD"
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": os.path.join(scratch, "index")}
        subprocess.run(["git", "-C", str(target), "add", "-A"], env=env, capture_output=True)
        proc = subprocess.run(["git", "-C", str(target), "diff", "--cached", "--stat", start],
                              env=env, capture_output=True, text=True)
    return proc.stdout.strip()

