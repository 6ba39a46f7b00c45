"""doit plugin commands. Thin: options, the help users see, a library call.

`run` and `forget` replace doit built-ins and are registered only in the
workspace's pyproject.toml; the others are package entry points.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from doit.cmd_base import DoitCmdBase, subtasks_iter, tasks_and_deps_iter
from doit.cmd_forget import Forget as DoitForget
from doit.cmd_info import Info as DoitInfo
from doit.cmdparse import CmdOption, CmdParseError
from doit.exceptions import InvalidCommand

from . import control
from ..core.errors import UserError
from ..core.exitcodes import ExitCode
from ..core.selection import doit_names


def interrupted() -> int:
    """Ctrl-C: one line, exit 130, never a traceback (agents run detached).

    Exits here: nothing is left to clean up (locks go with the process,
    doit's database is a cache), and unwinding through doit and the
    interpreter's shutdown can meet the interrupt again."""
    import sys
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stderr.write("interrupted; agents already launched keep running "
                     "(doit status to check, doit cancel to stop them)\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(control.EXIT_INTERRUPTED)


class OrchestrateCommand(DoitCmdBase):
    """Turns user mistakes (orchestrate's own error types only: anything else
    is a bug and keeps its traceback) into doit's "ERROR: ..." and exit 3."""

    # Commands that launch refuse an invalid workspace with the whole error,
    # so the loader need not also warn about it.
    launches = False

    def execute(self, params, args):
        from . import tasks, where
        self.cwd_at_start = os.getcwd()   # doit changes into the dodo file's folder
        tasks.warn_about_invalid = not self.launches
        where.OURS = True
        # orchestrate reads the pipelines itself: doit's task objects (the
        # bulk of `doit list`) are never used by these commands
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

    def _no_doit_tasks(self, cmd, pos_args):
        """Stands in for doit's task loading; still warns about invalid pipelines."""
        import sys
        from . import tasks
        if tasks.warn_about_invalid:
            sys.stderr.write(tasks.invalid_warning(tasks.workspace_at(self.root, lenient=True)))
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


class Run(OrchestrateCommand):
    name = "run"
    launches = True
    doc_purpose = "launch every ready agent detached and return at once"
    doc_usage = "[TASK ...] [-v]"
    doc_description = ("Agents whose signal is current are skipped; running or gated ones "
                       "are set aside. Prints a line per agent launched, failed, cancelled "
                       "or blocked (-v: every agent) and a summary. The pipeline then "
                       "advances by itself.\n"
                       "Exit: 0; 1 if a selected agent failed; 3 on an invalid pipeline.")
    cmd_options = (opt_verbose,)

    def _execute(self, pos_args, verbose):
        return control.run(self.root, pos_args, self.outstream, verbose)


opt_feedback = {"name": "feedback", "long": "feedback", "type": str, "default": None,
                "help": "FILE: the named agents (done ones too) run again with FILE as "
                        "their feedback (ORCHESTRATE_FEEDBACK; after a preset's prompt)"}


class Retry(OrchestrateCommand):
    name = "retry"
    launches = True
    doc_purpose = "run failed or cancelled agents again (none named: all of them)"
    doc_usage = "[TASK ...] [-v] [--feedback FILE]"
    doc_description = ("Failed and cancelled agents of the selection, and upstream of it, "
                       "become pending; then as `doit`: launches what is ready and returns. "
                       "With --feedback FILE, the named agents (done, failed or cancelled) "
                       "run again given FILE, as after a failed check.\n"
                       "Exit: 0; 1 if a selected agent failed; 3 on an invalid pipeline, "
                       "an unreadable FILE, or --feedback without TASK.")
    cmd_options = (opt_verbose, opt_feedback)

    def _execute(self, pos_args, verbose, feedback):
        path = None if feedback is None else (Path(feedback) if os.path.isabs(feedback)
                                              else Path(self.cwd_at_start) / feedback)
        return control.retry(self.root, pos_args, self.outstream, verbose, path)


class Wait(OrchestrateCommand):
    name = "wait"
    launches = True
    doc_purpose = "like run, then block until the selection is done or can go no further"
    doc_usage = "[TASK ...] [--timeout S]"
    doc_description = ("On a terminal a live table (failed, running, queued, waiting first; "
                       "done ones counted in its header), then a summary naming each failure "
                       "with the last line of its log; piped, a line per change.\n"
                       "Exit: 0 all done; 1 an agent failed, was cancelled or is blocked; "
                       "3 invalid pipeline or unknown task; 124 --timeout reached; 130 Ctrl-C.")
    cmd_options = (opt_timeout, opt_cancel_on_interrupt)

    def _execute(self, pos_args, timeout, cancel_on_interrupt):
        return control.wait(self.root, pos_args, timeout, self.outstream,
                            live=control.is_terminal(self.outstream),
                            cancel_on_interrupt=cancel_on_interrupt)


class Status(OrchestrateCommand):
    name = "status"
    doc_purpose = "show each agent's state, elapsed time, attempt and reason"
    doc_usage = "[TASK ...] [--json]"
    doc_description = ("Settles runs that ended, launches nothing.\n"
                       "Exit: 0; 3 on an unknown task.")
    cmd_options = (opt_json,)

    def _execute(self, pos_args, as_json):
        decisions, records = control.status(self.root, pos_args)
        if as_json:
            self.outstream.write(json.dumps(control.status_json(decisions, records),
                                            indent=1) + "\n")
        else:
            control.print_status(self.outstream, decisions, records, control.budgets(self.root))
        return 0


class Logs(OrchestrateCommand):
    name = "logs"
    doc_purpose = "print an agent's log (-f: follow it while the agent runs)"
    doc_usage = "PIPELINE:AGENT [-f] [--check]"
    doc_description = ("-f follows the log while the agent runs; on an agent that has not "
                       "started it waits for it to start (Ctrl-C to stop). --check prints "
                       "the output of its check instead.\n"
                       "Exit: 0; 3 if TASK is not an agent; 130 Ctrl-C.")
    cmd_options = (opt_follow, opt_check_log)

    def _execute(self, pos_args, follow, check_log):
        if len(pos_args) != 1:
            raise InvalidCommand("logs takes one agent, e.g. doit logs review:plan")
        return control.print_log(self.root, pos_args[0], follow, self.outstream, check_log)


opt_clear = {"name": "clear", "long": "clear", "type": bool, "default": False,
             "help": "remove the signal: its gate is closed again"}


class Signal(OrchestrateCommand):
    name = "signal"
    doc_purpose = "create (or --clear) an external signal that agents wait_for"
    doc_usage = "NAME [--clear]"
    doc_description = ("Agents with wait_for = [\"NAME\"] launch once it exists; --clear "
                       "removes it (agents not yet launched wait again).\n"
                       "Exit: 0; 3 on an invalid name.")
    cmd_options = (opt_clear,)

    def _execute(self, pos_args, clear):
        if len(pos_args) != 1:
            raise InvalidCommand("signal takes one name, e.g. doit signal approved")
        act = control.signal_clear if clear else control.signal_create
        self.outstream.write(act(self.root, pos_args[0]) + "\n")
        return 0


class Cancel(OrchestrateCommand):
    name = "cancel"
    doc_purpose = "stop running agents (SIGTERM, SIGKILL after kill_grace) and dequeue queued ones"
    doc_usage = "[TASK ...]"
    doc_description = ("No task: every running agent, and the queued ones. Returns once no "
                       "process of a stopped agent is left, within kill_grace + 10 s (a line "
                       "for each agent it could not confirm gone).\nExit: 0; 1 if an agent "
                       "could not be confirmed gone; 3 on an unknown task.")
    cmd_options = ()

    def _execute(self, pos_args):
        return control.cancel(self.root, pos_args, self.outstream)


class Forget(DoitForget):
    """doit's forget, which also clears orchestrate's record of the agents."""

    doc_purpose = "forget agents' results and failures, so that they run again"

    def _execute(self, forget_sub, forget_disable_default, forget_all):
        tasks = {t.name: t for t in self.task_list}
        self.sel_tasks = doit_names(self.sel_tasks, tasks)
        if forget_all:
            names = list(tasks)
        elif self.sel_default_tasks and forget_disable_default:
            names = []
        elif forget_sub:
            names = [t.name for t in tasks_and_deps_iter(tasks, self.sel_tasks or [])]
        else:
            names = [t.name for sel in self.sel_tasks or [] if sel in tasks
                     for t in [tasks[sel], *subtasks_iter(tasks, tasks[sel])]]
        try:
            control.forget_agents(Path(os.getcwd()), names, self.outstream)
        except UserError as err:
            raise InvalidCommand(str(err)) from None
        return super()._execute(forget_sub, forget_disable_default, forget_all)


class Info(DoitInfo):
    """doit's info, with orchestrate's verdict on staleness instead of doit's.

    doit's own verdict would come from its database, which orchestrate keeps
    only as a cache; the state files say why an agent is or is not current.
    """

    doc_purpose = "show an agent's inputs, upstream signals and why it would run"

    def _execute(self, pos_args, hide_status=False):
        super()._execute(pos_args, hide_status=True)
        self._how_it_runs(pos_args[0] if pos_args else "")
        if hide_status:
            return 0
        try:
            verdict = control.staleness(Path(os.getcwd()), pos_args[0])
        except UserError as err:
            raise InvalidCommand(str(err)) from None
        if verdict is None:
            return 0
        up_to_date, lines = verdict
        self.outstream.write("\n{:11s}: {}\n".format("status", "up-to-date" if up_to_date else "run"))
        for line in lines:
            self.outstream.write(f" * {line}\n")
        return 0 if up_to_date else 1

    def _how_it_runs(self, task: str) -> None:
        from .agent_info import info_lines
        from .tasks import workspace_at
        agent = workspace_at(Path(os.getcwd()), lenient=True).agents_by_task.get(task)
        if agent is not None:
            self.outstream.write("\n" + "\n".join(info_lines(agent)) + "\n")


# No doit "choices": doit's own refusal named the parameter 'fmt', which no
# user typed; graph_text says "unknown format 'png' (expected one of ...)".
opt_format = {"name": "fmt", "long": "format", "type": str, "default": "dot",
              "help": "dot (default) or mermaid text, or svg (needs Graphviz)"}
opt_expand = {"name": "expand", "long": "expand", "type": bool, "default": False,
              "help": "draw each fan-out's instances (default: one node with its count)"}
opt_output = {"name": "output", "short": "o", "long": "output", "type": str, "default": None,
              "help": "write to FILE (relative: from the workspace root) and print its path"}


class Graph(OrchestrateCommand):
    name = "graph"
    doc_purpose = "print the DAG of the selected agents and everything upstream of them"
    doc_usage = "[TASK ...] [--format dot|mermaid|svg] [-o FILE] [--expand]"
    doc_description = ("Nodes pipeline:agent coloured by state; after edges solid, after_any "
                       "dashed, wait_for signals dotted.\nExit: 0; 3 on an invalid pipeline, "
                       "an unknown task, or --format svg without Graphviz.")
    cmd_options = (opt_format, opt_output, opt_expand)

    def _execute(self, pos_args, fmt, output, expand):
        from . import pictures
        text = pictures.graph_text(self.root, pos_args, fmt, expand)
        if output is None:
            self.outstream.write(text)
            return 0
        path = pictures.write_file(pictures.output_path(self.root, output), text)
        self.outstream.write(f"{path}\n")
        return 0


class Report(OrchestrateCommand):
    name = "report"
    doc_purpose = "write a self-contained HTML report of the run and print its path"
    doc_usage = "[TASK ...] [-o FILE]"
    doc_description = ("Summary, DAG, a timeline of every attempt, the agents' table and the "
                       "end of failed agents' logs; default .orchestrate/report.html.\n"
                       "Exit: 0; 3 on an invalid pipeline or an unknown task.")
    cmd_options = (opt_output,)

    def _execute(self, pos_args, output):
        from . import pictures
        path = pictures.write_report(self.root, pos_args, output)
        self.outstream.write(f"{path}\n")
        return 0
