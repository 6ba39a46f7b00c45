"""The documented headless invocation of each agent CLI (pure).

The prompt never goes through a shell string or the command line: it is a
file, given as stdin (claude, codex, gemini) or as `--message-file` (aider).
Flags and output shapes: docs/agent-cli-output.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..core.spec import Agent


@dataclass(frozen=True)
class Invocation:
    argv: tuple[str, ...]
    stdin: str | None      # path given as the process's stdin (None: /dev/null)
    env: Mapping[str, str] = field(default_factory=dict)   # added to the agent's environment


@dataclass(frozen=True)
class Place:
    """Where the agent runs, as far as its CLI cares (found by the launcher)."""
    in_git_repo: bool = True
    history: str = ".aider"    # path prefix of aider's per-agent history files


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
    # always: orchestrate picks the folder (the workspace or the agent's
    # worktree); codex's check only guards an interactive user against an
    # untracked folder, and its sandbox applies either way
    argv = ["exec", "--json", "--skip-git-repo-check"]
    if agent.model:
        argv += ["-m", agent.model]
    return argv


def _gemini(agent: Agent) -> list[str]:
    # stdin comes first and the -p value is appended to it; "" keeps it headless.
    # --skip-trust: headless gemini refuses an untrusted folder (exit 55)
    argv = ["--output-format", "stream-json", "--skip-trust"]
    if agent.model:
        argv += ["-m", agent.model]
    if agent.allowed_tools:
        argv += ["--allowed-tools", ",".join(agent.allowed_tools)]
    return argv


def _aider(agent: Agent, prompt_path: str, place: Place) -> list[str]:
    # history files of its own, so parallel aider agents never share one;
    # --no-gitignore: it would append to the workspace's .gitignore; outside
    # a repository --no-git, as with --yes-always it would `git init` one;
    # --no-analytics, as --yes-always would also answer yes to its opt-in question
    argv = ["--message-file", prompt_path, "--yes-always", "--no-pretty", "--no-stream",
            "--no-check-update", "--no-show-release-notes", "--no-fancy-input", "--no-analytics",
            "--chat-history-file", f"{place.history}.chat.history.md",
            "--input-history-file", f"{place.history}.input.history", "--no-gitignore"]
    if not place.in_git_repo:
        argv.append("--no-git")
    if agent.model:
        argv += ["--model", agent.model]
    return argv


# aider wraps its report lines (Cost, errors) at the terminal's width, 80
# columns when it cannot tell: a wide one keeps each on one line
AIDER_ENV = {"COLUMNS": "4096"}


# Presets whose CLI resumes a session by the id it reported, headless (a check's
# relaunch continues the conversation): claude `-p --resume ID`, codex `exec
# resume ID -`, gemini `--resume ID`. aider has no session id: a fresh session.
RESUMABLE = ("claude", "codex", "gemini")


def invocation(agent: Agent, program: str, prompt_path: str,
               place: Place = Place(), resume: str | None = None) -> Invocation:
    """argv, stdin and added environment for `agent`'s preset; `extra_args` go
    last, before any positional prompt marker, so a user can add any flag the CLI has.
    `resume`: the session id to continue (presets in RESUMABLE)."""
    preset = agent.preset
    extra = list(agent.extra_args)
    if preset == "claude":
        again = ["--resume", resume] if resume else []
        return Invocation((program, *_claude(agent), *again, *extra), prompt_path)
    if preset == "codex":
        if resume:   # `exec resume [OPTIONS] SESSION_ID PROMPT`, "-": the prompt on stdin
            options = _codex(agent)[1:]
            return Invocation((program, "exec", "resume", *options, *extra, resume, "-"),
                              prompt_path)
        return Invocation((program, *_codex(agent), *extra, "-"), prompt_path)
    if preset == "gemini":
        again = ["--resume", resume] if resume else []
        return Invocation((program, *_gemini(agent), *again, *extra, "-p", ""), prompt_path)
    if preset == "aider":
        return Invocation((program, *_aider(agent, prompt_path, place), *extra), None,
                          AIDER_ENV)
    raise ValueError(f"unknown preset {preset!r}")
