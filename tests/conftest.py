"""Test workspaces made by `python -m orchestrate init`, driven by the real doit."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FAKE_AGENT = Path(__file__).with_name("fake_agent.py")
FAKE_CLI = Path(__file__).with_name("fake_cli.py")
PRESETS = ("claude", "codex", "gemini", "aider")
CHECKOUT = Path(__file__).resolve().parent.parent
# Where .ci/run installs the real CLIs; ORCHESTRATE_TEST_<PRESET>_CLI overrides.
REAL_CLIS = {
    "claude": CHECKOUT / ".ci/node/node_modules/.bin/claude",
    "codex": CHECKOUT / ".ci/node/node_modules/.bin/codex",
    "gemini": CHECKOUT / ".ci/node/node_modules/.bin/gemini",
    "aider": CHECKOUT / ".ci/aider-venv/bin/aider",
}
INSTALL_REAL_CLIS = (
    "npm install --prefix .ci/node @anthropic-ai/claude-code@2.1.197 @openai/codex@0.169.0 "
    "@google/gemini-cli@0.61.0; python3 -m venv .ci/aider-venv && "
    ".ci/aider-venv/bin/pip install aider-chat==0.86.2")


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` until it is truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def process_stats():
    """(pid, the fields of /proc/PID/stat after the command name) for every process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as handle:
                    yield int(entry.name), handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue


def group_alive(pgid: int) -> bool:
    """A process of the group that is not a zombie (its parent may reap it later)."""
    return any(int(fields[2]) == pgid and fields[0] != "Z" for _, fields in process_stats())


class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.ledger = root / "ledger.jsonl"
        self.state = root / ".orchestrate"

    def agent_cmd(self, *args: str) -> str:
        """A shell command string running the fake agent (quoted safely)."""
        return " ".join(shlex.quote(a) for a in
                        [sys.executable, str(FAKE_AGENT), str(self.ledger), *args])

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.root), *args], check=True,
                              capture_output=True, text=True).stdout

    def make_git_repo(self, ignore: str = ".orchestrate/\n") -> None:
        """The workspace as a git repository with one commit (for worktrees)."""
        self.git("init", "-q", "-b", "main")
        self.git("config", "user.email", "t@example.invalid")
        self.git("config", "user.name", "test")
        (self.root / ".gitignore").write_text(ignore)
        self.git("add", "-A")
        self.git("commit", "-qm", "initial")

    def write_pipeline(self, name: str, text: str) -> None:
        (self.root / "pipelines" / f"{name}.toml").write_text(text)

    def doit(self, *args: str, timeout: float = 60, check_rc: int | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "doit", *args], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        if check_rc is not None:
            assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
        return proc

    def fingerprint_fields(self, task: str) -> dict:
        """The staleness fields a status record of `task` would hold if it were
        launched now (for tests that forge a crash's leftovers)."""
        from orchestrate.runtime.engine import Engine
        from orchestrate.core.selection import select
        from orchestrate.runtime.workspace import load_workspace
        workspace = load_workspace(self.root)
        engine = Engine(workspace)
        agents = select(workspace, [task])
        result = engine.run_pass(agents)
        decision = result.decisions[task]
        return {"fingerprint": decision.fingerprint.digest,
                "config_digest": decision.fingerprint.config,
                "inputs": result.facts[task].inputs,
                "upstream": decision.fingerprint.upstream}

    def launches(self, agent: str | None = None) -> list[dict]:
        if not self.ledger.exists():
            return []
        entries = [json.loads(l) for l in self.ledger.read_text().splitlines() if l]
        return [e for e in entries if agent is None or e["agent"] == agent]

    def signal(self, pipeline: str, agent: str) -> Path:
        return self.state / "signals" / pipeline / f"{agent}.done"

    def status(self, pipeline: str, agent: str) -> dict | None:
        path = self.state / "status" / pipeline / f"{agent}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def state_of(self, pipeline: str, agent: str) -> str | None:
        record = self.status(pipeline, agent)
        return record["state"] if record else None

    def wait_state(self, pipeline: str, agent: str, *states: str, timeout: float = 20.0):
        return wait_until(lambda: self.state_of(pipeline, agent) in states, timeout,
                          f"{pipeline}:{agent} in {states}")

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Until no advancer of this workspace is alive."""
        wait_until(lambda: not self.advancer_pids(), timeout, "advancers to exit")

    def advancer_pids(self) -> list[int]:
        pids = []
        for lock in (self.state / "advancers").glob("*.lock"):
            text = lock.read_text().strip()
            if text.isdigit() and _is_our_process(int(text), self.root):
                pids.append(int(text))
        return pids

    def orchestrator_pids(self) -> list[int]:
        """Every `python -m doit` process working in this workspace: callers,
        the children they forked, advancers. Never an agent."""
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                if argv[1:3] == [b"-m", b"doit"] and _is_our_process(int(entry.name), self.root):
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
        return found

    def kill_orchestrators(self) -> None:
        """SIGKILL every orchestrator process, and only those: a child `doit`
        forked for an agent looks like one until it execs the agent's wrapper,
        so each candidate is stopped, looked at again once it is stopped (a
        stopped process cannot exec), and killed only if it still is one."""
        for pid in self.orchestrator_pids():
            try:
                os.kill(pid, signal.SIGSTOP)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and _state(pid) not in (b"T", b"Z"):
                    pass
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    doit = handle.read().split(b"\0")[1:3] == [b"-m", b"doit"]
                os.kill(pid, signal.SIGKILL if doit else signal.SIGCONT)
            except (ProcessLookupError, FileNotFoundError):
                pass

    def agent_pids(self) -> list[int]:
        needle = f"ORCHESTRATE_ROOT={self.root}".encode()
        found = []
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    env = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                if needle in env:
                    found.append(int(entry.name))
        return found

    def kill_everything(self) -> None:
        for pid in self.orchestrator_pids():
            _kill(pid, by_group=False)
        for pid in self.agent_pids():
            _kill(pid, by_group=True)


def _is_our_process(pid: int, root: Path) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(root)
    except OSError:
        return False


def _state(pid: int) -> bytes:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return handle.read().rsplit(b")", 1)[1].split()[0]


def _kill(pid: int, by_group: bool) -> None:
    try:
        if by_group:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def fake_bins(tmp_path: Path) -> dict[str, str]:
    """Executables standing in for the agent CLIs, and the ORCHESTRATE_<X>_BIN
    variables that point orchestrate at them."""
    directory = tmp_path / "bin"
    directory.mkdir()
    env = {}
    for preset in PRESETS:
        path = directory / preset
        path.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} '
                        f'{shlex.quote(str(FAKE_CLI))} {preset} "$@"\n')
        path.chmod(0o755)
        env[f"ORCHESTRATE_{preset.upper()}_BIN"] = str(path)
    return env


def real_cli(preset: str) -> str:
    """The installed real CLI of `preset`; under CI=true a missing one fails
    the test, elsewhere it skips with the command that installs it."""
    path = Path(os.environ.get(f"ORCHESTRATE_TEST_{preset.upper()}_CLI") or REAL_CLIS[preset])
    if os.access(path, os.X_OK):
        return str(path)
    message = f"real {preset} CLI not found at {path}; install with: {INSTALL_REAL_CLIS}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def ws(tmp_path: Path):
    root = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    (root / "pipelines" / "example.toml").unlink()
    workspace = Workspace(root.resolve())
    yield workspace
    workspace.kill_everything()
    wait_until(lambda: not workspace.agent_pids(), 10, "agents to be gone")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node Slurm (tests/slurm_cluster.py) for the whole session,
    SLURM_CONF set for this process and every doit it starts. Under CI=true a
    cluster that cannot start fails the test; elsewhere it skips, saying how
    to install it."""
    from slurm_cluster import INSTALL, ClusterUnavailable, SlurmCluster
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Slurm test cluster did not start: {err}")
        pytest.skip(f"no Slurm test cluster ({err}); install: {INSTALL}")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
