"""The `sandbox` key and the policy it stands for (pure).

`sandbox = true | { network = [...], write = [...] }`, per agent, in
`[defaults]`, or as the workspace default in `[tool.orchestrate]`. From it
and the agent this module computes the policy that `runtime.sandbox` turns
into a bubblewrap command line and that `doit info` shows: which paths are
writable, which stay read-only even inside them, which hosts the proxy lets
through. Paths here are workspace-relative strings; the runtime makes them
absolute and resolves symlinks.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Mapping

from .hostmatch import host_allowed, split_host_port  # noqa: F401  (re-exported)


SANDBOX_KEYS = ("network", "write")
INSTALL_LINE = "the sandbox needs bubblewrap (apt-get install bubblewrap)"

# Read-only even inside a writable folder: an agent can neither rewrite its
# pipeline nor forge another agent's signal. `.orchestrate` is protected as
# a whole; the run's own files are bound writable back on top of it.
PROTECTED = ("pipelines", "dodo.py", "pyproject.toml", ".mcp.json", ".git/hooks",
             ".git/config", ".orchestrate")

# Each preset's API host, allowed by default, and the variables of its `env`
# whose URL's host is allowed too (a mock, a gateway, a local model server).
PRESET_HOSTS: dict[str, tuple[str, ...]] = {
    "claude": ("api.anthropic.com",),
    "codex": ("api.openai.com",),
    "gemini": ("generativelanguage.googleapis.com",),
    "aider": ("api.openai.com", "api.anthropic.com"),
}
BASE_URL_VARS: dict[str, tuple[str, ...]] = {
    "claude": ("ANTHROPIC_BASE_URL",),
    "codex": ("OPENAI_BASE_URL",),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", "GEMINI_API_BASE"),
    "aider": ("OPENAI_API_BASE", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
              "AIDER_OPENAI_API_BASE"),
}
# Each preset's configuration and credentials in the user's home, bound into
# the agent's private home (for that preset only).
PRESET_HOME_FILES: dict[str, tuple[str, ...]] = {
    "claude": (".claude", ".claude.json"),
    "codex": (".codex",),
    "gemini": (".gemini",),
    "aider": (".aider", ".aider.conf.yml", ".aider.model.settings.yml",
              ".aider.model.metadata.json"),
}

_HOST_RE = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")
_URL_HOST_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?(\[[^\]]*\]|[^:/?#]*)")


@dataclass(frozen=True)
class Sandbox:
    """What the user asked for beyond the defaults."""
    network: tuple[str, ...] = ()   # "host", "host:port", "*.domain", "[::1]:8080"
    write: tuple[str, ...] = ()     # workspace-relative folders or files


@dataclass(frozen=True)
class Policy:
    """The whole policy of one agent, workspace-relative where it can be."""
    writable: tuple[str, ...]       # relative to the workspace root
    protected: tuple[str, ...]      # read-only even where a writable folder holds them
    hosts: tuple[str, ...]          # what the proxy lets through; () = no network
    home_files: tuple[str, ...]     # names in the user's home bound into the private home
    home: str                       # the private home's folder, relative to the root


def check_host_entry(entry: Any) -> str:
    """One `network` entry: `host`, `*.domain`, `host:port`, `[v6]:port`."""
    if not isinstance(entry, str) or not entry:
        raise ValueError(f"expected a host or host:port string, got {entry!r}")
    host, port = split_host_port(entry)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"'{entry}': bad port (expected host:port with a port 1-65535)")
    if not (_HOST_RE.fullmatch(host) or _IPV6_RE.fullmatch(host)):
        raise ValueError(f"'{entry}': bad host (expected a name like api.example.com, "
                         "an address, or host:port)")
    return entry.lower()


def check_write_path(entry: Any) -> str:
    if not isinstance(entry, str) or not entry:
        raise ValueError(f"expected a path string, got {entry!r}")
    if entry.startswith("/") or ".." in entry.split("/"):
        raise ValueError(f"'{entry}' is outside the workspace (expected a path relative "
                         "to the workspace root, without '..')")
    normal = posixpath.normpath(entry)
    for protected in PROTECTED:
        if normal == protected or normal.startswith(protected + "/"):
            raise ValueError(f"'{entry}' is always read-only in a sandbox ({protected})")
    return normal


def check_sandbox(value: Any) -> Sandbox | None:
    """`true` -> the defaults, `false` -> None (no sandbox), a table -> its keys."""
    if isinstance(value, bool):
        return Sandbox() if value else None
    if not isinstance(value, dict):
        raise ValueError("expected true, false or a table "
                         '{ network = ["host", "host:port"], write = ["path/"] }')
    unknown = [key for key in value if key not in SANDBOX_KEYS]
    if unknown:
        close = get_close_matches(unknown[0], SANDBOX_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(SANDBOX_KEYS)}"
        raise ValueError(f"unknown key '{unknown[0]}' ({hint})")
    fields: dict[str, tuple[str, ...]] = {}
    for key, check in (("network", check_host_entry), ("write", check_write_path)):
        items = value.get(key, [])
        if not isinstance(items, list):
            raise ValueError(f"{key}: expected a list of strings, got {items!r}")
        try:
            fields[key] = tuple(dict.fromkeys(check(item) for item in items))
        except ValueError as err:
            raise ValueError(f"{key}: {err}") from None
    return Sandbox(**fields)


def url_host(url: str) -> str | None:
    """The host of `http://user@host:port/path`, None if it is not a URL."""
    match = _URL_HOST_RE.match(url.strip())
    return match.group(1).lower() if match and match.group(1) else None


def allowed_hosts(sandbox: Sandbox, preset: str | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """The preset's API hosts, the hosts of its base URLs in `env`, then `network`."""
    hosts: list[str] = list(PRESET_HOSTS.get(preset or "", ()))
    for name in BASE_URL_VARS.get(preset or "", ()):
        host = url_host(env.get(name, ""))
        if host:
            hosts.append(host)
    hosts.extend(sandbox.network)
    return tuple(dict.fromkeys(hosts))


def output_folders(outputs: tuple[str, ...]) -> tuple[str, ...]:
    """The folder of each declared output (the part before any wildcard)."""
    folders = []
    for output in outputs:
        parts = output.split("/")[:-1]
        fixed = []
        for part in parts:
            if any(c in part for c in "*?[{"):
                break
            fixed.append(part)
        folders.append(posixpath.normpath("/".join(fixed)) if fixed else ".")
    return tuple(dict.fromkeys(folders))


def policy(sandbox: Sandbox, pipeline: str, agent: str, cwd: str, outputs: tuple[str, ...],
           preset: str | None, env: Mapping[str, str], isolated: bool) -> Policy:
    """The policy for one agent. `cwd` and `outputs` are relative to where
    the agent's files live (its worktree when `isolated`): the runtime places
    them; `write` is relative to the workspace root."""
    home = f".orchestrate/sandbox/home/{pipeline}/{agent}"
    place = f".orchestrate/worktrees/{pipeline}/{agent}" if isolated else "."
    own = [posixpath.normpath(posixpath.join(place, path))
           for path in (cwd, *output_folders(outputs))]
    writable = tuple(dict.fromkeys([*own, *sandbox.write]))
    return Policy(writable=writable, protected=PROTECTED,
                  hosts=allowed_hosts(sandbox, preset, env),
                  home_files=PRESET_HOME_FILES.get(preset or "", ()), home=home)


def describe(policy: Policy) -> list[str]:
    """`doit info`'s lines for a sandboxed agent."""
    return [f"writable: {', '.join(policy.writable)}, its TMPDIR, its run's files",
            f"read-only: everything else; always {', '.join(policy.protected)}",
            f"home: private ({policy.home})"
            + (f", with {', '.join('~/' + f for f in policy.home_files)}" if policy.home_files else ""),
            "network: " + (", ".join(policy.hosts) if policy.hosts else "none")
            + " (through orchestrate's proxy)" * bool(policy.hosts)]
