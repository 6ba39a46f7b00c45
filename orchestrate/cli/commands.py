"""The doit plugin commands, one module per command family (as doit's own
`cmd_*.py`): each `cmd_X` module holds its command class and what it does.

`run`, `forget` and `info` replace doit built-ins and are registered only in
the workspace's pyproject.toml; the others are package entry points. Both
name `orchestrate.commands`, which re-exports these.
"""
from .cmd_base import OrchestrateCommand, interrupted
from .cmd_cancel import Cancel
from .cmd_diff import Diff
from .cmd_forget import Forget
from .cmd_info import Info
from .cmd_logs import Logs
from .cmd_pictures import Graph, Report
from .cmd_plan import Plan
from .cmd_run import Retry, Run
from .cmd_signal import Signal
from .cmd_status import Status
from .cmd_wait import Wait

__all__ = ["OrchestrateCommand", "interrupted", "Run", "Retry", "Wait", "Status", "Logs",
           "Signal", "Cancel", "Forget", "Info", "Graph", "Report", "Plan", "Diff"]
