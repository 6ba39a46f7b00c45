"""What every orchestrate command shares: the doit command base (errors as
"ERROR: ..." and exit 3, Ctrl-C and a closed pipe handled once), the options,
the exit codes, the selection of agents and what the first pass decides."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from doit.cmd_base import DoitCmdBase
from doit.cmdparse import CmdOption, CmdParseError
from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..core.exitcodes import ExitCode
from ..core.scheduler import Decision
from ..core.selection import select
from ..core.spec import Agent
from ..runtime.engine import Engine
from ..runtime.inflight import with_stand_ins
from . import tasks, where
from .reporter import Reporter
from .tasks import workspace_at

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_TIMEOUT, EXIT_INTERRUPTED = (
    ExitCode.OK, ExitCode.FAILED, ExitCode.INVALID, ExitCode.TIMEOUT, ExitCode.INTERRUPTED)


def outcome(decisions: dict[str, Decision]) -> int:
    """0 unless an agent of the selection failed, was cancelled, or is held by
    a budget (it cannot finish without a user's action)."""
    bad = any((d.state in ("failed", "cancelled") and not d.lost)
              or (d.state == "queued" and d.blocked) for d in decisions.values())
    return EXIT_FAILED if bad else EXIT_OK


def selection_of(root: Path, names: list[str], lenient: bool = False,
                 liveness_interval: float = 0.0) -> tuple[Engine, list[Agent]]:
    """Launching needs every pipeline valid; looking and cancelling (lenient)
    answer for the valid ones. `liveness_interval`: for an engine that runs
    pass after pass (0: one pass, every executor asked now)."""
    workspace = with_stand_ins(workspace_at(root, lenient))
    return Engine(workspace, liveness_interval=liveness_interval), select(workspace, names)


NO_PIPELINES = "no pipelines: add pipelines/NAME.toml (python -m orchestrate init makes an example)\n"


def budgets(root: Path) -> dict[str, float | None]:
    workspace = workspace_at(root, lenient=True)
    return {"*": workspace.budget_usd, **{p.name: p.budget_usd for p in workspace.pipelines}}


def interrupted() -> int:
    """Ctrl-C: one line, exit 130, never a traceback (agents run detached).

    Exits here: nothing is left to clean up (locks go with the process,
    doit's database is a cache), and unwinding through doit and the
    interpreter's shutdown can meet the interrupt again."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("interrupted; agents already launched keep running "
                     "(doit status to check, doit cancel to stop them)\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


class OrchestrateCommand(DoitCmdBase):
    """Turns user mistakes (orchestrate's own error types only: anything else
    is a bug and keeps its traceback) into doit's "ERROR: ..." and exit 3."""

    # Commands that launch refuse an invalid workspace with the whole error,
    # so the loader need not also warn about it.
    launches = False

    @property
    def report(self) -> Reporter:
        """The one way this command prints (doit's output stream, and stderr)."""
        return Reporter(self.outstream)

    def execute(self, params, args):
        self.cwd_at_start = os.getcwd()   # doit changes into the dodo file's folder
        # orchestrate reads the pipelines itself: the dodo file is neither
        # imported (its tasks are doit's, and importing it runs the check that
        # refuses doit's own commands below the root) nor are doit's task
        # objects built (the bulk of `doit list`)
        self.loader.setup = self._no_dodo_import
        self.loader.load_doit_config = dict
        self.loader.load_tasks = self._no_doit_tasks
        try:
            where.locate(params)
            return super().execute(params, args)
        except UserError as err:
            raise InvalidCommand(str(err)) from None
        except KeyboardInterrupt:
            return interrupted()
        except BrokenPipeError:   # `doit wait | head`: the reader left; so do we, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os._exit(ExitCode.PIPE_CLOSED)
        finally:
            if self.dep_manager is not None:
                self.dep_manager.close()

    def _no_dodo_import(self, params) -> None:
        """Stands in for doit's import of the dodo file and does the rest of
        what doit's loader does then: find the file (upward with
        --seek-file), change into its folder (or --dir), and make the state
        folder that doit's database lives in (the dodo file would have)."""
        dodo = Path(params.get("dodoFile") or where.MARKER)
        if not dodo.is_absolute():
            here = Path(os.getcwd())
            found = (where.find_upward(here, dodo) if params.get("seek_file")
                     else here / dodo)
            dodo = found if found is not None else here / dodo
        if not dodo.is_file():
            raise InvalidCommand(f"Could not find dodo file '{params.get('dodoFile')}'.\n"
                                 "Please use '-f' to specify file name.\n")
        folder = Path(params.get("cwdPath") or dodo.parent).resolve()
        os.chdir(folder)
        tasks.make_state_folder(dodo.parent.resolve())

    def _no_doit_tasks(self, cmd, pos_args):
        """Stands in for doit's task loading. A command that launches refuses
        an invalid workspace with the whole error; the others warn about it
        and answer for the valid pipelines."""
        if not self.launches:
            self.report.note(tasks.invalid_warning(tasks.workspace_at(self.root, lenient=True)))
        return []

    def get_options(self):
        """Our short options win over the task loader's (`-f` follows, not --file)."""
        ours = {o["short"] for o in self.cmd_options if o.get("short")}
        loader = [dict(o, short="") if o.get("short") in ours else o
                  for o in self.loader.cmd_options]
        return [CmdOption(o) for o in self.base_options + tuple(loader) + self.cmd_options]

    def parse_execute(self, in_args):
        # doit parses with getopt, which stops at the first task name; the
        # contract's `doit logs TASK -f` and `doit wait TASK --timeout S` put
        # options after tasks, so parse GNU-style (options anywhere).
        import getopt
        parser = self.cmdparser
        try:
            opts, args = getopt.gnu_getopt(list(in_args), parser.get_short(),
                                           parser.get_long())
        except getopt.GetoptError as err:
            raise CmdParseError(str(err)) from None
        flat = [item for pair in opts for item in pair if item != ""]
        return super().parse_execute(flat + args)

    @property
    def root(self) -> Path:
        return Path(os.getcwd())  # doit has changed into the dodo file's folder


opt_timeout = {"name": "timeout", "long": "timeout", "type": float, "default": None,
               "help": "stop waiting after this many seconds (exit 124)"}


opt_cancel_on_interrupt = {
    "name": "cancel_on_interrupt", "long": "cancel-on-interrupt", "type": bool,
    "default": False, "help": "on Ctrl-C, cancel the selected running agents too"}


opt_json = {"name": "as_json", "long": "json", "type": bool, "default": False,
            "help": "print {\"agents\": [status records]} as JSON"}


opt_verbose = {"name": "verbose", "short": "v", "long": "verbose", "type": bool,
               "default": False, "help": "a line for every agent, not only what changed"}


opt_follow = {"name": "follow", "short": "f", "long": "follow", "type": bool,
              "default": False, "help": "keep printing while the agent runs"}


opt_check_log = {"name": "check_log", "long": "check", "type": bool, "default": False,
                 "help": "print the output of the agent's check (<agent>.check.log)"}


opt_feedback = {"name": "feedback", "long": "feedback", "type": str, "default": None,
                "help": "FILE: the named agents (done ones too) run again with FILE as "
                        "their feedback (ORCHESTRATE_FEEDBACK; after a preset's prompt)"}


opt_clear = {"name": "clear", "long": "clear", "type": bool, "default": False,
             "help": "remove the signal: its gate is closed again"}


# No doit "choices": doit's own refusal named the parameter 'fmt', which no
# user typed; graph_text says "unknown format 'png' (expected one of ...)".
opt_format = {"name": "fmt", "long": "format", "type": str, "default": "dot",
              "help": "dot (default) or mermaid text, or svg (needs Graphviz)"}


opt_expand = {"name": "expand", "long": "expand", "type": bool, "default": False,
              "help": "draw each fan-out's instances (default: one node with its count)"}


opt_output = {"name": "output", "short": "o", "long": "output", "type": str, "default": None,
              "help": "write to FILE (relative: from the workspace root) and print its path"}
