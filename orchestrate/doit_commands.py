"""`orchestrate.doit_commands`: a stable name, kept for doit plugin entry points
(`orchestrate.doit_commands:Help`) in user workspaces' pyproject.toml.

The code lives in orchestrate/cli/doit_commands.py; this module re-exports its functions
and classes. Code inside the project imports that module itself."""
from .cli.doit_commands import (  # noqa: F401
    Clean, Help, Ignore, ResetDep, Strace,
)

__all__ = [
    "Clean", "Help", "Ignore", "ResetDep", "Strace",
]
