"""A real one-node Slurm on this machine, for tests and the bench.

`munged`, `slurmctld` and `slurmd` (Debian's `munge` and `slurm-wlm`) run in
the foreground as our children with everything they write (key, socket,
state, spool, logs, pid files) in one temporary folder and a generated
`slurm.conf` on random free ports; `SLURM_CONF` points the client commands
(sbatch, squeue, scancel) at it. Stopped by PID, never by name.

proctrack/linuxproc and task/none need no cgroups, so this runs in a plain
container; accounting is off, so ended jobs are seen through squeue until
MinJobAge (set long) and never through sacct.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

INSTALL = "apt-get install -y slurm-wlm munge"
DAEMONS = ("munged", "slurmctld", "slurmd")


class ClusterUnavailable(RuntimeError):
    """The cluster could not be started here (missing package, daemon died)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class SlurmCluster:
    """One node, one partition `debug`, CPUs and memory declared large
    (config_overrides) so hundreds of small jobs can run side by side."""

    def __init__(self, folder: Path, cpus: int = 256):
        self.folder = folder
        self.cpus = cpus
        self.node = socket.gethostname().split(".")[0]
        self.conf = folder / "slurm.conf"
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        missing = [d for d in DAEMONS if _which(d) is None]
        if missing or _which("sbatch") is None:
            raise ClusterUnavailable(f"{', '.join(missing) or 'sbatch'} not installed "
                                     f"(install: {INSTALL})")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root "
                                     "(SlurmUser=root); run the tests as root")
        for sub in ("state", "spool", "log", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder / "munge", 0o700)
        key = self.folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.socket = self.folder / "munge" / "munge.socket"
        self._write_conf()
        try:
            self._spawn("munged", [_which("munged"), "-F", "-f", f"--socket={self.socket}",
                                   f"--key-file={key}",
                                   f"--log-file={self.folder / 'log/munged.log'}",
                                   f"--pid-file={self.folder / 'munge/munged.pid'}",
                                   f"--seed-file={self.folder / 'munge/munged.seed'}"])
            self._wait(lambda: self.socket.exists(), timeout, "munged's socket")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf),
                                   "-N", self.node])
            self._wait(self._node_idle, timeout, "the node to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _write_conf(self) -> None:
        f = self.folder
        self.conf.write_text(f"""\
ClusterName=orchestrate-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={f / 'state'}
SlurmdSpoolDir={f / 'spool'}
SlurmctldPidFile={f / 'slurmctld.pid'}
SlurmdPidFile={f / 'slurmd.pid'}
SlurmctldLogFile={f / 'log/slurmctld.log'}
SlurmdLogFile={f / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=3600
KillWait=2
InactiveLimit=0
SchedulerParameters=sched_interval=1
MessageTimeout=20
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=262144 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.folder / "log" / f"{name}.out", "ab")
        env = {**os.environ, **self.env}
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=env,
                                                start_new_session=True)
        log.close()

    def _node_idle(self) -> bool:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with {process.returncode}: "
                                         f"{self.log_tail(name)}")
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env={**os.environ, **self.env},
                             capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")

    def _no_job_running(self) -> bool:
        out = subprocess.run(["squeue", "--noheader", "--format=%i",
                              "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED"],
                             env={**os.environ, **self.env}, capture_output=True, text=True,
                             timeout=30)
        return out.returncode == 0 and not out.stdout.strip()

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"timed out waiting for {what}: "
                                         + " | ".join(self.log_tail(n) for n in self.processes))
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 5) -> str:
        for path in (self.folder / "log" / f"{name}.log", self.folder / "log" / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                return " / ".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons by PID (TERM, then KILL)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            try:   # every job ends before slurmd does, or its processes would outlive it
                subprocess.run(["scancel", "--user=root"], env={**os.environ, **self.env},
                               capture_output=True, timeout=30)
                self._wait(self._no_job_running, 30, "jobs to end")
            except (OSError, subprocess.TimeoutExpired, ClusterUnavailable):
                pass   # the daemons are stopped below whatever scancel did
        for name in reversed(DAEMONS):
            process = self.processes.pop(name, None)
            if process is None:
                continue
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
