"""The documented headless invocation of each agent CLI (pure).

The prompt never goes through a shell string or the command line: it is a
file, given as stdin (claude, codex, gemini) or as `--message-file` (aider).
Flags and output shapes: docs/agent-cli-output.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .spec import Agent


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    stdin: str | None      # path given as the process's stdin (None: /dev/null)


def executable(agent: Agent, environ: Mapping[str, str]) -> str:
    """`executable` key, else ORCHESTRATE_<PRESET>_BIN, else the CLI's name on PATH."""
    preset = agent.preset or ""
    return agent.executable or environ.get(f"ORCHESTRATE_{preset.upper()}_BIN") or preset


def _claude(agent: Agent) -> list[str]:
    # stream-json needs --verbose with -p; with no prompt argument, -p reads stdin
    argv = ["-p", "--output-format", "stream-json", "--verbose"]
    if agent.model:
        argv += ["--model", agent.model]
    if agent.allowed_tools:
        argv += ["--allowedTools", ",".join(agent.allowed_tools)]
    if agent.permission_mode:
        argv += ["--permission-mode", agent.permission_mode]
    return argv


def _codex(agent: Agent) -> list[str]:
    argv = ["exec", "--json"]
    if agent.model:
        argv += ["-m", agent.model]
    return argv


def _gemini(agent: Agent) -> list[str]:
    # stdin comes first and the -p value is appended to it; "" keeps it headless
    argv = ["--output-format", "stream-json"]
    if agent.model:
        argv += ["-m", agent.model]
    if agent.allowed_tools:
        argv += ["--allowed-tools", ",".join(agent.allowed_tools)]
    return argv


def _aider(agent: Agent, prompt_path: str) -> list[str]:
    argv = ["--message-file", prompt_path, "--yes-always", "--no-pretty", "--no-stream",
            "--no-check-update", "--no-show-release-notes", "--no-fancy-input"]
    if agent.model:
        argv += ["--model", agent.model]
    return argv


def invocation(agent: Agent, program: str, prompt_path: str) -> Invocation:
    """argv and stdin for `agent`'s preset; `extra_args` go last, before any
    positional prompt marker, so a user can add any flag the CLI has."""
    preset = agent.preset
    extra = list(agent.extra_args)
    if preset == "claude":
        return Invocation((program, *_claude(agent), *extra), prompt_path)
    if preset == "codex":
        return Invocation((program, *_codex(agent), *extra, "-"), prompt_path)
    if preset == "gemini":
        return Invocation((program, *_gemini(agent), *extra, "-p", ""), prompt_path)
    if preset == "aider":
        return Invocation((program, *_aider(agent, prompt_path), *extra), None)
    raise ValueError(f"unknown preset {preset!r}")
