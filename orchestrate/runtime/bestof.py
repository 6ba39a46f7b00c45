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
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from ..core import landing, transitions as t
from ..core.bestof import (
    JUDGE_POLL,
    Outcome,
    contest_key,
    named_candidate,
    outcome,
    winner_reason,
)
from ..core.checks import last_line
from ..core.records import ACTIVE, RunState
from ..core.spec import Agent, Workspace
from ..core.stopping import SETTLE
from . import worktree
from .checkrun import PACKAGE_PARENT
from .executors.processes import create_time, is_alive
from .faults import crash_point
from .state import Layout, StatusRecord, expand_patterns, read_json, write_atomic, write_json
from .stopping import killpg
from .wrapper import signal_content

JUDGE_TIMEOUT = 600.0   # a judge without the agent's own `timeout`
JUDGE_GRACE = 5.0


def choice_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "bestof" / pipeline / f"{agent}.json"


def candidates_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "bestof" / pipeline / f"{agent}.candidates.json"


def contest_files(layout: Layout, pipeline: str, agent: str) -> list[Path]:
    """What a contest leaves in the state folder (`doit clean` removes it)."""
    folder = layout.base / "bestof" / pipeline
    return [choice_path(layout, pipeline, agent)] + [
        folder / f"{agent}.{what}.json" for what in ("candidates", "judging", "answer", "spec")]


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

    def wake_by(self, at: float) -> None:
        """A pass is due by `at` (a judge's answer to look for)."""


class ContestKeeper:
    """The engine's best-of step (see the module's docstring)."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.judges = Judges(layout)

    def step(self, host: ContestHost, agents: list[Agent]) -> None:
        for agent in agents:
            if agent.candidates:
                self.keep(host, agent)

    def keep(self, host: ContestHost, agent: Agent) -> None:
        records = {c: host.record_at(agent.pipeline, c) for c in agent.candidates}
        key = contest_key(records)
        row = host.record_at(agent.pipeline, agent.name)
        if row is not None and row.state == RunState.CANCELLED:
            self.judges.stop(agent)   # cancelled by a user: until `doit retry`
            return
        if self.still_stands(host, agent, row, key, records):
            return
        choice = self.choice(host, agent, key, records)
        if choice is not None:
            self.settle(host, agent, choice, records, key)

    def still_stands(self, host: ContestHost, agent: Agent, row: StatusRecord | None,
                     key: dict[str, str], records: dict[str, StatusRecord | None]) -> bool:
        """True if the row says how this very contest came out (its losers'
        worktrees are tidied); else the row is reopened if it spoke of an
        earlier contest, and forgets its choice if `doit retry` asked so."""
        if row is not None and (row.state in (RunState.DONE, RunState.FAILED)
                                or landing.merge_pending(row)):   # decided, landing
            if row.upstream == key:
                self.tidy(host, agent, row, records)
                return True
            host.apply_change(*t.contest_reopened(agent, row, host.clock()))
        elif row is not None and row.retry_requested:   # a contest anew, its judge asked again
            choice_path(self.layout, agent.pipeline, agent.name).unlink(missing_ok=True)
            self.judges.forget(agent)
            host.apply_change(*t.contest_reopened(agent, row, host.clock()))
        return False

    def choice(self, host: ContestHost, agent: Agent, key: dict[str, str],
               records: dict[str, StatusRecord | None]) -> dict[str, Any] | None:
        """The choice recorded for this contest, else made and recorded now
        (durably, before anything is done about it); None while it is open
        or its judge runs."""
        path = choice_path(self.layout, agent.pipeline, agent.name)
        choice = read_json(path)
        if choice is not None and choice.get("key") == key:
            return choice
        found = outcome(agent, records)
        if found is None:
            return None
        answer = None
        if found.needs_judge:
            # liveness first, then the answer: a judge found gone has answered by then
            judging = self.judges.running(agent, key)
            answer = self.judges.answer(agent, key)
            if answer is None:
                self.judges.keep_running(host, agent, key, judging,
                                         self.described(agent, found.good, records))
                return None
        choice = self.choose(agent, found, answer, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, choice)
        crash_point("bestof-chosen")
        return choice

    # -- choosing -------------------------------------------------------------
    def choose(self, agent: Agent, found: Outcome, answer: dict[str, Any] | None,
               key: dict[str, str]) -> dict[str, Any]:
        """The choice as recorded: the winner (or none) and why."""
        winner, how, reason = found.winner, found.how, found.reason
        if found.needs_judge and answer is not None:
            winner, reason = judged(agent, found.good, answer)
            how = "chosen by judge"
        if winner is not None:
            reason = winner_reason(agent, winner, how)
        return {"key": key, "winner": winner, "how": how, "reason": reason}

    def described(self, agent: Agent, good: tuple[str, ...],
                  records: dict[str, StatusRecord | None]) -> list[dict[str, Any]]:
        return [self.describe(agent, name, records[name]) for name in good]

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
                                             text, log, host.clock(), won))

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
        """Losers' worktrees go once their runs have ended (their branches
        stay). A contest without a winner keeps them all: a person looks
        at them, a `doit retry` asks the judge again."""
        if row.winner is None:
            return
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


def judged(agent: Agent, good: tuple[str, ...], answer: dict[str, Any]
           ) -> tuple[str | None, str]:
    """(the good candidate the judge's last line names, else None and why)."""
    code = answer.get("exit_code")
    line = last_line(str(answer.get("output") or "").splitlines())
    if code != 0:
        said = f"exit {code}" if code is not None else "timed out"
        return None, f"judge failed: {said}: {line}"
    winner = named_candidate(agent, line, good)
    if winner is None:
        tasks = ", ".join(f"{agent.pipeline}:{n}" for n in good)
        return None, f"judge named no good candidate: {line[:120]!r} (expected one of {tasks})"
    return winner, ""


class Judges:
    """Judges run detached (`judgerun`), so a pass never waits for one: a
    pass starts the judge, later passes look for its answer. Its process is
    recorded (`<agent>.judging.json`: pid and start time) so that any
    orchestrator process knows it runs, and a cancel can stop it."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.started: dict[str, subprocess.Popen] = {}   # ours, reaped as they end

    def _path(self, agent: Agent, what: str) -> Path:
        return self.layout.base / "bestof" / agent.pipeline / f"{agent.name}.{what}.json"

    def answer(self, agent: Agent, key: dict[str, str]) -> dict[str, Any] | None:
        """The judge's answer for this contest, once it has given one."""
        self._reap()
        found = read_json(self._path(agent, "answer"))
        return found if found is not None and found.get("key") == key else None

    def forget(self, agent: Agent) -> None:
        """`doit retry` of the agent: its judge's last answer no longer counts."""
        self._path(agent, "answer").unlink(missing_ok=True)

    def running(self, agent: Agent, key: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The record of the agent's judge while its process lives (for `key`, if given)."""
        self._reap()
        judging = read_json(self._path(agent, "judging"))
        if judging is None or (key is not None and judging.get("key") != key):
            return None
        return judging if is_alive(judging.get("pid"), judging.get("started")) else None

    def keep_running(self, host: ContestHost, agent: Agent, key: dict[str, str],
                     judging: dict[str, Any] | None, candidates: list[dict[str, Any]]) -> None:
        """Start the judge unless it runs already (`judging`: its record, if its
        process lives); the agent's row says judging."""
        if judging is None:
            self.start(agent, key, candidates)
            previous = host.record_at(agent.pipeline, agent.name)
            host.apply_change(*t.contest_judging(
                agent, previous, f"judging {len(candidates)} candidates that passed",
                self.layout.relative(self.layout.log(agent.pipeline, agent.name)),
                host.clock()))
        host.wake_by(host.clock() + JUDGE_POLL)

    def start(self, agent: Agent, key: dict[str, str], candidates: list[dict[str, Any]]) -> None:
        layout = self.layout
        listing = candidates_path(layout, agent.pipeline, agent.name)
        listing.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(listing, json.dumps(candidates, indent=1) + "\n")
        self._path(agent, "answer").unlink(missing_ok=True)
        (layout.runs_dir / f"{agent.pipeline}.{agent.name}.judged").unlink(missing_ok=True)
        log = layout.log(agent.pipeline, agent.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        spec = {"command": list(agent.judge) if isinstance(agent.judge, tuple) else agent.judge,
                "root": str(layout.root), "log": str(log), "key": key,
                "answer": str(self._path(agent, "answer")),
                "wake": str(layout.runs_dir / f"{agent.pipeline}.{agent.name}.judged"),
                "timeout": agent.timeout or JUDGE_TIMEOUT, "grace": JUDGE_GRACE,
                "env": {"ORCHESTRATE_CANDIDATES": str(listing),
                        "ORCHESTRATE_ROOT": str(layout.root),
                        "ORCHESTRATE_PIPELINE": agent.pipeline,
                        "ORCHESTRATE_AGENT": agent.name}}
        spec_path = self._path(agent, "spec")
        write_atomic(spec_path, json.dumps(spec) + "\n", durable=False)
        with open(log, "ab") as errors:   # the supervisor's own trouble, if any, in the log
            process = subprocess.Popen(
                [sys.executable, "-S", "-c", SUPERVISOR, str(spec_path)], cwd=layout.root,
                stdin=subprocess.DEVNULL, stdout=errors, stderr=errors, start_new_session=True)
        self.started[agent.task] = process
        write_json(self._path(agent, "judging"),
                   {"key": key, "pid": process.pid, "started": create_time(process.pid)})

    def stop(self, agent: Agent) -> None:
        """A cancelled contest's judge ends (SIGTERM: it stops the judge's
        group; SIGKILL past the grace), bounded."""
        judging = self.running(agent)
        if judging is None:
            return
        pid = int(judging["pid"])
        killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + JUDGE_GRACE + SETTLE
        while is_alive(pid, judging.get("started")) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.02)
        killpg(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        for task, process in list(self.started.items()):
            if process.poll() is not None:
                del self.started[task]


# The supervisor's command line: run by the interpreter orchestrate runs
# under, finding this package wherever it is installed; without `site` (-S:
# it needs only the standard library and this package), it starts in ~50 ms.
SUPERVISOR = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
              "from orchestrate.runtime.judgerun import main; sys.exit(main(sys.argv[1]))")
