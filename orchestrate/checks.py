"""Checks: an agent that exits 0 is done only when its check says so.

The check runs inside the agent's wrapper (see `wrapper.wrapper_script`),
after the agent's command exited 0: `python -c ... SPEC` runs `main`, which
verifies the outputs, runs the check with its timeout in the agent's folder
and records the verdict in `runs/<run id>.check` (fsynced, then renamed)
before the wrapper writes its exit record. So a verdict is as durable as an
exit status: kill -9 of every orchestrator process while a check runs loses
nothing, and whichever orchestrator process settles the run reads it.

The rest is pure: what the feedback file says, the reasons, what a check
relaunch carries over from the run whose check failed.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .spec import Agent
from .state import Layout, StatusRecord, expand_patterns, utc_now, write_atomic

FEEDBACK_LINES = 200     # lines of the check's output the agent gets back
CHECKING = "checking"    # the reason of a running agent whose check runs
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Verdict:
    """What one check said: its exit code (None: timed out or never ended)."""
    command: str
    exit_code: int | None
    last_line: str
    tail: tuple[str, ...] = ()
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "exit_code": self.exit_code,
                "last_line": self.last_line, "tail": list(self.tail),
                "timed_out": self.timed_out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Verdict":
        return cls(str(data.get("command", "")), data.get("exit_code"),
                   str(data.get("last_line", "")), tuple(data.get("tail", ())),
                   bool(data.get("timed_out")))


# -- paths ---------------------------------------------------------------------
def verdict_path(layout: Layout, run_id: str) -> Path:
    return layout.runs_dir / f"{run_id}.check"


def marker_path(layout: Layout, run_id: str) -> Path:
    """Exists while the run's check runs: the status says `checking`."""
    return layout.runs_dir / f"{run_id}.checking"


def check_log(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.base / "logs" / pipeline / f"{agent}.check.log"


def feedback_path(layout: Layout, pipeline: str, agent: str) -> Path:
    return layout.root / feedback_relpath(pipeline, agent)


def feedback_relpath(pipeline: str, agent: str) -> str:
    """Relative to the workspace root, as the status record keeps it."""
    return f".orchestrate/feedback/{pipeline}/{agent}.md"


def run_files(layout: Layout, run_id: str) -> tuple[Path, ...]:
    return verdict_path(layout, run_id), marker_path(layout, run_id)


# -- pure ----------------------------------------------------------------------
def command_text(command: str | tuple[str, ...]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def last_line(lines: list[str] | tuple[str, ...]) -> str:
    """The last non-blank line, shortened: what a reason can carry."""
    for line in reversed(lines):
        if line.strip():
            text = line.strip()
            return text if len(text) <= 200 else text[:197] + "..."
    return "(no output)"


def feedback_text(verdict: Verdict, number: int, of: int) -> str:
    """The feedback file: the check's command, exit code and last lines."""
    status = ("timed out (killed)" if verdict.timed_out
              else f"exit code {verdict.exit_code}")
    tail = "\n".join(verdict.tail)
    return (f"# Check {number} of {of} failed\n\n"
            "Your previous run ended, but the check that decides whether it is done "
            "failed. Fix what it reports; the check runs again after you exit.\n\n"
            f"Command: `{verdict.command}`\n"
            f"Result: {status}\n\n"
            f"Last {len(verdict.tail)} lines of its output:\n\n```\n{tail}\n```\n")


def failed_reason(verdict: Verdict, number: int, of: int) -> str:
    return f"check {number} of {of} failed: {verdict.last_line}"


def check_said_no(record: StatusRecord) -> bool:
    """Did the run's check run and fail (its verdict is in the record)?"""
    verdict = record.check
    return bool(verdict) and (verdict.get("exit_code") != 0 or bool(verdict.get("timed_out")))


def is_check_relaunch(record: StatusRecord | None) -> bool:
    """Is this record an agent waiting to be relaunched after a failed check?"""
    return record is not None and record.state == "waiting" and check_said_no(record)


def carried(previous: StatusRecord | None) -> dict[str, Any]:
    """What a relaunch keeps of a check series: a retry (of a check or of a
    crash within the series) keeps the count, the feedback and the session
    to resume; a fresh launch (inputs changed, `doit retry`) starts over."""
    if previous is None or previous.state != "waiting" or previous.retry_at is None:
        return {}
    # a resumed run that failed on its own is retried in a fresh session
    # (the CLI may have lost the session), with the feedback in its prompt
    session = previous.resume_session if is_check_relaunch(previous) else None
    return {"check_attempts": previous.check_attempts, "feedback": previous.feedback,
            "resume_session": session}


def running_reason(previous: StatusRecord | None, record: StatusRecord) -> str:
    """`running`, or what the run answers when it is a check's relaunch."""
    if is_check_relaunch(previous):
        return f"running again after {previous.reason}"
    return "running"


@dataclass(frozen=True)
class Followup:
    """How a relaunch after a failed check differs: the feedback file, and the
    CLI session to resume (None: a fresh session with the feedback appended)."""
    feedback: Path
    session: str | None


def followup(layout: Layout, record: StatusRecord) -> Followup | None:
    if not record.feedback:
        return None
    return Followup(layout.root / record.feedback, record.resume_session)


def prompt_with_feedback(prompt: str, feedback: str, resumed: bool) -> str:
    """A resumed session already holds the prompt: it gets the feedback alone."""
    if resumed:
        return feedback
    return f"{prompt.rstrip()}\n\n---\n\n{feedback}"


# -- the orchestrator's side ---------------------------------------------------
NO_VERDICT = Verdict("", None, "the check ended without a verdict (killed?)")


def read_verdict(layout: Layout, run_id: str) -> Verdict:
    """The recorded verdict; none recorded (the runner was killed) is a failure."""
    try:
        data = json.loads(verdict_path(layout, run_id).read_text())
        return Verdict.from_json(data)
    except (OSError, ValueError):
        return NO_VERDICT


def judge(record: StatusRecord, verdict: Verdict | None, ended_at: str
          ) -> tuple[StatusRecord, bool]:
    """The record with the check's verdict, and whether it passed (then the
    signal is written); a failed check fails the run."""
    verdict = verdict or NO_VERDICT
    record = replace(record, check=verdict.to_json() | {"tail": []})
    if verdict.passed:
        return record, True
    return replace(record, state="failed", exit_code=0, ended_at=ended_at,
                   reason=f"check failed: {verdict.last_line}"), False


def failed(record: StatusRecord, code: int | None, stopped: bool) -> bool:
    """Did this run end because its check said no (the agent itself exited 0)?"""
    return code == 0 and not stopped and record.state == "failed" and check_said_no(record)


def verdict_event(agent: Agent, record: StatusRecord) -> tuple[str, dict[str, Any]]:
    """`check_passed` or `check_failed`, with the check's exit code and last line."""
    verdict = record.check
    passed = not check_said_no(record)
    details: dict[str, Any] = {"task": agent.task, "run_id": record.run_id,
                               "exit_code": verdict.get("exit_code"),
                               "last_line": verdict.get("last_line")}
    if verdict.get("timed_out"):
        details["timed_out"] = True
    if not passed:
        details["check"] = record.check_attempts
        details["of"] = agent.check_retries
    return ("check_passed" if passed else "check_failed"), details


def after_failure(agent: Agent, record: StatusRecord, verdict: Verdict | None, now: float
                  ) -> tuple[StatusRecord, str | None]:
    """A failed check: relaunch with feedback while check_retries last, else
    failed. Returns the record and the feedback to write (None: no relaunch).

    The relaunch waits for no backoff and spends none of `retries`: the
    attempt number stays (the scheduler adds one back)."""
    verdict = verdict or NO_VERDICT
    number = record.check_attempts + 1
    of = agent.check_retries
    if number > of:
        return replace(record, check_attempts=number, feedback=None, resume_session=None), None
    session = record.result.get("session_id") or record.resume_session
    return replace(record, state="waiting", retry_at=now, attempt=record.attempt - 1,
                   check_attempts=number, feedback=feedback_relpath(agent.pipeline, agent.name),
                   resume_session=session if isinstance(session, str) else None,
                   reason=failed_reason(verdict, number, of)), feedback_text(verdict, number, of)


def note_checking(layout: Layout, record: StatusRecord) -> bool:
    """Is the run's check running now (its marker exists)?"""
    return record.reason != CHECKING and marker_path(layout, record.run_id or "").exists()


def runner_command(layout: Layout, agent: Agent, run_id: str, root: Path) -> str:
    """The shell line the wrapper runs after the agent exited 0."""
    spec = {"command": list(agent.check) if isinstance(agent.check, tuple) else agent.check,
            "timeout": agent.check_timeout, "grace": agent.kill_grace,
            "root": str(root), "outputs": list(agent.outputs),
            "log": str(check_log(layout, agent.pipeline, agent.name)),
            "verdict": str(verdict_path(layout, run_id)),
            "marker": str(marker_path(layout, run_id))}
    code = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
            "from orchestrate.checks import main; main(sys.argv[1])")
    return shlex.join([sys.executable, "-c", code, json.dumps(spec)])


# -- the wrapper's side (runs in the agent's process group) --------------------
def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM the check's group, SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            if sig == signal.SIGTERM:
                os.killpg(process.pid, signal.SIGKILL)   # what it left behind
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _tail(path: Path, count: int) -> list[str]:
    """The log's last lines, without the header line `main` wrote first."""
    with open(path, "rb") as handle:
        start = max(0, handle.seek(0, os.SEEK_END) - 256 * 1024)
        handle.seek(start)
        lines = handle.read().decode(errors="replace").splitlines()
    return (lines if start else lines[1:])[-count:]


def main(spec_json: str) -> None:
    """Verify the outputs, run the check, record its verdict durably."""
    spec = json.loads(spec_json)
    _, missing = expand_patterns(Path(spec["root"]), tuple(spec["outputs"]))
    if missing:      # no check: the orchestrator fails the run for the missing outputs
        return
    command = spec["command"] if isinstance(spec["command"], str) else tuple(spec["command"])
    Path(spec["marker"]).touch()
    log = Path(spec["log"])
    with open(log, "wb") as out:
        out.write(f"# check: {command_text(command)}  ({utc_now()})\n".encode())
        out.flush()
        process = subprocess.Popen(command, shell=isinstance(command, str), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   process_group=0)

        def on_signal(number: int, _frame: Any) -> None:   # the run is being stopped
            _stop(process, 0.5)
            sys.exit(128 + number)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, on_signal)
        try:
            code: int | None = process.wait(spec["timeout"])
            timed_out = False
            try:   # what the check left running in its group ends with it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        except subprocess.TimeoutExpired:
            _stop(process, spec["grace"])
            code, timed_out = None, True
    tail = _tail(log, FEEDBACK_LINES)
    if timed_out:
        seconds = spec["timeout"]
        line = f"timed out after {seconds:g}s (check_timeout)"
        tail.append(f"[orchestrate] the check was killed: {line}")
    else:
        line = last_line(tail)
    verdict = Verdict(command_text(command), code, line, tuple(tail[-FEEDBACK_LINES:]),
                      timed_out)
    write_atomic(Path(spec["verdict"]), json.dumps(verdict.to_json()) + "\n")
