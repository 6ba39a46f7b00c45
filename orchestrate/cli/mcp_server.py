"""`python -m orchestrate mcp [DIR]`: the workspace's commands as MCP tools, on stdio.

Built on the official `mcp` SDK (the optional extra `orchestrate[mcp]`); only
this module imports it. The tools do what orchestrate/cli/mcp_tools.py does, in a
worker thread each, so a long call (cancel, wait) never stalls the protocol;
a caller's mistake is a tool error (`isError`) with the command line's
message, and the server answers the next call as if nothing happened.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, TypeVar

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from .. import __version__
from .mcp_tools import (
    TAIL_DEFAULT,
    USER_ERRORS,
    WAIT_DEFAULT,
    WAIT_MAX,
    Toolbox,
    WaitProgress,
    user_message,
)

INSTRUCTIONS = """\
orchestrate runs pipelines of AI agents (pipelines/*.toml of one workspace) like make:
each agent runs detached once its upstream agents are done. `list` shows the pipelines;
`run` launches what is ready and returns at once (the pipeline then advances by itself);
`wait` blocks at most `timeout` seconds and says whether the selection finished; call it
again to keep waiting. A failed agent is not an error: its record says state "failed" and
why; `logs` shows its output. Task names: "pipeline" or "pipeline:agent" (wildcards work)."""

RECORDS = (" Status records are objects with task (pipeline:agent), pipeline, agent, state "
           "(pending, waiting, queued, running, done, failed, cancelled or removed), reason "
           "(why it is in that state), attempt, pid, started_at, ended_at (ISO-8601 UTC), "
           "exit_code and log (its log file).")

DESCRIPTIONS = {
    "list": (
        'The workspace\'s pipelines and their agents. Returns {"pipelines": [{"name", '
        '"description", "agents": [task names]}]}.'),
    "run": (
        'As `doit [TASK...]`: launch every ready agent of the selection detached and '
        'return at once; agents whose signal is current are not re-run, running ones '
        'are not launched twice. The pipeline then advances by itself. Returns '
        '{"agents": [status records]}.'
        + RECORDS),
    "status": (
        "As `doit status --json`: each agent's state; launches nothing. Returns "
        '{"agents": [status records], "pipelines": {name: {"cost_usd", "input_tokens", '
        '"output_tokens"}}} (the totals of preset agents such as claude). An invalid '
        'pipeline file is left out and named in "warnings" (lines), as `doit status` '
        'warns and answers for the others.'
        + RECORDS),
    "wait": (
        'As `doit wait`: launch what is ready (as run), then block until the selection '
        'is done or can go no further, or `timeout` seconds have passed, whichever is '
        'first. Agents keep running after a timeout; call wait again to keep waiting. '
        'Returns {"finished": bool, "agents": [status records]}; finished is false when '
        'the timeout came first.'
        + RECORDS),
    "logs": (
        "As `doit logs TASK`: the end of an agent's log (stdout and stderr of its "
        'latest attempt); with check=true, of its latest check\'s output. '
        'Returns {"task", "log"}.'),
    "signal": (
        'As `doit signal NAME`: create the external signal NAME, which agents with '
        'wait_for = [NAME] wait on. Returns {"signal": name, "created": bool} (false if '
        'it was already there).'),
    "cancel": (
        'As `doit cancel [TASK...]`: stop the selected running agents (SIGTERM to their '
        'process group, SIGKILL after their kill_grace) and cancel queued or ready '
        'ones; returns once no process of theirs is left. Omitted tasks: every agent. '
        'Returns {"agents": [status records of the agents it cancelled]}.'
        + RECORDS),
    "retry": (
        'As `doit retry [TASK...]`: failed and cancelled agents of the selection (none '
        'named: all of them) run again, then as run. With feedback (text), the named '
        'agents, done ones too, run again given it as their feedback (the file in '
        'ORCHESTRATE_FEEDBACK, after a preset\'s prompt), as after a failed check: what '
        'every failure line means by "-> doit retry p:a". Returns {"agents": [status '
        'records]}.'
        + RECORDS),
    "plan": (
        'As `doit plan --json`: what run would launch and why (the staleness reason), '
        'and the agents that would wait on them, each with a forecast of duration and '
        'cost (the median of its last five successful runs, else of the workspace\'s '
        'runs of the same preset and model, else unknown), and the totals against each '
        'budget. Launches nothing and changes nothing. Returns {"agents": [{"task", '
        '"action", "reason", "preset", "model", "forecast": {"duration_s", "cost_usd", '
        '"basis"}}], "budgets": [{"scope", "name", "budget_usd", "left_usd", '
        '"forecast_usd", "exceeded"}], "total", "exceeds_budget"}.'),
}

Tasks = Annotated[list[str] | None, Field(
    description='Task names: "pipeline", "pipeline:agent" or a wildcard such as '
                '"review:impl_*"; the agents they name plus everything upstream. '
                "Omitted or empty: every pipeline.")]

T = TypeVar("T")


async def _call(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in a worker thread; a user mistake becomes a tool error."""
    try:
        return await anyio.to_thread.run_sync(partial(function, *args))
    except USER_ERRORS as err:
        raise ToolError(user_message(err)) from None


@contextlib.asynccontextmanager
async def _stdout_to_stderr(_server: MCPServer) -> AsyncIterator[None]:
    """While serving, stdout is the protocol: a stray print anywhere in the
    process goes to stderr (the SDK has already moved the wire off fd 1)."""
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout = saved


def build_server(root: Path) -> MCPServer:
    toolbox = Toolbox(root)
    server = MCPServer("orchestrate", version=__version__, instructions=INSTRUCTIONS,
                       log_level="WARNING", lifespan=_stdout_to_stderr)
    reading = ToolAnnotations(read_only_hint=True, idempotent_hint=True)

    @server.tool(name="list", annotations=reading,
                 description=DESCRIPTIONS["list"])
    async def list_pipelines() -> dict[str, Any]:
        return await _call(toolbox.list)

    @server.tool(name="run", annotations=ToolAnnotations(destructive_hint=False),
                 description=DESCRIPTIONS["run"])
    async def run(tasks: Tasks = None) -> dict[str, Any]:
        return await _call(toolbox.run, tasks)

    @server.tool(name="status", annotations=reading,
                 description=DESCRIPTIONS["status"])
    async def status(tasks: Tasks = None) -> dict[str, Any]:
        return await _call(toolbox.status, tasks)

    @server.tool(name="wait", annotations=ToolAnnotations(destructive_hint=False),
                 description=DESCRIPTIONS["wait"])
    async def wait(
        tasks: Tasks = None,
        timeout: Annotated[float, Field(
            ge=0, description=f"Seconds to wait at most (default {WAIT_DEFAULT:g}, at most "
                              f"{WAIT_MAX:g}: a larger value is taken as {WAIT_MAX:g}).")
        ] = WAIT_DEFAULT,
    ) -> dict[str, Any]:
        return await _wait(toolbox, tasks, min(timeout, WAIT_MAX))

    @server.tool(name="logs", annotations=reading,
                 description=DESCRIPTIONS["logs"])
    async def logs(
        task: Annotated[str, Field(description='One agent: "pipeline:agent".')],
        tail: Annotated[int, Field(
            ge=1, description=f"How many of the log's last lines (default {TAIL_DEFAULT}).")
        ] = TAIL_DEFAULT,
        check: Annotated[bool, Field(
            description="The output of the agent's check instead (doit logs TASK --check).")
        ] = False,
    ) -> dict[str, Any]:
        return await _call(toolbox.logs, task, tail, check)

    @server.tool(name="signal", annotations=ToolAnnotations(destructive_hint=False,
                                                            idempotent_hint=True),
                 description=DESCRIPTIONS["signal"])
    async def signal(
        name: Annotated[str, Field(description="Signal name, [A-Za-z0-9][A-Za-z0-9_-]*.")],
    ) -> dict[str, Any]:
        return await _call(toolbox.signal, name)

    @server.tool(name="retry", annotations=ToolAnnotations(destructive_hint=False),
                 description=DESCRIPTIONS["retry"])
    async def retry(
        tasks: Tasks = None,
        feedback: Annotated[str | None, Field(
            description="What the named agents are told when they run again (a review, "
                        "say); needs tasks. Omitted: failed and cancelled agents simply "
                        "run again.")] = None,
    ) -> dict[str, Any]:
        return await _call(toolbox.retry, tasks, feedback)

    @server.tool(name="plan", annotations=reading, description=DESCRIPTIONS["plan"])
    async def plan(tasks: Tasks = None) -> dict[str, Any]:
        return await _call(toolbox.plan, tasks)

    @server.tool(name="cancel", annotations=ToolAnnotations(destructive_hint=True),
                 description=DESCRIPTIONS["cancel"])
    async def cancel(tasks: Tasks = None) -> dict[str, Any]:
        return await _call(toolbox.cancel, tasks)

    return server


class _Background(threading.Thread):
    """A blocking call that goes on by itself once nobody waits for it."""

    def __init__(self, function: Callable[..., None], *args: Any):
        super().__init__(daemon=True, name=f"orchestrate {function.__name__}")
        self.function, self.args = function, args
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.function(*self.args)
        except BaseException as err:   # handed to the caller, who reports it
            self.error = err


async def _wait(toolbox: Toolbox, tasks: list[str] | None, timeout: float) -> dict[str, Any]:
    """Never longer than `timeout`: the launch and the passes run in a thread
    of their own; at the deadline we stop waiting for it (it ends by itself
    soon after, its launch done) and report what it last saw."""
    progress = WaitProgress()
    worker = _Background(toolbox.wait, tasks, timeout, progress)
    worker.start()
    with anyio.move_on_after(timeout):
        await anyio.to_thread.run_sync(worker.join, abandon_on_cancel=True)
    if worker.error is not None:
        if isinstance(worker.error, USER_ERRORS):
            raise ToolError(user_message(worker.error))
        raise worker.error
    latest = progress.latest
    if latest is None:
        latest = (False, await _call(toolbox.snapshot, tasks))
    finished, agents = latest
    return {"finished": finished, "agents": agents}


def serve(root: Path) -> None:
    build_server(root).run("stdio")
