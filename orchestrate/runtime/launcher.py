"""Start an agent detached: its own session, stdin /dev/null, output to its log.

The launcher never waits for the agent: completion is the wrapper's record.
It returns the wrapper's pid; the local executor records the process's
start time with it, so that any later process can tell the agent apart from
an unrelated process that reused the pid (see `executors.local`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

from . import sandbox
from .checkrun import runner_command
from ..core.checks import Followup, prompt_with_feedback
from ..agents.presets import RESUMABLE, Place, executable, invocation
from ..core.spec import Agent
from .state import Layout
from .worktree import commit_line, output_root, setup_line
from .wrapper import wrapper_argv


def _prompt_path(layout: Layout, agent: Agent, run_id: str) -> str:
    if agent.prompt_file:
        return str(layout.root / agent.prompt_file)
    path = layout.prompt_file(run_id)
    path.write_text(agent.prompt or "")
    return str(path)


def agent_environment(layout: Layout, agent: Agent, run_id: str, attempt: int,
                      upstream: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(dict(agent.env))
    env.update({
        "ORCHESTRATE_PIPELINE": agent.pipeline,
        "ORCHESTRATE_AGENT": agent.name,
        "ORCHESTRATE_RUN_ID": run_id,
        "ORCHESTRATE_ATTEMPT": str(attempt),
        "ORCHESTRATE_ROOT": str(layout.root),
        "ORCHESTRATE_WORKDIR": str(output_root(layout, agent)),
        "ORCHESTRATE_UPSTREAM": str(upstream),
    })
    return env


class Launcher:
    """Spawns wrapped agents; `popen` is injectable for tests of the caller."""

    def __init__(self, layout: Layout, popen: Callable[..., subprocess.Popen] = subprocess.Popen):
        self.layout = layout
        self.popen = popen
        self.base_env = dict(os.environ)   # decoded once, not once per launch
        self.children: set[int] = set()    # wrappers started here, not yet reaped
        # run id -> its TRACEPARENT, set by the engine just before it submits the run
        self.traceparents: dict[str, str] = {}

    def wrapped(self, agent: Agent, run_id: str, attempt: int, upstream: Path,
                followup: Followup | None = None
                ) -> tuple[list[str], str | None, dict[str, str]]:
        """The wrapper's argv, the file for its stdin, and its environment:
        the same for every executor (a Slurm job runs this very wrapper)."""
        env = agent_environment(self.layout, agent, run_id, attempt, upstream, self.base_env)
        if followup is not None:
            env["ORCHESTRATE_FEEDBACK"] = str(followup.feedback)
        if run_id in self.traceparents:   # W3C trace context: the attempt's span
            env["TRACEPARENT"] = self.traceparents.pop(run_id)
        command, stdin_path = self._command(agent, run_id, env, followup)
        root = output_root(self.layout, agent)
        box = None
        if agent.sandbox is not None:   # the check too; the wrapper stays outside
            box = sandbox.prepare(self.layout, agent, run_id, env, root / agent.cwd, root,
                                  (self.layout.log(agent.pipeline, agent.name),))
        check = runner_command(self.layout, agent, run_id, root, box) if agent.check else None
        before = after = None
        if agent.isolation == "worktree":   # its worktree exists by now (`worktree.ensure`)
            after = commit_line(agent, run_id, root, self.layout.commit_failed(run_id))
            if agent.setup is not None:
                before = setup_line(agent, root, self.layout.setup_log(agent.pipeline, agent.name),
                                    self.layout.setup_failed(run_id))
        body = box.script(command, f"{run_id}.sock") if box is not None else None
        argv = wrapper_argv(agent.task, command, self.layout.exit_file(run_id), check,
                            before, after, body)
        return argv, stdin_path, env

    def launch(self, agent: Agent, run_id: str, attempt: int, log_path: Path,
               upstream: Path, followup: Followup | None = None) -> int:
        """Spawn the wrapped agent detached; its wrapper's pid. A sandboxed
        agent needs a bubblewrap that works here (else it never starts)."""
        if agent.sandbox is not None:
            sandbox.ensure_bubblewrap(dict(agent.env).get("PATH", self.base_env.get("PATH")))
        argv, stdin_path, env = self.wrapped(agent, run_id, attempt, upstream, followup)
        root = output_root(self.layout, agent)
        stdin = os.open(stdin_path or os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            process = self.popen(
                argv,
                stdin=stdin, stdout=log_fd, stderr=subprocess.STDOUT,
                cwd=root / agent.cwd, env=env,
                start_new_session=True,
                close_fds=True)
        finally:
            os.close(log_fd)
            os.close(stdin)
        # The Popen object is dropped on purpose: the agent outlives us, and
        # we reap it once it has exited (`reap`, at every pass); its exit
        # status is the wrapper's exit record, not what waitpid says.
        process.returncode = 0
        self.children.add(process.pid)
        return process.pid

    def reap(self) -> None:
        """Collect the wrappers started here that have exited, so that none
        stays a zombie of this process (`doit wait` launches too)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:   # reaped already (the advancer's reap_children)
                done = pid
            if done:
                self.children.discard(pid)

    def _command(self, agent: Agent, run_id: str, env: dict[str, str],
                 followup: Followup | None = None
                 ) -> tuple[str | tuple[str, ...], str | None]:
        """The agent's command and the file for its stdin (None: /dev/null)."""
        if agent.preset is None:
            return agent.command or "", None
        program = executable(agent, env)
        if shutil.which(program, path=env.get("PATH")) is None:
            raise FileNotFoundError(
                f"{program} not found (install it, or set executable = \"/path\" or "
                f"ORCHESTRATE_{agent.preset.upper()}_BIN)")
        prompt = _prompt_path(self.layout, agent, run_id)
        session = followup.session if followup and agent.preset in RESUMABLE else None
        if followup is not None:   # the feedback, after the prompt unless the session has it
            text = prompt_with_feedback(Path(prompt).read_text(errors="replace"),
                                        followup.feedback.read_text(errors="replace"),
                                        resumed=session is not None)
            self.layout.prompt_file(run_id).write_text(text)
            prompt = str(self.layout.prompt_file(run_id))
        called = invocation(agent, program, prompt, self._place(agent), resume=session)
        env.update(called.env)
        return called.argv, called.stdin

    def _place(self, agent: Agent) -> Place:
        """Whether the agent's folder is in a git repository, and where its
        aider history files go: .orchestrate/aider/<pipeline>/<agent>."""
        cwd = (output_root(self.layout, agent) / agent.cwd).resolve()
        in_git = any((folder / ".git").exists() for folder in (cwd, *cwd.parents))
        history = self.layout.base / "aider" / agent.pipeline
        if agent.preset == "aider":
            history.mkdir(parents=True, exist_ok=True)
        return Place(in_git_repo=in_git, history=str(history / agent.name))
