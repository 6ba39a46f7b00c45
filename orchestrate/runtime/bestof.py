"""Best of N at the edges: the engine step that ends a contest.

Each pass, after finished runs are settled, every best_of agent of the
selection is looked at: once its candidates' records say who won (the first
to pass; or, with a judge, every candidate ended and the judge named one),
the choice is written to `.orchestrate/bestof/<pipeline>/<agent>.json`
(atomically, fsynced) before anything is done about it. Then the losers
are cancelled (the one stop policy), the winner's worktree and branch
become the agent's, and the agent's row is written done with its signal
made from the winner's outputs. A kill -9 anywhere in between finds the
same choice next pass and finishes the same steps (each one idempotent), so
the winner is picked once and the judge asked once.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Protocol

from ..core import transitions as t
from ..core.bestof import (
    Outcome,
    contest_key,
    named_candidate,
    outcome,
    winner_reason,
)
from ..core.checks import last_line
from ..core.records import ACTIVE, RunState
from ..core.spec import Agent, Workspace
from ..core.stopping import StopPolicy
from . import worktree
from .faults import crash_point
from .state import Layout, StatusRecord, expand_patterns, read_json, write_atomic, write_json
from .stopping import killpg, stop_group
from .wrapper import signal_content

JUDGE_TIMEOUT = 600.0   # a judge without the agent's own `timeout`
JUDGE_GRACE = 5.0


def choice_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "bestof" / pipeline / f"{agent}.json"


def candidates_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "bestof" / pipeline / f"{agent}.candidates.json"


class ContestHost(Protocol):
    """What the contest step reads of the engine and asks of it (`engine.ContestRequests`)."""

    @property
    def workspace(self) -> Workspace: ...

    def record_at(self, pipeline: str, name: str) -> StatusRecord | None: ...

    def clock(self) -> float: ...

    def apply_change(self, record: StatusRecord | None, effects: t.Effects) -> None:
        """Run a pure constructor's effects through the effect runner."""

    def stop(self, agent: Agent, record: StatusRecord, reason: str) -> None:
        """Cancel a running candidate with the one stop policy."""


class ContestKeeper:
    """The engine's best-of step (see the module's docstring)."""

    def __init__(self, layout: Layout):
        self.layout = layout

    def step(self, host: ContestHost, agents: list[Agent]) -> None:
        for agent in agents:
            if agent.candidates:
                self.keep(host, agent)

    def keep(self, host: ContestHost, agent: Agent) -> None:
        records = {c: host.record_at(agent.pipeline, c) for c in agent.candidates}
        key = contest_key(records)
        row = host.record_at(agent.pipeline, agent.name)
        if row is not None and row.state == RunState.CANCELLED:
            return   # cancelled by a user: until `doit retry`
        path = choice_path(self.layout, agent.pipeline, agent.name)
        if row is not None and row.state in (RunState.DONE, RunState.FAILED):
            if row.upstream == key:
                self.tidy(host, agent, row, records)
                return
            host.apply_change(*t.contest_reopened(agent, row, host.clock()))
        if row is not None and row.retry_requested:   # `doit retry`: a contest anew
            path.unlink(missing_ok=True)
            host.apply_change(*t.contest_reopened(agent, row, host.clock()))
        choice = read_json(path)
        if choice is None or choice.get("key") != key:
            found = outcome(agent, records)
            if found is None:
                return
            choice = self.choose(agent, found, records, key)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, choice)     # durable before anything is done about it
            crash_point("bestof-chosen")
        self.settle(host, agent, choice, records, key)

    # -- choosing -------------------------------------------------------------
    def choose(self, agent: Agent, found: Outcome, records: dict[str, StatusRecord | None],
               key: dict[str, str]) -> dict[str, Any]:
        """The choice as recorded: the winner (or none) and why."""
        winner, how, reason = found.winner, found.how, found.reason
        if found.needs_judge:
            winner, reason = self.ask_judge(agent, found.good, records)
            how = "chosen by judge"
        if winner is not None:
            reason = winner_reason(agent, winner, how)
        return {"key": key, "winner": winner, "how": how, "reason": reason}

    def ask_judge(self, agent: Agent, good: tuple[str, ...],
                  records: dict[str, StatusRecord | None]) -> tuple[str | None, str]:
        """Run the judge in the workspace root with ORCHESTRATE_CANDIDATES;
        (the candidate its last line names, else None and why)."""
        layout = self.layout
        listing = candidates_path(layout, agent.pipeline, agent.name)
        listing.parent.mkdir(parents=True, exist_ok=True)
        described = [self.describe(agent, name, records[name]) for name in good]
        write_atomic(listing, json.dumps(described, indent=1) + "\n")
        log = layout.log(agent.pipeline, agent.name)
        code, output = run_judge(agent, layout.root, listing, log)
        line = last_line(output.splitlines())
        if code != 0:
            return None, f"judge failed: {'exit ' + str(code) if code else 'timed out'}: {line}"
        winner = named_candidate(agent, line, good)
        if winner is None:
            tasks = ", ".join(f"{agent.pipeline}:{n}" for n in good)
            return None, f"judge named no good candidate: {line[:120]!r} (expected one of {tasks})"
        return winner, ""

    def describe(self, agent: Agent, name: str, record: StatusRecord | None) -> dict[str, Any]:
        """One good candidate as the judge sees it."""
        candidate = self._candidate(agent, name)
        result = (record.result if record else {}) or {}
        return {"task": f"{agent.pipeline}:{name}",
                "worktree": str(worktree.path(self.layout, candidate)),
                "branch": worktree.branch(candidate),
                "diff_stat": worktree.diff_stat(self.layout, candidate),
                "cost_usd": record.spent_usd if record else 0.0,
                "tokens": int(result.get("input_tokens") or 0)
                + int(result.get("output_tokens") or 0),
                "result": result.get("final_message") or None}

    # -- acting on a choice ------------------------------------------------------
    def settle(self, host: ContestHost, agent: Agent, choice: dict[str, Any],
               records: dict[str, StatusRecord | None], key: dict[str, str]) -> None:
        """Cancel the losers, give the winner's worktree to the agent, write
        its row; each step can be done again after a crash."""
        winner = choice.get("winner")
        previous = host.record_at(agent.pipeline, agent.name)
        log = self.layout.relative(self.layout.log(agent.pipeline, agent.name))
        if winner is None:
            host.apply_change(*t.contest_decided(agent, previous, key, None, choice["reason"],
                                                 None, log, host.clock()))
            return
        self.cancel_losers(host, agent, winner, records, choice["how"])
        worktree.adopt(self.layout, agent, self._candidate(agent, winner))
        root = worktree.path(self.layout, agent)
        outputs, missing = expand_patterns(root, agent.outputs)
        if missing:
            host.apply_change(*t.contest_decided(
                agent, previous, key, None, f"winner {agent.pipeline}:{winner}'s outputs "
                f"missing: {', '.join(missing)}", None, log, host.clock()))
            return
        won = records[winner]
        text = signal_content(root, agent, outputs, (won.run_id if won else None) or winner)
        host.apply_change(*t.contest_decided(agent, previous, key, winner, choice["reason"],
                                             text, log, host.clock()))

    def cancel_losers(self, host: ContestHost, agent: Agent, winner: str,
                      records: dict[str, StatusRecord | None], how: str) -> None:
        reason = f"cancelled: {agent.pipeline}:{winner} won ({how})"
        for name, record in records.items():
            if name == winner:
                continue
            if record is not None and record.state in ACTIVE:
                if record.stop_kind is None:
                    host.stop(self._candidate(agent, name), record, reason)
            elif record is None or record.state in (RunState.PENDING, RunState.WAITING,
                                                    RunState.QUEUED):
                host.apply_change(*t.candidate_withdrawn(record, agent.pipeline, name,
                                                         agent.name, reason, host.clock()))

    def tidy(self, host: ContestHost, agent: Agent, row: StatusRecord,
             records: dict[str, StatusRecord | None]) -> None:
        """Losers' worktrees go once their runs have ended (their branches stay)."""
        for name, record in records.items():
            if row.winner == f"{agent.pipeline}:{name}":
                continue
            if record is not None and record.state in ACTIVE:
                continue
            candidate = self._candidate(agent, name)
            if worktree.path(self.layout, candidate).exists():
                worktree.discard(self.layout, candidate)

    @staticmethod
    def _candidate(agent: Agent, name: str) -> Agent:
        """A candidate as far as paths go (worktree, branch): same pipeline, its name."""
        from ..core.foreach import copy_with
        candidate: Agent = copy_with(agent, name=name, candidate_of=agent.name, candidates=())
        return candidate


def run_judge(agent: Agent, root: Path, listing: Path, log: Path) -> tuple[int | None, str]:
    """(exit code, None past its limit; its standard output). Its output and
    errors go to the agent's log; it is stopped by the one stop policy."""
    command = agent.judge or ""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env.update({"ORCHESTRATE_CANDIDATES": str(listing), "ORCHESTRATE_ROOT": str(root),
                "ORCHESTRATE_PIPELINE": agent.pipeline, "ORCHESTRATE_AGENT": agent.name})
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as errors:
        try:
            process = subprocess.Popen(argv, cwd=root, env=env, stdout=subprocess.PIPE,
                                       stderr=errors, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError as err:
            return 127, f"could not start: {err.strerror or err}: {argv[0]}"
        try:
            out, _ = process.communicate(timeout=agent.timeout or JUDGE_TIMEOUT)
            code: int | None = process.returncode
            killpg(process.pid, signal.SIGKILL)   # what it left in its group ends with it
        except subprocess.TimeoutExpired:
            stop_group(process, StopPolicy(JUDGE_GRACE))
            out, code = b"", None
        errors.write(out)
    return code, out.decode(errors="replace")
