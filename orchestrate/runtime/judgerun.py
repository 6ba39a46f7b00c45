"""A best_of judge's supervisor: `python -m orchestrate.runtime.judgerun SPEC`.

Started detached (a session of its own) by the orchestrator process whose
pass found a contest to judge, it outlives it: it runs the judge in its own
process group, in the workspace root, with ORCHESTRATE_CANDIDATES; sends the
judge's output to the agent's log; stops the judge at its time limit with
the one stop policy; and writes the answer (the judge's exit code and
output) atomically, fsynced, for whichever orchestrator process passes next
(`runtime/bestof.py`), then touches `runs/<pipeline>.<agent>.judged` so that
a waiting advancer looks at once. A SIGTERM (a cancel) stops the judge the
same way.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..core.stopping import StopPolicy
from .stopping import stop_group

OUTPUT_KEPT = 64 * 1024   # the answer keeps the end of the judge's output


def judge_environment(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without its ORCHESTRATE_* variables, plus the judge's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATE_")}
    env.update(extra)
    return env


def run(spec: dict[str, Any]) -> tuple[int | None, str]:
    """(exit code, None past the limit; its standard output)."""
    command = spec["command"]
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    with open(spec["log"], "ab") as log:
        try:
            process = subprocess.Popen(argv, cwd=spec["root"], env=judge_environment(spec["env"]),
                                       stdout=subprocess.PIPE, stderr=log,
                                       stdin=subprocess.DEVNULL, process_group=0)
        except OSError as err:
            return 127, f"could not start: {err.strerror or err}: {argv[0]}\n"

        def on_signal(number: int, _frame: Any) -> None:   # cancelled: the judge goes too
            stop_group(process, StopPolicy(spec["grace"]))
            sys.exit(128 + number)
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, on_signal)
        try:
            out, _ = process.communicate(timeout=spec["timeout"])
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            stop_group(process, StopPolicy(spec["grace"]))
            out, code = b"", None
        log.write(out)
    return code, out.decode(errors="replace")


def write_durably(path: Path, text: str) -> None:
    """tmp + fsync + rename + fsync of the folder (as `state.write_atomic`,
    whose module costs this short-lived process ten times its own start)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    code, output = run(spec)
    answer = {"key": spec["key"], "exit_code": code, "output": output[-OUTPUT_KEPT:]}
    write_durably(Path(spec["answer"]), json.dumps(answer) + "\n")
    Path(spec["wake"]).touch()   # an advancer watching the runs folder looks now
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
