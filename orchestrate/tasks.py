"""`orchestrate.tasks`: a stable name, kept for user workspaces' dodo.py (`python -m
orchestrate init` writes `from orchestrate.tasks import ensure_state_folder,
pipeline_tasks`).

The code lives in orchestrate/cli/tasks.py; this module re-exports its functions and
classes. Code inside the project imports that module itself."""
from .cli.tasks import (  # noqa: F401
    workspace_at, invalid_warning, forget_workspace, describe_command, AgentIsCurrent,
    clean_agent, clean_gate, agent_task, pipeline_tasks, ensure_state_folder,
)

__all__ = [
    "workspace_at", "invalid_warning", "forget_workspace", "describe_command",
    "AgentIsCurrent", "clean_agent", "clean_gate", "agent_task", "pipeline_tasks",
    "ensure_state_folder",
]
