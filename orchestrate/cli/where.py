"""Which workspace a command is for, when doit is started in a subdirectory.

doit reads its configuration (where its database goes, which commands
replace its own) from the current directory only, so from a subdirectory
`doit -k` ran doit's own `run` (every agent a false failure) and wrote its
database as `.doit.db.*` into the workspace root. orchestrate's own
commands find the workspace upward, as git does, and take its
configuration along; doit's commands, which cannot, are refused in one line
naming the folder to run them in.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

from ..core.errors import UserError

MARKER = "dodo.py"


class NotInWorkspace(UserError):
    """No workspace here or above, or a doit command started below its root."""


def find_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` with a dodo.py and a pyproject.toml."""
    for folder in (start, *start.parents):
        if (folder / MARKER).is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return None


def find_upward(start: Path, name: Path) -> Path | None:
    """`name` in `start` or the nearest folder above it (doit's --seek-file)."""
    for folder in (start, *start.parents):
        if (folder / name).is_file():
            return folder / name
    return None


def doit_config(root: Path) -> dict:
    """[tool.doit] of the workspace's pyproject.toml, without its plugin tables."""
    try:
        data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    table = data.get("tool", {}).get("doit", {})
    return {k: v for k, v in table.items() if not isinstance(v, dict)} \
        if isinstance(table, dict) else {}


def locate(params) -> None:
    """For an orchestrate command started outside the root: point doit at the
    workspace's dodo.py and its configuration (`params`: doit's options)."""
    if params.get("dodoFile", MARKER) != MARKER or params.get("cwdPath"):
        return                     # the user said where: doit's rules apply
    here = Path(os.getcwd())
    if (here / MARKER).is_file():
        return
    root = find_root(here)
    if root is None:
        raise NotInWorkspace(f"no orchestrate workspace in {here} or above it "
                             "(python -m orchestrate init makes one)")
    params["dodoFile"] = str(root / MARKER)
    params.update_defaults(doit_config(root))


def refuse_doit_command_below(root: Path) -> None:
    """Called as the dodo file loads, which only doit's own commands do
    (orchestrate's do not import it): one started below the root would miss
    the workspace's configuration; refuse before doit opens any database."""
    try:
        from doit import loader
        started = loader.initial_workdir
    except ImportError:
        return
    if started and Path(started).resolve() != root.resolve():
        raise _invalid(f"run doit from the workspace root: cd {root} (doit's own commands "
                       "read their configuration from the current folder)")


def _invalid(message: str) -> Exception:
    from doit.exceptions import InvalidCommand
    return InvalidCommand(message)

