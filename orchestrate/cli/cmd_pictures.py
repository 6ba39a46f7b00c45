"""`doit graph` and `doit report`: read the state, draw, write the file.

The pictures are drawn by the pure `graph`, `timeline` and `report`
modules; this one gathers what they draw (a status pass through the engine,
the events log, log tails) and runs Graphviz's `dot` where it is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from ..core import checks, graph, report, timeline
from ..core.errors import UserError
from ..core.landing import CHECK_FAILED, CONFLICT
from ..core.scheduler import Decision
from ..runtime.state import Layout, StatusRecord, event_objects, write_atomic
from .cmd_base import OrchestrateCommand, budgets, opt_expand, opt_format, opt_output
from .cmd_status import status
from .ui import elapsed, pipeline_totals, state_counts, totals_lines, usage_cells

FORMATS = ("dot", "mermaid", "svg")
INSTALL_GRAPHVIZ = "apt-get install graphviz"
GRAPHVIZ_MAX_NODES = 300      # beyond this, dot takes seconds: the report draws its own
TAIL_LINES, TAIL_BYTES, LINE_WIDTH = 40, 64 * 1024, 2000


class PictureError(UserError):
    """A picture that cannot be made as asked (Graphviz missing, unwritable file)."""


def _state(root: Path, names: list[str], expand: bool = False
           ) -> tuple[dict[str, Decision], dict, graph.Graph]:
    decisions, records = status(root, names)
    states = {task: d.state for task, d in decisions.items()}
    present = {p.name[:-len(".signal")] for p in Layout(root).signals_dir.glob("*.signal")}
    agents = [d.agent for d in decisions.values()]
    return decisions, records, graph.build(agents, states, present, expand)


def graph_text(root: Path, names: list[str], fmt: str, expand: bool = False) -> str:
    """The selection's DAG as DOT, mermaid or (through Graphviz) SVG."""
    if fmt not in FORMATS:
        raise PictureError(f"unknown format '{fmt}' (expected one of {', '.join(FORMATS)})")
    if fmt == "svg" and shutil.which("dot") is None:
        raise PictureError(f"--format svg needs Graphviz's dot program, which is not "
                           f"installed ({INSTALL_GRAPHVIZ}); --format dot or mermaid need nothing")
    _, _, dag = _state(root, names, expand)
    if fmt == "mermaid":
        return graph.to_mermaid(dag)
    if fmt == "dot":
        return graph.to_dot(dag)
    return graphviz_svg(graph.to_dot(dag))


def graphviz_svg(dot_text: str) -> str:
    """SVG from Graphviz's dot; PictureError if it is missing or fails."""
    program = shutil.which("dot")
    if program is None:
        raise PictureError(f"Graphviz's dot is not installed ({INSTALL_GRAPHVIZ})")
    try:
        proc = subprocess.run([program, "-Tsvg"], input=dot_text, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise PictureError(f"Graphviz's dot failed: {err}") from None
    if proc.returncode != 0:
        raise PictureError(f"Graphviz's dot failed: {proc.stderr.strip()[:300]}")
    return proc.stdout


def output_path(root: Path, path: str) -> Path:
    """A relative -o is taken from the workspace root."""
    return Path(path) if os.path.isabs(path) else root / path


def write_file(path: Path, text: str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text, durable=False)
    except OSError as err:
        raise PictureError(f"cannot write {path}: {err.strerror or err}") from None
    return path


# -- the report ----------------------------------------------------------------
def write_report(root: Path, names: list[str], output: str | None = None) -> Path:
    """Write the HTML report of the selection; returns its path."""
    path = output_path(root, output or ".orchestrate/report.html")
    data = collect(root, names, path.parent)
    return write_file(path, report.render(data))


def report_line(root: Path, names: list[str]) -> str:
    """`doit wait`'s last line when something failed: where the report is."""
    try:
        return f"report: {write_report(root, names)}"
    except (PictureError, OSError) as err:
        return f"report not written: {err}"


def collect(root: Path, names: list[str], report_dir: Path) -> report.ReportData:
    decisions, records, dag = _state(root, names)
    layout = Layout(root)
    tasks = set(decisions)
    attempts = timeline.build(read_events(layout.events_path), tasks, records)
    rows = candidate_rows(fanout_rows([_row(root, d, records.get(t), report_dir)
                                       for t, d in decisions.items()], decisions),
                          decisions, records)
    totals = pipeline_totals(records.values())
    svg, source = dag_svg(dag)
    return report.ReportData(
        workspace=str(root), selection=list(names), rows=rows, timeline=attempts,
        dag_svg=svg, dag_source=source,
        spend_lines=totals_lines(totals, budgets(root)),
        cost_usd=sum(t["cost_usd"] for t in totals.values()) if totals else None,
        input_tokens=int(sum(t["input_tokens"] for t in totals.values())),
        output_tokens=int(sum(t["output_tokens"] for t in totals.values())),
        failures=[_failure(root, t, d, records.get(t)) for t, d in decisions.items()
                  if d.state == "failed"],
        merges=merge_rows(decisions, records),
        generated=time.time(), counts=agent_counts(decisions))


def merge_rows(decisions: dict[str, Decision], records: dict) -> list[report.MergeRow]:
    """The landing of each selected agent that has one, in the queue's order."""
    rows = []
    for task in decisions:
        record = records.get(task)
        merge = record.merge if record is not None else {}
        if merge.get("state"):
            rows.append((merge.get("queued_at") or 0.0, report.MergeRow(
                task, str(merge.get("into", "")), str(merge["state"]), str(merge.get("sha", "")),
                int(merge.get("attempts", 0)))))
    return [row for _, row in sorted(rows, key=lambda r: (r[0], r[1].task))]


def agent_counts(decisions: dict[str, Decision]) -> dict[str, int]:
    """The status table's counts, in the graph's state names (the report's chips)."""
    counts: dict[str, int] = {}
    for state, n in state_counts(decisions.values(), launched="pending").items():
        shown = graph.node_state(state)
        counts[shown] = counts.get(shown, 0) + n
    return counts


def dag_svg(dag: graph.Graph) -> tuple[str, str]:
    """(inline SVG, what drew it): Graphviz where installed, else our layout."""
    if shutil.which("dot") and len(dag.nodes) <= GRAPHVIZ_MAX_NODES:
        try:
            text = graphviz_svg(graph.to_dot(dag, legend=False))
            return text[text.index("<svg"):], "Graphviz"
        except (PictureError, ValueError):
            pass
    return graph.to_svg(dag), "orchestrate's layered layout"


def fanout_rows(rows: list[report.AgentRow], decisions: dict[str, Decision]
                ) -> list[report.AgentRow]:
    """Instances listed under their agent: a row for the fan-out (its own
    row for a planned list, else one made here) then its instances, indented."""
    result: list[report.AgentRow] = []
    seen: set[str] = set()
    for row in rows:
        agent = decisions[row.task].agent
        if agent.fanout is None:
            result.append(row)
            continue
        group = f"{agent.pipeline}:{agent.fanout}"
        if agent.gate:
            seen.add(group)
            result.append(row)
            continue
        if group not in seen:
            seen.add(group)
            states = [graph.node_state(d.state) for d in decisions.values()
                      if d.agent.fanout == agent.fanout and d.agent.pipeline == agent.pipeline]
            state = min(states, key=lambda s: graph.STATE_RANK.index(s)
                        if s in graph.STATE_RANK else len(graph.STATE_RANK))
            result.append(report.AgentRow(group, state, 0,
                                          reason=f"fan-out: {len(states)} instances"))
        result.append(replace(row, under=group))
    return result


def candidate_rows(rows: list[report.AgentRow], decisions: dict[str, Decision],
                   records: dict[str, StatusRecord | None]) -> list[report.AgentRow]:
    """A best_of agent's candidates listed under its row, the winner marked."""
    def contest(row: report.AgentRow) -> str | None:
        decision = decisions.get(row.task)   # a fan-out's made-up row has none
        agent = decision.agent if decision else None
        return f"{agent.pipeline}:{agent.candidate_of}" if agent and agent.candidate_of else None
    under: dict[str, list[report.AgentRow]] = {}
    for row in rows:
        if (group := contest(row)) is not None:
            won = getattr(records.get(group), "winner", None) == row.task
            under.setdefault(group, []).append(replace(row, under=group, winner=won))
    result: list[report.AgentRow] = []
    for row in rows:
        if contest(row) is None:
            result.append(row)
            result.extend(under.pop(row.task, []))
    return result + [r for group in under.values() for r in group]


def _row(root: Path, decision: Decision, record: StatusRecord | None,
         report_dir: Path) -> report.AgentRow:
    state = graph.node_state(decision.state)
    ran = decision.state in ("running", "done", "failed", "cancelled")
    reason = decision.reason if not decision.launch else f"ready ({decision.reason})"
    cost, tokens = usage_cells(record)
    log = record.log if record else ""
    # quoted: a relative URL whose ':' is escaped can never be a javascript: link
    href = quote(os.path.relpath(root / log, report_dir)) if log else None
    return report.AgentRow(decision.agent.task, state, record.attempt if record and ran else 0,
                           elapsed(record) if ran else "", cost, tokens, reason, log, href)


def _failure(root: Path, task: str, decision: Decision,
             record: StatusRecord | None) -> report.Failure:
    log = record.log if record else ""
    if record is not None and checks.check_said_no(record):   # show what said no
        log = os.path.relpath(Layout(root).check_log(record.pipeline, record.agent),
                              root)
    elif record is not None and record.merge.get("state") in (CONFLICT, CHECK_FAILED):
        log = os.path.relpath(Layout(root).merge_log(record.pipeline, record.agent), root)
    return report.Failure(task, decision.reason, log, tail(root / log) if log else [])


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a log, reading at most its last 64 KiB; long lines cut."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            chunk = handle.read()
    except OSError:
        return []
    text = chunk.decode(errors="replace").splitlines()
    if size > TAIL_BYTES and text:
        text = text[1:]   # the first line read is probably cut
    return [line if len(line) <= LINE_WIDTH else line[:LINE_WIDTH] + " [...]"
            for line in text[-lines:]]


def read_events(path: Path) -> list[dict]:
    """The events log's objects; a torn or foreign line is skipped."""
    try:
        return event_objects(path.read_bytes())
    except FileNotFoundError:
        return []

class Graph(OrchestrateCommand):
    name = "graph"
    doc_purpose = "print the DAG of the selected agents and everything upstream of them"
    doc_usage = "[TASK ...] [--format dot|mermaid|svg] [-o FILE] [--expand]"
    doc_description = ("Nodes pipeline:agent coloured by state; after edges solid, after_any "
                       "dashed, wait_for signals dotted.\nExit: 0; 3 on an invalid pipeline, "
                       "an unknown task, or --format svg without Graphviz.")
    cmd_options = (opt_format, opt_output, opt_expand)

    def _execute(self, pos_args, fmt, output, expand):
        text = graph_text(self.root, pos_args, fmt, expand)
        if output is None:
            self.report.write(text)
            return 0
        path = write_file(output_path(self.root, output), text)
        self.report.line(f"{path}")
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
        path = write_report(self.root, pos_args, output)
        self.report.line(f"{path}")
        return 0
