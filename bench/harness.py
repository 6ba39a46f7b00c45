"""Temporary workspaces, timed `doit` calls, and reading the state a run left."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


# A user's Python keeps compiled bytecode; some machines (this project's
# among them) set PYTHONDONTWRITEBYTECODE, which makes every start compile
# orchestrate and doit from source. Measure what a user waits for.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


@contextmanager
def workspace(pipelines: dict[str, str]) -> Iterator[Path]:
    """A fresh workspace made by `python -m orchestrate init`, removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="orchestrate-bench-")).resolve()
    try:
        subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                       capture_output=True)
        (root / "pipelines" / "example.toml").unlink()
        for name, text in pipelines.items():
            (root / "pipelines" / f"{name}.toml").write_text(text)
        (root / "starts").mkdir()
        yield root
    finally:
        wait_for_advancers(root, timeout=60)
        for pid in advancer_pids(root):   # one that cannot finish (a cluster gone): ended
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def doit(root: Path, *args: str) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run doit in `root`: (invocation wall clock time, seconds until it returned, result)."""
    invoked = time.time()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=root,
                          capture_output=True, text=True, env=USER_ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"doit {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return invoked, elapsed, proc


def signal_times(root: Path) -> dict[str, float]:
    """Agent -> mtime of its .done signal (when the signal appeared)."""
    return {f"{p.parent.name}:{p.stem}": p.stat().st_mtime_ns / 1e9
            for p in (root / ".orchestrate" / "signals").glob("*/*.done")}


def wait_for_signals(root: Path, count: int, timeout: float = 300) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        times = signal_times(root)
        if len(times) >= count:
            return times
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(times)} of {count} signals after {timeout}s")
        time.sleep(0.02)


def events(root: Path) -> list[dict]:
    path = root / ".orchestrate" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def advancer_pids(root: Path) -> list[int]:
    pids = []
    for lock in (root / ".orchestrate" / "advancers").glob("*.lock"):
        text = lock.read_text().strip()
        try:
            if text.isdigit() and os.readlink(f"/proc/{text}/cwd") == str(root):
                pids.append(int(text))
        except OSError:
            pass
    return pids


def wait_for_advancers(root: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while advancer_pids(root) and time.monotonic() < deadline:
        time.sleep(0.02)


def advancer_cpu(root: Path) -> float:
    """CPU seconds the advancers reported when they exited."""
    return sum(e.get("cpu_seconds", 0.0) for e in events(root) if e["event"] == "advancer_exit")


def start_times(root: Path) -> dict[str, float]:
    """Agent -> when its command started (written by `date` as its first step)."""
    return {p.name: int(p.read_text()) / 1e9 for p in (root / "starts").iterdir()
            if p.read_text().strip()}


def stamp_start(command: str) -> str:
    """Prefix a shell command so the agent records when it really started."""
    return f'date +%s%N > "$ORCHESTRATE_ROOT/starts/$ORCHESTRATE_AGENT"; {command}'


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def pipeline(agents: dict[str, dict]) -> str:
    """TOML text for agents given as name -> {command, after}."""
    lines = []
    for name, spec in agents.items():
        lines.append(f"[agents.{name}]")
        lines.append(f"command = {json.dumps(spec['command'])}")
        if spec.get("after"):
            lines.append(f"after = {json.dumps(spec['after'])}")
        lines.append("")
    return "\n".join(lines)
