"""A Ray job's entrypoint: become the agent's wrapper, exactly as a local launch.

Run as `<the orchestrator's python> ray_entry.py <job file>` by Ray's job
supervisor on some node of the cluster (the workspace is on a filesystem the
nodes share). The job file (`runs/<run id>.ray.json`, mode 0600) holds what
`Launcher.wrapped` made: the wrapper's argv, its environment, working
directory, stdin and log. The environment travels by file, not in the job's
`runtime_env`, so it never lands in Ray's job table (which the dashboard
shows to everyone who can reach it); the file is removed once read.

Ray's own variables (RAY_*: its GCS address for an agent that uses Ray
itself) and the devices Ray assigned (CUDA_VISIBLE_DEVICES and the like)
are kept over ours. Standard library only, loaded by path: no import of the
package, so the entrypoint costs one interpreter start and one exec.
"""
import json
import os
import sys


def job_environment(ours: dict, rays: dict) -> dict:
    """The wrapper's environment, with what Ray decided for this job on top."""
    env = dict(ours)
    env.update({k: v for k, v in rays.items()
                if k.startswith("RAY_") or k.endswith("_VISIBLE_DEVICES")})
    return env


def main(job_file: str) -> None:
    try:
        with open(job_file) as handle:
            job = json.load(handle)
    except FileNotFoundError:   # its run was stopped (or settled) before Ray started it
        sys.exit(f"orchestrate: {job_file} is gone: the run was stopped before it started")
    os.unlink(job_file)
    argv = job["argv"]
    try:
        os.chdir(job["cwd"])
        stdin = os.open(job["stdin"] or os.devnull, os.O_RDONLY)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:   # Ray's log, and so the job's FAILED message, says why
        sys.exit(f"orchestrate: cannot start {job['task']}: {err}")
    os.dup2(stdin, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.execve(argv[0], argv, job_environment(job["env"], dict(os.environ)))


if __name__ == "__main__":
    main(sys.argv[1])
