"""What `doit info` adds for an agent: how it runs and what it waits for.

doit's own info shows file dependencies and targets (the signal file); a
person asks what will run, with which program, writing what, gated by what.
Pure but for looking the program up on PATH.
"""
from __future__ import annotations

import os
import shlex
import shutil

from ..agents.presets import executable
from ..core.sandbox import describe
from ..core.spec import Agent
from ..runtime.sandbox import agent_policy


def resolved_program(agent: Agent, environ: dict[str, str] | None = None) -> str:
    """The program the agent will start, as a path when PATH finds it."""
    env = {**(os.environ if environ is None else environ), **dict(agent.env)}
    if agent.preset:
        program = executable(agent, env)
    elif isinstance(agent.command, str):
        try:
            words = shlex.split(agent.command)
        except ValueError:
            words = agent.command.split()
        program = words[0] if words else ""
        if "=" in program or not program:   # a shell line: `FOO=1 cmd`, or empty
            return "/bin/sh (a shell line)"
    else:
        program = (agent.command or ("",))[0]
    found = shutil.which(program, path=env.get("PATH")) if program else None
    return found or f"{program} (not found on PATH)"


def info_lines(agent: Agent) -> list[str]:
    """`key: value` lines for `doit info`, in the order a person reads them."""
    if agent.preset:
        how = f"{agent.preset} preset" + (f", model {agent.model}" if agent.model else "")
        how += f", prompt_file {agent.prompt_file}" if agent.prompt_file else ", inline prompt"
    else:
        command = agent.command or ""
        how = command if isinstance(command, str) else shlex.join(command)
    lines = [("command", how), ("executable", resolved_program(agent))]
    if agent.outputs:
        lines.append(("outputs", ", ".join(agent.outputs)))
    gates = [f"after {', '.join(agent.after)}" if agent.after else "",
             f"after_any {', '.join(agent.after_any)}" if agent.after_any else "",
             f"wait_for signal {', '.join(agent.wait_for)}" if agent.wait_for else ""]
    lines.append(("gates", "; ".join(g for g in gates if g) or "none"))
    if agent.sandbox is None:
        lines.append(("sandbox", "none"))
    else:
        lines += [("sandbox", line) for line in describe(agent_policy(agent, dict(os.environ)))]
    return [f"{key:11s}: {value}" for key, value in lines]
