"""Sandboxed agents beside plain ones, in one run (issue 22's figures).

- launch latency: from spawning the wrapper to the agent's first
  instruction, for the same trivial command, plain, sandboxed (bwrap alone:
  no allowed host, so no proxy) and sandboxed with an allowed host (bwrap +
  the proxy + the bridge's Python start-up); the added median in ms;
- caller block: `doit` on 100 sandboxed agents against 100 plain ones;
- memory: what a running networked sandboxed agent costs beside its own
  command (wrapper, subshell, bwrap's two processes, the proxy), RSS and PSS.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from .harness import doit, wait_for_signals, workspace


def _agent(sandbox):
    from orchestrate.core.spec import Agent
    return Agent(pipeline="bench", name="a", command="date +%s%N", sandbox=sandbox)


def _start_latencies(root: Path, sandbox, count: int) -> list[float]:
    """ms from Popen of the real wrapper to the command's first line, `count` times."""
    from orchestrate.runtime.launcher import Launcher
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.wrapper import remove_run_files
    layout = Layout(root)
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    layout.log("bench", "a").parent.mkdir(parents=True, exist_ok=True)
    layout.log("bench", "a").touch()
    launcher = Launcher(layout)
    agent = _agent(sandbox)
    found = []
    for i in range(count):
        run_id = f"bench.a.{i}.{os.getpid()}"
        argv, _, env = launcher.wrapped(agent, run_id, 1, layout.no_upstream_file)
        began = time.time_ns()
        done = subprocess.run(argv, env=env, cwd=root, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        found.append((int(done.stdout.strip().splitlines()[-1]) - began) / 1e6)
        remove_run_files(layout, run_id)
        layout.exit_file(run_id).unlink(missing_ok=True)
    return found


def _latency_rows(count: int) -> list:
    from orchestrate.core.sandbox import Sandbox
    from .scenarios import Row
    with workspace({}) as root:
        plain = _start_latencies(root, None, count)
        boxed = _start_latencies(root, Sandbox(), count)
        networked = _start_latencies(root, Sandbox(network=("127.0.0.1:9",)), count)
    base = statistics.median(plain)
    name = "sandbox: launch to first instruction"
    return [Row(name, "added ms, bwrap (no network)", [v - base for v in boxed], "<= 20", "ms",
                note=f"plain median {base:.1f} ms"),
            Row(name, "added ms, bwrap + proxy + bridge", [v - base for v in networked],
                "<= 20", "ms", note="the bridge is a Python start-up inside the sandbox")]


def _caller_seconds(n: int, sandbox: bool) -> float:
    extra = "sandbox = true\n" if sandbox else ""
    text = "".join(f'[agents.a{i}]\ncommand = "sleep 1"\n{extra}\n' for i in range(n))
    with workspace({"bench": text}) as root:
        seconds = doit(root)[1]
        wait_for_signals(root, n)
    return seconds


def _caller_rows(n: int, runs: int) -> list:
    from .scenarios import Row
    ratios = []
    for _ in range(runs):
        ratios.append(_caller_seconds(n, True) / _caller_seconds(n, False))
    return [Row(f"sandbox: caller block, doit on {n} agents", "sandboxed / plain", ratios,
                "<= 1.5")]


def _memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB."""
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _run_processes(root: Path) -> list[tuple[int, bytes]]:
    needle = f"ORCHESTRATE_ROOT={root}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                found.append((int(entry.name), handle.read().split(b"\0")[0]))
        except OSError:
            continue
    return found


def _memory_rows(n: int) -> list:
    from .scenarios import Row
    text = "".join(f'[agents.a{i}]\ncommand = "sleep 60"\n'
                   f'sandbox = {{ network = ["127.0.0.1:9"] }}\n\n' for i in range(n))
    with workspace({"bench": text}) as root:
        doit(root)
        deadline = time.monotonic() + 60
        def proxies() -> int:
            return sum(b"python" in argv0 for _, argv0 in _run_processes(root))
        while proxies() < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)   # bridges have exec'd their agents
        owned = [pid for pid, argv0 in _run_processes(root) if argv0 != b"sleep"]
        rss = sum(_memory_kb(p)[0] for p in owned) / 1024 / n
        pss = sum(_memory_kb(p)[1] for p in owned) / 1024 / n
        doit(root, "cancel")
    name = f"sandbox: {n} networked sandboxed agents running"
    return [Row(name, "RSS MB per agent beside its command", [rss], "<= 8", "MB",
                note="wrapper, subshell, bwrap x2, proxy; shared pages counted in each"),
            Row(name, "PSS MB per agent beside its command", [pss], "<= 8", "MB",
                note="shared pages divided among the processes that map them")]


def sandbox(sizes) -> list:
    if shutil.which("bwrap") is None:   # the figures need bubblewrap (apt-get install bubblewrap)
        return []
    rows = _latency_rows(10 * sizes.runs)
    rows += _caller_rows(sizes.caller_agents, sizes.runs)
    rows += _memory_rows(max(1, sizes.caller_agents // 5))
    return rows
