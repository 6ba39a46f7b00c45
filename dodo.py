"""doit entry point: every pipelines/*.toml becomes a group of agent tasks."""
from pathlib import Path

from orchestrate.tasks import ensure_state_folder, pipeline_tasks

ROOT = Path(__file__).parent
ensure_state_folder(ROOT)  # doit opens its database (in there) before loading tasks


def task_pipelines():
    """Agents of every pipeline in pipelines/."""
    yield from pipeline_tasks(ROOT)
