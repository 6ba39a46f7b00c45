"""What is true of a running run now: the facts `transitions` decides on.

The wrapper's exit record first (the outcome is the wrapper's word), then
the executor's answer from the pass's one `observe` call, then the clock and
the log's last growth. A run recorded as launching without a handle is
looked for by its run id (a crash lost the executor's answer).

Proving that an agent never ran takes the run's claim before its wrapper
can (`wrapper.abandon_run`): an atomic test-and-set, the one look here that
writes, since looking and then acting would race with a late wrapper.
"""
from __future__ import annotations

import os
from pathlib import Path

from .causes import exit_reason
from .checkrun import read_verdict
from ..core.checks import last_line
from .executors import Executor, Observation, Unavailable
from ..agents.results import parse as parse_result
from ..core.fallback import as_ran
from ..core.spec import Agent
from .state import Layout, StatusRecord, expand_patterns
from ..core.transitions import (
    Alive,
    Ended,
    Found,
    NeverStarted,
    Vanished,
    unanswered,
)
from ..core.transitions import Observation as Fact
from .worktree import output_root
from .wrapper import abandon_run, describe_exit, exit_time, read_exit_code, signal_content


def observe_run(layout: Layout, agent: Agent, record: StatusRecord, executor: Executor,
                seen: Observation | None) -> Fact | None:
    """The fact about a running record (None: nothing can be said yet).
    `seen`: what the executor said at this pass (None: it was not asked)."""
    agent = as_ran(agent, record)   # a fallback's run: its log is that preset's
    if unanswered(record):
        return recovered(layout, agent, record, executor)
    exit_path = layout.exit_file(record.run_id or "")
    code = read_exit_code(exit_path)
    gone = seen is not None and not seen.alive
    if code is None and gone:
        code = read_exit_code(exit_path)   # it may have finished since the executor looked
    if code is None and not gone:
        return Alive(last_output(layout, agent, record),
                     agent.check is not None and not record.checking
                     and layout.check_marker(record.run_id or "").exists())
    if code is None:
        if executor.unclaimed_means_never_ran and abandon_run(exit_path):
            # gone before its wrapper claimed the run: killed between fork
            # and exec, so the agent never ran; that attempt is owed
            return NeverStarted()
        return Vanished(seen.ended_as)
    if executor.polled and not gone:
        # A remote run is settled once its executor says it has ended: on a
        # shared filesystem the log's last bytes reach this host only after
        # the job's processes closed it, and the CLI's result is read from it.
        return None
    # killed by a signal orchestrate did not send: the executor may know why
    said = seen.ended_as if gone and seen.known and code > 128 and record.stop_kind is None \
        else None
    return ended(layout, agent, record, code, exit_time(exit_path), said)


def recovered(layout: Layout, agent: Agent, record: StatusRecord, executor: Executor
              ) -> Fact | None:
    """A pass crashed between recording a launch and recording the
    executor's answer. Found by its run id, the run is re-attached (never
    launched again); not found, taking its claim proves it never started
    (even a child stuck between fork and exec, or a job sbatch queued after
    all: its wrapper finds the claim taken and runs nothing)."""
    run_id = record.run_id or ""
    exit_path = layout.exit_file(run_id)
    try:
        handle = executor.find(run_id)
        if handle is None and abandon_run(exit_path):
            return NeverStarted()
        handle = handle or executor.find(run_id)
    except Unavailable:
        return None          # ask again at the next pass
    if handle is not None:
        return Found(handle)
    code = read_exit_code(exit_path)   # it started, and has ended since
    if code is None:
        return Vanished()
    return ended(layout, agent, record, code, exit_time(exit_path), None)


def ended(layout: Layout, agent: Agent, record: StatusRecord, code: int,
          ended_at: str | None, executor_said: str | None) -> Ended:
    """Everything the outcome of an exited run needs, read once."""
    reported = None
    if agent.preset:
        try:
            text = (layout.root / record.log).read_text(errors="replace")
        except OSError:
            text = ""
        reported = parse_result(agent.preset, text, code)
    if record.stop_kind is not None:   # it ends with its stop reason: nothing else matters
        return Ended(code, ended_at, executor_said=executor_said, reported=reported)
    if code != 0 and layout.setup_failed(record.run_id or "").exists():
        said = f"setup failed: {last_line_of(layout.setup_log(agent.pipeline, agent.name))}"
        return Ended(code, ended_at, said, executor_said, reported)
    if code != 0 and layout.commit_failed(record.run_id or "").exists():
        said = f"auto-commit failed: {last_line_of(layout.commit_failed(record.run_id or ''))}"
        return Ended(code, ended_at, said, executor_said, reported)
    if code != 0:
        said = exit_reason(code, describe_exit(code), layout.root / record.log)
        return Ended(code, ended_at, said, executor_said, reported)
    root = output_root(layout, agent)
    outputs, missing = expand_patterns(root, agent.outputs)
    verdict = read_verdict(layout, record.run_id or "") if agent.check is not None \
        else None
    text = None if missing else signal_content(root, agent, outputs, record.run_id or "")
    return Ended(code, ended_at, "", executor_said, reported, tuple(missing), text, verdict)


def last_line_of(path: Path) -> str:
    """A file's last line (of its last 64 KiB): why a set-up or a commit failed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64 * 1024))
            return last_line(handle.read().decode(errors="replace").splitlines())
    except OSError:
        return "(no output)"


def last_output(layout: Layout, agent: Agent, record: StatusRecord) -> float | None:
    """When the log last grew (asked only when a stall_timeout applies)."""
    if agent.stall_timeout is None:
        return None
    try:
        return os.stat(layout.root / record.log).st_mtime
    except OSError:
        return None
