"""A real one-node Ray head on this machine, for tests and the bench.

`ray start --head` from Ray's own venv (`.ci/ray-venv`, kept apart from the
project's: Ray's dependencies are heavy), on free ports, with a private
short temp dir (Ray's Unix socket paths have a length limit), a few CPUs
and the dashboard (the Jobs API) on 127.0.0.1. `ray start` returns once the
head is up; it was started as a session leader, so every daemon of the head
and every Ray worker it spawns stays in that session, and the jobs'
entrypoints and watchers (new sessions of their own) are the workers'
descendants. Stopped by walking that session and its descendants, never
with `ray stop` (which kills every Ray process on the machine by name).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
RAY_VERSION = "2.60.0"
INSTALL = (f"python3 -m venv .ci/ray-venv && .ci/ray-venv/bin/pip install "
           f"'ray[default]=={RAY_VERSION}'")


class HeadUnavailable(RuntimeError):
    """The head could not be started here (Ray not installed, no port...)."""


def ray_binary() -> Path:
    """ORCHESTRATE_TEST_RAY, else the venv .ci/run installs."""
    return Path(os.environ.get("ORCHESTRATE_TEST_RAY") or CHECKOUT / ".ci/ray-venv/bin/ray")


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every live process."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                found[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return found


class RayHead:
    def __init__(self, cpus: int = 4, memory: int = 4 << 30):
        self.cpus = cpus
        self.memory = memory
        self.folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        self.session: int | None = None
        self.address = ""

    def start(self, timeout: float = 90.0) -> "RayHead":
        ray = ray_binary()
        if not os.access(ray, os.X_OK):
            raise HeadUnavailable(f"{ray} not found")
        gcs, dashboard, manager, objects, client, agent_http, agent_grpc, metrics, \
            runtime_env = _free_ports(9)
        argv = [str(ray), "start", "--head", f"--port={gcs}",
                "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}", f"--node-manager-port={manager}",
                f"--object-manager-port={objects}", f"--ray-client-server-port={client}",
                f"--dashboard-agent-listen-port={agent_http}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
                f"--temp-dir={self.folder}", f"--num-cpus={self.cpus}", "--num-gpus=0",
                f"--memory={self.memory}", "--object-store-memory=100000000",
                "--include-dashboard=true", "--disable-usage-stats"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        log = open(self.folder / "start.log", "wb")
        try:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        finally:
            log.close()
        self.session = process.pid
        self.address = f"http://127.0.0.1:{dashboard}"
        try:
            code = process.wait(timeout=timeout)
            if code != 0:
                raise HeadUnavailable(f"ray start exited with {code}: {self.log_tail()}")
            self._wait_for_jobs_api(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_jobs_api(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.address}/api/jobs/", timeout=5) as answer:
                    json.loads(answer.read())
                    return
            except (OSError, ValueError) as err:
                if time.monotonic() > deadline:
                    raise HeadUnavailable(f"the Jobs API at {self.address} did not answer: "
                                          f"{err}; {self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self, lines: int = 5) -> str:
        path = self.folder / "start.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return " / ".join(text.splitlines()[-lines:]) or "(no log)"

    def pids(self) -> set[int]:
        """Every process of the head: its session, and every descendant of
        it (job entrypoints and their watchers start sessions of their own)."""
        if self.session is None:
            return set()
        table = _processes()
        ours = {pid for pid, (_, sid) in table.items() if sid == self.session}
        grew = True
        while grew:
            more = {pid for pid, (parent, _) in table.items() if parent in ours} - ours
            ours |= more
            grew = bool(more)
        return ours

    def stop(self, timeout: float = 30.0) -> None:
        """SIGKILL every process of the head until none is left (each kill
        round finds the children that were forked meanwhile)."""
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)
