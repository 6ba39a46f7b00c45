"""The agent's wrapper: a `/bin/sh` that stays the agent's parent.

Its exit trap records the exit status in `runs/<run id>.exit` whether or
not any orchestrator process is alive; whichever orchestrator process sees
that record first turns it into the outcome (`observe`, `transitions`), under
the scheduling lock. A string command runs inline
in the wrapper's own shell, so each agent costs one shell, not two.
"""
from __future__ import annotations

import json
import os
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..core.spec import Agent
from .sandbox import remove_run
from .state import Layout, file_digest

SIGNAL_NAMES = {129: "SIGHUP", 130: "SIGINT", 137: "SIGKILL", 143: "SIGTERM"}


Command = str | tuple[str, ...]


def claim_path(exit_path: Path) -> Path:
    return exit_path.with_suffix(".claim")


def wrapper_script(command: Command, exit_path: Path, check: str | None = None,
                   before: str | None = None, after: str | None = None,
                   body: str | None = None) -> str:
    # First the wrapper claims its run (noclobber: O_EXCL, so one of it and a
    # recovering orchestrator wins; `true` is a regular builtin, so a failed
    # redirection does not end the shell). A run whose launch was abandoned
    # by a recovery finds the claim taken and exits without running anything.
    # `printf` is a builtin and the record is one small write, so a reader
    # sees either nothing or the whole line; the trap also runs when the
    # wrapper is stopped by SIGTERM/SIGINT/SIGHUP, after its child has gone.
    # `before` (a worktree's setup) runs after the claim; `after` (the
    # worktree's commit) once the command exited 0, before the check; each
    # may set `rc` (the run's status) or end the run.
    record = shlex.quote(str(exit_path))
    claim = shlex.quote(str(claim_path(exit_path)))
    shell_text = body is not None or isinstance(command, str)   # `body`: the sandbox's
    body = body or (command if isinstance(command, str) else '"$@"')
    if check is not None or after is not None:   # the agent's status is the run's
        body = (f"(\n{body}\n)" if shell_text else body) + "\nrc=$?"
        if after is not None:
            body += f'\n[ "$rc" -ne 0 ] || {after}'
        if check is not None:   # the check records its own verdict
            body += f'\n[ "$rc" -ne 0 ] || {check}'
        body += '\nexit "$rc"'
    return (f"set -C; {{ true > {claim}; }} 2>/dev/null || exit 0; set +C\n"
            f"trap 'printf \"%s\\n\" \"$?\" > {record}' EXIT\n"
            "trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP\n"
            f"{before or ''}{body}\n")


def abandon_run(exit_path: Path) -> bool:
    """Take the run's claim before its wrapper does: True means the wrapper
    never started the agent and never will (it will find the claim taken)."""
    try:
        os.close(os.open(claim_path(exit_path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


def wrapper_argv(task: str, command: Command, exit_path: Path,
                 check: str | None = None, before: str | None = None,
                 after: str | None = None, body: str | None = None) -> list[str]:
    """`sh -c SCRIPT orchestrate:<task> [argv...]`: `ps` shows whose wrapper it is;
    `check`: a shell line run after the command exited 0 (see `checks`);
    `before`/`after`: a worktree's set-up and commit (see `worktree`);
    `body`: shell text that runs the command instead (the sandbox's)."""
    argv = ["/bin/sh", "-c", wrapper_script(command, exit_path, check, before, after, body),
            f"orchestrate:{task}"]
    if not isinstance(command, str):
        argv.extend(command)
    return argv


def read_exit_code(path: Path) -> int | None:
    """The recorded exit status, None while the record is absent or unwritten."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def describe_exit(code: int) -> str:
    name = SIGNAL_NAMES.get(code)
    return f"exit {code}" + (f" ({name})" if name else "")


def signal_content(root: Path, agent: Agent, outputs: Iterable[str], run_id: str) -> str:
    """Deterministic in the outputs' hashes when outputs are declared (early cutoff)."""
    record: dict[str, object] = {"pipeline": agent.pipeline, "agent": agent.name}
    if agent.outputs:
        record["outputs"] = {rel: file_digest(root / rel) for rel in sorted(outputs)}
    else:
        record["run_id"] = run_id
    return json.dumps(record, indent=1, sort_keys=True) + "\n"


def remove_run_files(layout: Layout, run_id: str | None) -> None:
    exit_path = layout.exit_file(run_id or "")
    for path in (exit_path, claim_path(exit_path), layout.upstream_file(run_id or ""),
                 layout.prompt_file(run_id or ""), layout.setup_failed(run_id or ""),
                 layout.commit_failed(run_id or ""),
                 *layout.check_files(run_id or ""),
                 exit_path.with_suffix(".ray.json"), exit_path.with_suffix(".unstarted")):
        path.unlink(missing_ok=True)
    if run_id:
        remove_run(layout, run_id)


def exit_time(path: Path) -> str | None:
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
