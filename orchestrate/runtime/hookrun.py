"""A hook's supervisor: `python -m orchestrate.runtime.hookrun ROOT EVENT_ID`.

Started orphaned by whichever orchestrator process recorded or found the
event (see `hooks`), it outlives them all: it claims the event (the rename of
`hooks/pending/<id>.json` to `hooks/fired/<id>.json`; only one supervisor's
rename can succeed), runs the hook in a session of its own with the event's
environment and the event JSON on stdin (a file), appends the hook's output
to `logs/hooks.log`, kills the hook's process group past the time limit, and
records `hook_ran` or `hook_failed` in `events.jsonl`.

Event data reaches the hook only through its environment and stdin: the
command is the user's, run as written (a string by /bin/sh -c, a list as argv).

One of these starts per hook, so it imports only the standard library's
lightest modules (not orchestrate's state module: dataclasses, hashlib, ...)
and the stop policy, which imports nothing else.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from ..core.exitcodes import ExitCode
from ..core.stopping import StopPolicy
from .stopping import stop_group

TIMEOUT = 60.0
TIMEOUT_VAR = "ORCHESTRATE_HOOK_TIMEOUT"   # seconds; for tests, so they need not wait 60 s
KILL_GRACE = 2.0                           # SIGTERM to SIGKILL, for a hook past its limit


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def append_event(base: Path, kind: str, **details: object) -> None:
    """One line of events.jsonl, in one O_APPEND write (as `state.append_event`)."""
    line = json.dumps({"ts": utc_now(), "event": kind, **details}, sort_keys=True) + "\n"
    fd = os.open(base / "events.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def claim(base: Path, event_id: str) -> Path | None:
    """Move the pending record to fired/; None if another supervisor got it first."""
    directory = base / "hooks"
    fired = directory / "fired" / f"{event_id}.json"
    try:
        os.rename(directory / "pending" / f"{event_id}.json", fired)
    except FileNotFoundError:
        return None
    fd = os.open(fired.parent, os.O_RDONLY)   # the claim outlives a power cut too
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return fired


def hook_environment(event: dict) -> dict[str, str]:
    """The caller's environment without its ORCHESTRATE_* variables (the hook
    may be started from within an agent's `doit`), plus the event's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ORCHESTRATE_") or k == TIMEOUT_VAR}
    env.update({"ORCHESTRATE_EVENT": event["event"], "ORCHESTRATE_PIPELINE": event["pipeline"],
                "ORCHESTRATE_REASON": event.get("reason") or "",
                "ORCHESTRATE_STATUS": event["status_file"],
                "ORCHESTRATE_EVENT_ID": event["id"], "ORCHESTRATE_ROOT": event["root"]})
    if event.get("task"):
        env["ORCHESTRATE_TASK"] = event["task"]
    return env


def time_limit() -> float:
    try:
        return float(os.environ.get(TIMEOUT_VAR) or TIMEOUT)
    except ValueError:
        return TIMEOUT


def run_hook(command: str | list[str], stdin_path: Path, log_fd: int, cwd: Path,
             env: dict[str, str], limit: float) -> str | None:
    """Run to completion or the limit; the failure's reason, None on exit 0."""
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
    with open(stdin_path, "rb") as stdin:
        try:
            process = subprocess.Popen(argv, stdin=stdin, stdout=log_fd, stderr=log_fd,
                                       cwd=cwd, env=env, start_new_session=True)
        except OSError as err:
            return f"could not start: {err.strerror or err}: {argv[0]}"
    try:
        code = process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        stop_group(process, StopPolicy(KILL_GRACE))   # the one stop policy, bounded
        return f"timeout after {limit:g}s (process group killed)"
    if code == 0:
        return None
    return f"exit {code}" if code > 0 else f"killed by signal {-code}"


def supervise(root: Path, event_id: str) -> int:
    base = root / ".orchestrate"
    fired = claim(base, event_id)
    if fired is None:
        return 0
    record = json.loads(fired.read_text())
    event = record["event"]
    stdin_path = fired.with_name(f"{event_id}.event.json")
    stdin_path.write_text(json.dumps(event, sort_keys=True) + "\n")
    Path(event["status_file"]).write_text(
        json.dumps({"agents": record.get("agents", [])}, sort_keys=True) + "\n")
    (base / "logs").mkdir(parents=True, exist_ok=True)
    log_fd = os.open(base / "logs" / "hooks.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    who = f"{event['event']} {event.get('task') or event['pipeline']} ({event_id})"
    os.write(log_fd, f"{utc_now()} start {who}\n".encode())
    started = time.monotonic()
    limit = time_limit()
    failure = run_hook(record["command"], stdin_path, log_fd, root, hook_environment(event),
                       limit)
    seconds = round(time.monotonic() - started, 3)
    os.write(log_fd, f"{utc_now()} end {who}: {failure or 'exit 0'} after {seconds}s\n".encode())
    os.close(log_fd)
    details = {"hook": event["event"], "id": event_id, "pipeline": event["pipeline"],
               **({"task": event["task"]} if event.get("task") else {}), "seconds": seconds}
    if failure:
        append_event(base, "hook_failed", reason=failure, **details)
    else:
        append_event(base, "hook_ran", **details)
    return 0


def main(argv: list[str]) -> int:
    root, event_id = Path(argv[0]), argv[1]
    try:
        return supervise(root, event_id)
    except Exception as err:   # nobody reads our stderr: say it in events.jsonl
        append_event(root / ".orchestrate", "hook_failed", id=event_id,
                     reason=f"supervisor crashed: {type(err).__name__}: {err}")
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
