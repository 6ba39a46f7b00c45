"""The `slurm` executor: each agent is one batch job running the same wrapper.

The job script execs the wrapper a local agent would run (same environment,
ORCHESTRATE_* included, working directory, log, exit record, claim), so the
outcome is read from the exit record on the shared filesystem exactly as on
local. Slurm is asked only what the exit record cannot say: is the job still
pending or running, and if it ended without a record, in what state
(NODE_FAIL, TIMEOUT, CANCELLED, OUT_OF_MEMORY...). The job's name is the run
id, so a run whose job id was lost in a crash is found again by name.

Every Slurm command goes through the executor's `_run` (SLURM_CONF and the
rest of the environment as they are), with a timeout, cut to the time its
engine has left (`time_left`: a `doit cancel` must return within kill_grace +
10 s): a hung controller must not hang a pass. Nothing is cached between
calls: the engine asks once per poll, `doit cancel` once per round.
"""
from __future__ import annotations

import shlex
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from ...core.checks import Followup
from ..launcher import Launcher
from ...core.spec import Agent
from ..state import Layout, StatusRecord
from ..worktree import output_root
from ..wrapper import abandon_run
from . import Handle, Observation, SubmitError, Unavailable
from ...core.settings import SlurmSettings, sbatch_options

# States in which the job's processes may still exist (squeue's %T names).
LIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
    "RESIZING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STAGE_OUT",
    "SPECIAL_EXIT"})
COMMAND_TIMEOUT = 60.0
SCANCEL_TIMEOUT = 10.0   # a stop must not hang a pass; the next pass tries again
Run = Callable[..., subprocess.CompletedProcess]


class SlurmUnavailable(Unavailable):
    """squeue/sacct could not answer (controller down, command missing):
    nothing may be concluded about any job."""


def _slurm(argv: list[str], env: dict[str, str] | None = None,
           timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def job_script(argv: list[str], stdin: str | None) -> str:
    """The batch script: exec the wrapper, so the job's shell is the wrapper."""
    redirect = shlex.quote(stdin) if stdin else "/dev/null"
    return f"#!/bin/sh\nexec {shlex.join(argv)} < {redirect}\n"


def sbatch_argv(run_id: str, log: Path, cwd: Path, options: list[str], script: Path) -> list[str]:
    return ["sbatch", "--parsable", f"--job-name={run_id}", f"--output={log}",
            "--open-mode=truncate", f"--chdir={cwd}", "--export=ALL", *options, str(script)]


def parse_states(text: str) -> dict[str, str]:
    """"12|RUNNING" lines (squeue) or "12|CANCELLED by 0" (sacct) -> id -> STATE."""
    states = {}
    for line in text.splitlines():
        job, _, state = line.strip().partition("|")
        if job and state:
            states[job.split(".")[0]] = state.split()[0].rstrip("+")
    return states


def query_states(job_ids: list[str], run: Run = _slurm) -> dict[str, str]:
    """job id -> Slurm state, in one squeue call for all of them (ended jobs
    stay in squeue for MinJobAge); those it no longer knows, one sacct call
    (works only where accounting is on). Unknown to both: absent."""
    if not job_ids:
        return {}
    try:
        queued = run(["squeue", "--noheader", "--states=all", "--format=%i|%T",
                         f"--jobs={','.join(job_ids)}"])
    except FileNotFoundError:
        raise SlurmUnavailable("squeue not found") from None
    except OSError as err:
        raise SlurmUnavailable(f"squeue: {err.strerror or err}") from None
    except subprocess.TimeoutExpired as err:
        raise SlurmUnavailable(f"squeue did not answer in {err.timeout:g}s" if err.timeout
                               else "squeue did not answer in time") from None
    if queued.returncode != 0 and "Invalid job id" not in queued.stderr:
        raise SlurmUnavailable(_first_line(queued.stderr) or f"squeue exit {queued.returncode}")
    states = parse_states(queued.stdout) if queued.returncode == 0 else {}
    missing = [job for job in job_ids if job not in states]
    if missing:
        try:
            ended = run(["sacct", "--noheader", "--parsable2", "--allocations",
                            "--format=JobID,State", f"--jobs={','.join(missing)}"])
            if ended.returncode == 0:
                states.update({k: v for k, v in parse_states(ended.stdout).items()
                               if k in missing})
        except (OSError, subprocess.TimeoutExpired):
            pass
    return states


def observation(job_id: str, states: dict[str, str]) -> Observation:
    state = states.get(job_id)
    if state is None:
        return Observation(False, f"slurm: job {job_id} is no longer known to Slurm",
                           known=False)
    if state in LIVE_STATES:
        return Observation(True)
    return Observation(False, f"slurm: {state}")


def cancel_jobs(job_ids: list[str], sig: int, run: Run = _slurm) -> None:
    """SIGTERM: jobs still pending are cancelled outright; running ones have
    the signal sent to their batch shell (the wrapper) and every process of
    them (`--full`). SIGKILL: the same with KILL, then the jobs are cancelled
    (Slurm kills whatever is left of them). One scancel per step for all the
    jobs. `--state` filters make each call a no-op for a job in the other
    state: signalling a pending job makes scancel retry for a long time
    ("Job can not be altered now")."""
    job_ids = [job for job in job_ids if job]
    if not job_ids:
        return
    name = signal.Signals(sig).name.removeprefix("SIG")
    calls = [["scancel", "--state=PENDING", *job_ids],
             ["scancel", "--full", f"--signal={name}", "--state=RUNNING", *job_ids]]
    if sig == signal.SIGKILL:
        calls.append(["scancel", *job_ids])
    for argv in calls:
        try:
            run(argv, timeout=SCANCEL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            pass


class SlurmExecutor:
    name = "slurm"
    unclaimed_means_never_ran = False
    polled = True   # other hosts' writes and exits wake no inotify here

    def __init__(self, layout: Layout, settings: SlurmSettings, launcher: Launcher,
                 time_left: Callable[[], float | None] = lambda: None):
        self.layout = layout
        self.settings = settings
        self.launcher = launcher   # builds the command exactly as for a local agent
        self.time_left = time_left   # seconds its engine has left (None: no bound)

    def _run(self, argv: list[str], env: dict[str, str] | None = None,
             timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """A Slurm command, given at most the time the engine has left."""
        left = self.time_left()
        if left is not None:
            if left <= 0:
                raise subprocess.TimeoutExpired(argv, 0)
            timeout = min(timeout, left)
        return _slurm(argv, env=env, timeout=timeout)

    def submit(self, agent: Agent, run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: Followup | None = None) -> Handle:
        argv, stdin, env = self.launcher.wrapped(agent, run_id, attempt, upstream, followup)
        exit_path = self.layout.exit_file(run_id)
        script = exit_path.with_suffix(".sbatch")
        script.write_text(job_script(argv, stdin))
        log_path.touch()   # there is a log from submission on, as for a local agent
        argv = sbatch_argv(run_id, log_path, output_root(self.layout, agent) / agent.cwd,
                           sbatch_options(self.settings, agent.resources), script)
        try:
            answer = self._run(argv, env=env)
        except FileNotFoundError:
            raise self._refused('sbatch not found (is Slurm installed here? '
                                'executor = "local" runs agents on this machine)', exit_path)
        except subprocess.TimeoutExpired:
            raise self._refused(f"sbatch did not answer in {COMMAND_TIMEOUT:g}s", exit_path)
        finally:
            script.unlink(missing_ok=True)
        job_id = answer.stdout.strip().split(";")[0]
        if answer.returncode != 0 or not job_id.isdigit():
            said = _first_line(answer.stderr) or _first_line(answer.stdout)
            raise self._refused(said or f"sbatch exit {answer.returncode}", exit_path)
        return Handle(job_id=job_id)

    @staticmethod
    def _refused(message: str, exit_path: Path) -> SubmitError:
        """A job sbatch may have queued after all (it timed out) must not run
        the agent: its wrapper will find the claim taken and exit."""
        abandon_run(exit_path)
        return SubmitError(message)

    def observe(self, records: Iterable[StatusRecord]) -> dict[str, Observation]:
        """One squeue call for all of them; a controller that cannot answer
        says nothing (every job is taken as alive until it can)."""
        records = [r for r in records if r.job_id]
        try:
            states = query_states([r.job_id or "" for r in records], self._run)
        except SlurmUnavailable:
            return {r.run_id or "": Observation(True) for r in records}
        return {r.run_id or "": observation(r.job_id or "", states) for r in records}

    def stop(self, records: list[StatusRecord], sig: int) -> None:
        cancel_jobs([r.job_id or "" for r in records], sig, self._run)

    def find(self, run_id: str) -> Handle | None:
        """The job named `run_id`, if Slurm knows one (raises SlurmUnavailable)."""
        try:
            found = self._run(["squeue", "--noheader", "--states=all", "--format=%i|%T",
                            f"--name={run_id}"])
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SlurmUnavailable(f"squeue: {err}") from None
        if found.returncode != 0:
            raise SlurmUnavailable(_first_line(found.stderr) or "squeue failed")
        jobs = sorted(parse_states(found.stdout), key=int)
        return Handle(job_id=jobs[-1]) if jobs else None

    def track(self, record: StatusRecord) -> tuple | None:
        return ()   # Slurm owns the job's processes

    def remaining(self, records: list[StatusRecord]) -> set[str]:
        """The runs whose jobs are still pending or running, from one squeue
        call; raises SlurmUnavailable when Slurm cannot answer (a job is
        never taken as ended then)."""
        jobs = {r.job_id: r.run_id or "" for r in records if r.job_id}
        states = query_states(list(jobs), self._run)
        return {run_id for job, run_id in jobs.items() if observation(job, states).alive}

    def reap(self) -> None:
        pass   # its commands are waited for; the jobs are Slurm's
