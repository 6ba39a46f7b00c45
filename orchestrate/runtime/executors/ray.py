"""The `ray` executor: each agent is one Ray job running the same wrapper.

Through Ray's documented Jobs REST API (POST /api/jobs/, GET /api/jobs/,
GET /api/jobs/{id}, POST /api/jobs/{id}/stop) with the standard library's
urllib, imported only when a Ray run is submitted or asked about: Ray's own
SDK (`ray.job_submission`) costs about 0.7 s and 77 MB to import on the
2-core test machine, against 24 ms and 2 MB for urllib in a process that
already holds the engine, and every scheduling pass would pay it.

The job's submission id is the run id: Ray refuses a second job with the
same id ("already exists"), so a submission is never made twice, and a run
whose answer was lost in a crash is found again by it (`find`). The job's
entrypoint (`ray_entry`) execs the wrapper a local agent would run (same
environment, working directory, log, exit record, claim), so the outcome is
read from the exit record on the shared filesystem exactly as on local;
Ray is asked only what the record cannot say: is the job still pending or
running, and if it ended without a record, with what status and message.

Stopping is Ray's job stop: SIGTERM to the entrypoint and every process
under it, SIGKILL after RAY_JOB_STOP_WAIT_TIME_S, which each job is given
as its agent's kill_grace (the supervisor reads it from the job's
runtime_env). A job still PENDING (waiting for resources) has no process,
and Ray's stop reaches it only once its supervisor starts: stopping it takes
the run's claim instead (`wrapper.abandon_run`), so that whenever Ray does
start it the wrapper exits without running the agent, and the run counts as
ended (`ray: PENDING, stopped before it started`). Every request has a timeout, cut to the time its engine has
left (`time_left`), so an unreachable cluster never hangs a pass.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from ...core.checks import Followup
from ...core.settings import RaySettings, ray_entrypoint_resources
from ...core.spec import Agent
from ..launcher import Launcher
from ..state import Layout, StatusRecord
from ..worktree import output_root
from ..wrapper import abandon_run
from . import Handle, Observation, SubmitError, Unavailable

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
LIVE_STATUSES = frozenset({"PENDING", "RUNNING"})
REQUEST_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0   # a stop must not hang a pass; the next round asks again
STOP_THREADS = 8
ENTRY = Path(__file__).with_name("ray_entry.py")


class RayUnavailable(Unavailable):
    """The Jobs API could not answer (head down, address wrong): nothing may
    be concluded about any job."""


class HttpError(Exception):
    """The Jobs API answered with an error status."""

    def __init__(self, code: int, text: str):
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


def ray_address(settings: RaySettings, environ: dict[str, str]) -> str:
    """`[tool.orchestrate.ray] address`, else RAY_ADDRESS, else the local head's."""
    return (settings.address or environ.get("RAY_ADDRESS", "").strip()
            or DEFAULT_ADDRESS).rstrip("/")


def last_line(text: str) -> str:
    """The meaningful line of an error body (a traceback's last line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def ended_reason(status: str, message: str) -> str:
    """`ray: FAILED ...`: Ray's status and the gist of its message, one line.
    A FAILED message is "... failed with exit code N, last available logs
    ...:" then the job's log, whose last line (say, the shell's "not found")
    is the cause."""
    head, _, logs = (message or "").partition("\n")
    head = head.split(", last available logs")[0].strip()
    tail = [line for line in logs.splitlines()
            if line.strip() and not line.startswith("Running entrypoint for job")]
    said = f"{head}: {tail[-1].strip()}" if tail else head
    reason = f"ray: {status} {said}".strip()
    return reason if len(reason) <= 300 else reason[:297] + "..."


STOPPED_PENDING = "stopped before it started"


def observation(job_id: str, jobs: dict[str, tuple[str, str]]) -> Observation:
    known = jobs.get(job_id)
    if known is None:
        return Observation(False, f"ray: job {job_id} is no longer known to Ray", known=False)
    status, message = known
    if status in LIVE_STATUSES:
        return Observation(True)
    return Observation(False, ended_reason(status, message))


class RayExecutor:
    name = "ray"
    unclaimed_means_never_ran = False   # a job stopped while pending is the user's failure
    polled = True   # other nodes' writes and exits wake no inotify here

    def __init__(self, layout: Layout, settings: RaySettings, launcher: Launcher,
                 time_left: Callable[[], float | None] = lambda: None,
                 environ: dict[str, str] | None = None):
        self.layout = layout
        self.settings = settings
        self.launcher = launcher   # builds the command exactly as for a local agent
        self.time_left = time_left   # seconds its engine has left (None: no bound)
        self.address = ray_address(settings, dict(os.environ if environ is None else environ))
        self._pool: Any = None          # the stop threads (`_stop_pool`), made when first needed
        self._pool_pid = 0
        self._stopping: set[str] = set()   # job ids whose stop request is in flight

    # -- the Jobs API ------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None,
                 timeout: float = REQUEST_TIMEOUT) -> Any:
        """One request; the decoded JSON answer. Raises HttpError for an
        error status, RayUnavailable when nothing answered in time."""
        import urllib.error
        import urllib.request
        left = self.time_left()
        if left is not None:
            if left <= 0:
                raise RayUnavailable("no time left to ask Ray")
            timeout = min(timeout, left)
        if not self.address.startswith(("http://", "https://")):
            raise RayUnavailable(f"the Jobs API's address must be http(s)://HOST:PORT, "
                                 f"got {self.address!r} (set [tool.orchestrate.ray] address "
                                 f"or RAY_ADDRESS)")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.address}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            raise HttpError(err.code, err.read().decode(errors="replace")) from None
        except urllib.error.URLError as err:
            why = getattr(err.reason, "strerror", None) or err.reason
            raise RayUnavailable(f"cannot reach the Jobs API at {self.address} ({why})") \
                from None
        except (TimeoutError, OSError) as err:
            raise RayUnavailable(f"the Jobs API at {self.address} did not answer in "
                                 f"{timeout:g}s" if isinstance(err, TimeoutError)
                                 else f"{self.address}: {err}") from None
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise RayUnavailable(f"{self.address} did not answer as Ray's Jobs API "
                                 f"({text[:80]!r})") from None

    def jobs(self) -> dict[str, tuple[str, str]]:
        """Submission id -> (status, message) of every job the cluster knows,
        in one listing (raises RayUnavailable)."""
        try:
            listed = self._request("GET", "/api/jobs/")
        except HttpError as err:
            raise RayUnavailable(f"listing jobs: {err.code} {last_line(err.text)}") from None
        return {job["submission_id"]: (job.get("status") or "", job.get("message") or "")
                for job in listed or () if isinstance(job, dict) and job.get("submission_id")}

    # -- the executor interface --------------------------------------------
    def submit(self, agent: Agent, run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: Followup | None = None) -> Handle:
        argv, stdin, env = self.launcher.wrapped(agent, run_id, attempt, upstream, followup)
        exit_path = self.layout.exit_file(run_id)
        job_file = exit_path.with_suffix(".ray.json")
        root = output_root(self.layout, agent)
        write_private(job_file, {"task": agent.task, "argv": argv, "env": env,
                                 "cwd": str(root / agent.cwd), "stdin": stdin,
                                 "log": str(log_path)})
        log_path.touch()   # there is a log from submission on, as for a local agent
        body = {
            "entrypoint": shlex.join([sys.executable, str(ENTRY), str(job_file)]),
            "submission_id": run_id,
            "runtime_env": {"env_vars": {
                "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, math.ceil(agent.kill_grace)))}},
            "metadata": {"orchestrate_root": str(self.layout.root), "orchestrate_task": agent.task},
            **ray_entrypoint_resources(agent.resources),
        }
        try:
            answer = self._request("POST", "/api/jobs/", body)
        except HttpError as err:
            if "already exists" in err.text:   # submitted before: never twice
                return Handle(job_id=run_id)
            raise self._refused(f"ray: {last_line(err.text) or err.code}", exit_path, job_file)
        except RayUnavailable as err:
            raise self._refused(f"ray: {err}", exit_path, job_file)
        job_id = answer.get("submission_id") if isinstance(answer, dict) else None
        return Handle(job_id=job_id or run_id)

    @staticmethod
    def _refused(message: str, exit_path: Path, job_file: Path) -> SubmitError:
        """A job Ray may have accepted after all (the request timed out) must
        not run the agent: its wrapper will find the claim taken and exit."""
        abandon_run(exit_path)
        job_file.unlink(missing_ok=True)
        return SubmitError(message)

    def observe(self, records: Iterable[StatusRecord]) -> dict[str, Observation]:
        """One listing for all of them; a cluster that cannot answer says
        nothing (every job is taken as alive until it can)."""
        records = [r for r in records if r.job_id]
        try:
            jobs = self.jobs()
        except RayUnavailable:
            return {r.run_id or "": Observation(True) for r in records}
        seen = {}
        for record in records:
            said = observation(record.job_id or "", jobs)
            if said.alive and record.stop_kind is not None and self._never_runs(record, jobs):
                said = Observation(False, f"ray: PENDING, {STOPPED_PENDING}")
            seen[record.run_id or ""] = said
        return seen

    def stop(self, records: list[StatusRecord], sig: int) -> None:
        """Ray's job stop for each (SIGTERM, SIGKILL after the job's grace);
        a SIGKILL asks again (Ray has no stronger stop). The requests go out
        on a few threads of this process and `stop` returns at once: the
        effect runner stops runs one by one, and a few hundred POSTs in a
        row (0.1-0.3 s each on a busy head) would hold the pass, and the
        scheduling lock, for a minute. Whoever waits for the stop asks the
        listing (`remaining`) until Ray says the jobs ended; a request that
        fails is made again by the next round's SIGKILL. The process waits
        for the requests it queued when it exits, each bounded by the time
        its engine has left."""
        pool = self._stop_pool()
        for job in [r.job_id for r in records if r.job_id]:
            if job not in self._stopping:   # one request in flight per job
                self._stopping.add(job)
                pool.submit(self._stop_one, job)

    def _stop_pool(self) -> Any:
        """The threads that send stops, made again in a forked child (the
        advancer), where its parent's threads do not exist."""
        if self._pool is None or self._pool_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=STOP_THREADS,
                                            thread_name_prefix="ray-stop")
            self._pool_pid = os.getpid()
            self._stopping = set()
        return self._pool

    def _stop_one(self, job_id: str) -> None:
        """One job's stop, unless its run was found PENDING and claimed since
        it was queued (`_never_runs`): Ray's stop would only wait in its
        queue, and hundreds of them would delay the running jobs' stops."""
        try:
            if self.layout.exit_file(job_id).with_suffix(".unstarted").exists():
                return   # the submission id is the run id
            self._request("POST", f"/api/jobs/{job_id}/stop", {}, timeout=STOP_TIMEOUT)
        except (HttpError, RayUnavailable):
            pass
        finally:
            self._stopping.discard(job_id)

    def remaining(self, records: list[StatusRecord]) -> set[str]:
        """The runs whose jobs are still pending or running, from one listing;
        raises RayUnavailable when Ray cannot answer (never taken as ended)."""
        jobs = self.jobs()
        return {r.run_id or "" for r in records
                if r.job_id and observation(r.job_id, jobs).alive
                and not self._never_runs(r, jobs)}

    def _never_runs(self, record: StatusRecord, jobs: dict[str, tuple[str, str]]) -> bool:
        """A job being stopped that Ray still holds PENDING: its claim taken
        now (or by an earlier round: the marker says so), its agent never
        runs, so nothing of it is left to stop. Taken only while Ray says
        PENDING: no entrypoint process exists then, so the claim cannot be
        its wrapper's."""
        exit_path = self.layout.exit_file(record.run_id or "")
        marker = exit_path.with_suffix(".unstarted")
        if marker.exists():
            return True
        if jobs.get(record.job_id or "", ("", ""))[0] != "PENDING":
            return False
        if abandon_run(exit_path):
            marker.touch()
            exit_path.with_suffix(".ray.json").unlink(missing_ok=True)   # nothing to exec
            return True
        return False

    def find(self, run_id: str) -> Handle | None:
        """The job whose submission id is `run_id`, if Ray knows one (raises
        RayUnavailable)."""
        try:
            self._request("GET", f"/api/jobs/{run_id}")
        except HttpError as err:
            if err.code == 404:
                return None
            raise RayUnavailable(f"{err.code} {last_line(err.text)}") from None
        return Handle(job_id=run_id)

    def track(self, record: StatusRecord) -> tuple | None:
        return ()   # Ray's job supervisor owns the job's processes

    def reap(self) -> None:
        pass   # the jobs are Ray's


def write_private(path: Path, data: dict) -> None:
    """The job file, readable by its owner only: it holds the environment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle)
