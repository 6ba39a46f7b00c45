"""`orchestrate.commands`: a stable name, kept for doit plugin entry points
(`orchestrate.commands:Run`) in user workspaces' pyproject.toml and in this package's
entry points.

The code lives in orchestrate/cli/commands.py; this module re-exports its functions and
classes. Code inside the project imports that module itself."""
from .cli.commands import (  # noqa: F401
    interrupted, OrchestrateCommand, Run, Retry, Wait, Status, Logs, Signal, Cancel,
    Forget, Info, Graph, Report, Plan, Diff,
)

__all__ = [
    "interrupted", "OrchestrateCommand", "Run", "Retry", "Wait", "Status", "Logs",
    "Signal", "Cancel", "Forget", "Info", "Graph", "Report", "Plan",
]
