"""The check runner: runs inside the agent's wrapper, after its command exited 0.

`python -c ... SPEC` runs `main`, which verifies the outputs, runs the check
with its timeout in the agent's folder and records the verdict in
`runs/<run id>.check` (fsynced, then renamed) before the wrapper writes its
exit record. So a verdict is as durable as an exit status: kill -9 of every
orchestrator process while a check runs loses nothing, and whichever
orchestrator process settles the run reads it (`read_verdict`).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.checks import (
    FEEDBACK_LINES,
    NO_VERDICT,
    Verdict,
    command_text,
    last_line,
)
from ..core.spec import Agent
from ..core.stopping import StopPolicy
from .stopping import killpg, stop_group
from .state import Layout, expand_patterns, utc_now, write_atomic

if TYPE_CHECKING:
    from .sandbox import SandboxRun

PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)


def read_verdict(layout: Layout, run_id: str) -> Verdict:
    """The recorded verdict; none recorded (the runner was killed) is a failure."""
    try:
        data = json.loads(layout.check_verdict(run_id).read_text())
        return Verdict.from_json(data)
    except (OSError, ValueError):
        return NO_VERDICT


def runner_command(layout: Layout, agent: Agent, run_id: str, root: Path,
                   sandbox: "SandboxRun | None" = None) -> str:
    """The shell line the wrapper runs after the agent exited 0; a sandboxed
    agent's check runs in the same sandbox (the runner stays outside)."""
    spec = {"command": list(agent.check) if isinstance(agent.check, tuple) else agent.check,
            "timeout": agent.check_timeout, "grace": agent.kill_grace,
            "root": str(root), "outputs": list(agent.outputs),
            "log": str(layout.check_log(agent.pipeline, agent.name)),
            "verdict": str(layout.check_verdict(run_id)),
            "marker": str(layout.check_marker(run_id))}
    if sandbox is not None and agent.check is not None:
        spec["sandbox"] = sandbox.script(agent.check, f"{run_id}.check.sock")
    code = (f"import sys; sys.path.insert(0, {PACKAGE_PARENT!r}); "
            "from orchestrate.runtime.checkrun import main; main(sys.argv[1])")
    return shlex.join([sys.executable, "-c", code, json.dumps(spec)])


# -- the wrapper's side (runs in the agent's process group) --------------------
def stop_check(process: subprocess.Popen, grace: float) -> None:
    """The one stop policy for the check's group: SIGTERM, SIGKILL past
    `grace`, then SIGKILL to what it left behind; bounded."""
    stop_group(process, StopPolicy(grace))


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
        run = command
        if spec.get("sandbox"):   # sh text that runs the check (an argv: "$@") in bwrap
            run = ("/bin/sh", "-c", spec["sandbox"], "check",
                   *(() if isinstance(command, str) else command))
        process = subprocess.Popen(run, shell=isinstance(run, str), stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   process_group=0)

        def on_signal(number: int, _frame: Any) -> None:   # the run is being stopped
            # half the run's kill_grace: the runner exits (and the wrapper
            # records it) before the run's own SIGKILL reaches everything
            stop_check(process, spec["grace"] / 2)
            sys.exit(128 + number)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, on_signal)
        try:
            code: int | None = process.wait(spec["timeout"])
            timed_out = False
            killpg(process.pid, signal.SIGKILL)   # what it left in its group ends with it
        except subprocess.TimeoutExpired:
            stop_check(process, spec["grace"])
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
