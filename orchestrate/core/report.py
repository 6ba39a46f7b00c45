"""The run report: one self-contained HTML page (pure).

No script, style sheet, font or image is loaded from anywhere (a
Content-Security-Policy says so to the browser too), and nothing needs a
script to be seen. Everything that comes from agents (log lines, reasons,
results) and from pipeline files is escaped with `html.escape`; the only
markup inserted as is, the DAG's SVG, is made here or by Graphviz from
escaped DOT.
"""
from __future__ import annotations

from datetime import datetime, timezone
from dataclasses import dataclass, field
from html import escape

from .graph import STATE_COLORS
from .timeline import Attempt, Timeline, duration_label, offset_label, ticks

BAR_COLORS = {"done": "#43a047", "failed": "#e53935", "cancelled": "#8e24aa",
              "running": "#1e88e5"}
STATE_ORDER = ("done", "running", "queued", "waiting", "pending", "failed", "cancelled",
               "removed")


def e(value: object) -> str:
    """Text -> HTML, quotes too (safe in attributes)."""
    return escape(str(value), quote=True)


@dataclass
class AgentRow:
    task: str
    state: str
    attempts: int
    elapsed: str = ""
    cost: str = ""
    tokens: str = ""
    reason: str = ""
    log: str = ""               # as written in the status record (workspace-relative)
    log_href: str | None = None  # relative to the report's folder
    under: str | None = None    # a fan-out instance: the fan-out's task
    winner: bool = False        # a best_of candidate that won its contest


@dataclass
class MergeRow:
    """An agent's landing (`merge = true`): where, how far, how often sent back."""
    task: str
    into: str
    state: str                  # queued, merging, merged, conflict, check_failed, refused
    sha: str = ""
    sent_back: int = 0


@dataclass
class Failure:
    task: str
    reason: str
    log: str
    tail: list[str]


@dataclass
class ReportData:
    workspace: str
    selection: list[str]
    rows: list[AgentRow]
    timeline: Timeline
    dag_svg: str
    dag_source: str = "graphviz"     # or "built-in layout"
    spend_lines: list[str] = field(default_factory=list)
    cost_usd: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    failures: list[Failure] = field(default_factory=list)
    merges: list[MergeRow] = field(default_factory=list)
    generated: float = 0.0           # when it was made (epoch seconds): the caller's clock
    # agents per state, as `doit status` counts them (fan-out rows are not
    # agents); None: count the rows
    counts: dict[str, int] | None = None


def render(data: ReportData) -> str:
    return "".join([_head(data), _summary(data), _dag(data), _timeline(data), _table(data),
                    _merges(data), _failures(data), "</main></body></html>\n"])


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state_css() -> str:
    chips = "".join(f".s-{s}{{background:{fill};border-color:{stroke}}}"
                    for s, (fill, stroke) in STATE_COLORS.items())
    bars = "".join(f'.attempt[data-state="{s}"]{{background:{c}}}' for s, c in BAR_COLORS.items())
    return chips + bars


CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#212121;background:#fafafa}
main{padding:16px 24px;max-width:none}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #e0e0e0}
.meta{color:#616161;margin:0}
.chip{display:inline-block;border:1px solid #9e9e9e;border-radius:10px;padding:0 8px;margin:2px 4px 2px 0;font-size:12px}
.counts{list-style:none;padding:0;margin:8px 0}.counts li{display:inline}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:8px 0}
dl.summary dt{color:#616161}dl.summary dd{margin:0}
.scroll{overflow:auto;background:#fff;border:1px solid #e0e0e0;padding:8px;max-height:80vh}
.legend{font-size:12px;color:#424242;margin:4px 0}
.tl{background:#fff;border:1px solid #e0e0e0;font:12px/1 "DejaVu Sans Mono",monospace;overflow:auto;max-height:85vh}
.tl .row{display:flex;align-items:center;height:20px;border-bottom:1px solid #f3f3f3;min-width:900px}
.tl .name{width:280px;flex:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;padding:0 8px}
.tl .track{position:relative;flex:1;height:16px;margin-right:12px}
.tl .axis{position:sticky;top:0;background:#fff;z-index:1;height:22px;border-bottom:1px solid #bdbdbd}
.tick{position:absolute;top:3px;border-left:1px solid #bdbdbd;padding-left:3px;height:16px;color:#616161;white-space:nowrap}
.tick.end{border-left:0;border-right:1px solid #bdbdbd;padding:0 3px 0 0;transform:translateX(-100%)}
.attempt{position:absolute;top:1px;height:14px;min-width:3px;border-radius:2px;color:#fff;font-size:10px;line-height:14px;overflow:hidden;white-space:nowrap;box-sizing:border-box;padding-left:3px}
.attempt[data-state="running"]{background:repeating-linear-gradient(45deg,#1e88e5 0 6px,#64b5f6 6px 12px)}
.attempt.stopped{border-right:4px solid #212121}
.attempt.relaunched{border-left:0}
table.agents{border-collapse:collapse;background:#fff;font-size:13px}
table.agents th,table.agents td{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
table.agents th{background:#f5f5f5}td.num{text-align:right}
td.reason{max-width:520px;overflow-wrap:anywhere}
.failure{background:#fff;border:1px solid #ef9a9a;margin:10px 0;padding:0 10px}
.failure h3{font-size:14px;margin:8px 0}
.failure pre{background:#263238;color:#eceff1;padding:8px;overflow:auto;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}
"""


def _head(data: ReportData) -> str:
    selection = " ".join(data.selection) or "every pipeline"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>orchestrate report: {e(selection)}</title>"
            f"<style>{CSS}{_state_css()}</style></head><body><main>"
            f"<h1>orchestrate report: {e(selection)}</h1>"
            f"<p class=\"meta\">{e(data.workspace)} · generated {_utc(data.generated)}</p>")


def _chip(state: str, text: str) -> str:
    return f'<span class="chip s-{e(state)}">{e(text)}</span>'


def _summary(data: ReportData) -> str:
    counts: dict[str, int] = dict(data.counts or {})
    if data.counts is None:
        for row in data.rows:
            counts[row.state] = counts.get(row.state, 0) + 1
    order = [s for s in STATE_ORDER if s in counts] + sorted(set(counts) - set(STATE_ORDER))
    chips = "".join(f"<li>{_chip(s, f'{counts[s]} {s}')}</li>" for s in order)
    span = data.timeline.span(data.generated)
    wall = duration_label(span[1] - span[0]) if span else "nothing ran"
    if span:
        wall += f" (from {_utc(span[0])})"
    items = [("agents", str(sum(counts.values()))), ("attempts", str(len(data.timeline.attempts))),
             ("wall time", wall)]
    items.append(("cost", f"${data.cost_usd:.4f}" if data.cost_usd is not None
                  else "none reported (only agent CLIs report costs)"))
    items.append(("tokens", f"{data.input_tokens:,} in / {data.output_tokens:,} out"
                  if data.input_tokens or data.output_tokens else "none reported"))
    for line in data.spend_lines:
        name, _, rest = line.partition(": ")
        items.append((f"budget {name}" if "budget" in rest else f"spent {name}", rest))
    entries = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in items)
    return (f'<section id="summary"><h2>Summary</h2><ul class="counts">{chips}</ul>'
            f'<dl class="summary">{entries}</dl></section>')


def _dag(data: ReportData) -> str:
    legend = " ".join(_chip(s, s) for s in STATE_COLORS)
    legend += (" · signal: <span class=\"chip s-done\">present</span>"
               "<span class=\"chip\" style=\"border-style:dashed;background:#fff\">absent</span>"
               " · edges: solid <code>after</code>, dashed <code>after_any</code>, "
               "dotted <code>wait_for</code>")
    return (f'<section id="dag"><h2>Pipeline graph</h2><p class="legend">{legend}'
            f' · drawn by {e(data.dag_source)}</p>'
            f'<div class="scroll">{data.dag_svg}</div></section>')


def _bar(attempt: Attempt, origin: float, span: float, now: float) -> str:
    left = (attempt.start - origin) / span * 100
    width = attempt.duration(now) / span * 100
    classes = "attempt" + (" stopped" if attempt.stop_reason else "")
    ending = attempt.reason if attempt.state != "running" else "still running"
    title = (f"{attempt.task} attempt {attempt.attempt}: {attempt.state} after "
             f"{duration_label(attempt.duration(now))}, started +{offset_label(attempt.start - origin)}"
             f" ({_utc(attempt.start)}) - {ending}"
             + (f"; check {attempt.check}" if attempt.check else "")
             + ("; relaunched afterwards" if attempt.relaunched else ""))
    text = f"#{attempt.attempt}" + (f" {attempt.stop_reason}" if attempt.stop_reason else "")
    if attempt.check:   # the run ended with its check's verdict
        text += " check " + ("passed" if attempt.check == "passed" else "failed")
    checked = f' data-check="{e(attempt.check.split(":")[0])}"' if attempt.check else ""
    return (f'<div class="{classes}" data-task="{e(attempt.task)}"{checked} '
            f'data-attempt="{attempt.attempt}" data-state="{e(attempt.state)}" '
            f'style="left:{left:.3f}%;width:{width:.3f}%" title="{e(title)}">{e(text)}</div>')


def _tick(offset: float, length: float) -> str:
    """A tick's label sits right of its line, or left of it near the end."""
    where = offset / length * 100
    side = " end" if where > 90 else ""
    return (f'<span class="tick{side}" style="left:{where:.3f}%">'
            f"+{offset_label(offset)}</span>")


def _timeline(data: ReportData) -> str:
    head = '<section id="timeline"><h2>Timeline</h2>'
    span = data.timeline.span(data.generated)
    if span is None:
        return head + "<p>No agent of the selection has run yet.</p></section>"
    origin, length = span[0], max(span[1] - span[0], 0.1)
    marks = "".join(_tick(t, length) for t in ticks(length))
    legend = " ".join(f'<span class="chip" style="background:{c};color:#fff;border-color:{c}">'
                      f"{s}</span>" for s, c in BAR_COLORS.items())
    legend += (" · one bar per attempt (#N); a black right edge: stopped by orchestrate "
               "(timeout, stall or cancel); hover a bar for its details")
    rows = [f'<div class="row axis"><div class="name">start {_utc(origin)}</div>'
            f'<div class="track">{marks}</div></div>']
    for task, attempts in data.timeline.by_task().items():
        bars = "".join(_bar(a, origin, length, data.generated) for a in attempts)
        rows.append(f'<div class="row"><div class="name" title="{e(task)}">{e(task)}</div>'
                    f'<div class="track">{bars}</div></div>')
    return head + f'<p class="legend">{legend}</p><div class="tl">{"".join(rows)}</div></section>'


def _table(data: ReportData) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("agent", "state", "attempts", "elapsed", "cost",
                                              "tokens", "reason", "log"))
    body = []
    for row in data.rows:
        log = (f'<a href="{e(row.log_href)}">{e(row.log)}</a>' if row.log_href and row.log
               else e(row.log))
        mark = ' <span class="winner">(winner)</span>' if row.winner else ""
        name = (f'<td class="instance" style="padding-left:24px">{e(row.task)}{mark}</td>'
                if row.under else f"<td>{e(row.task)}{mark}</td>")
        body.append(f'<tr data-task="{e(row.task)}">{name}'
                    f"<td>{_chip(row.state, row.state)}</td>"
                    f'<td class="num">{row.attempts or ""}</td><td class="num">{e(row.elapsed)}</td>'
                    f'<td class="num">{e(row.cost)}</td><td>{e(row.tokens)}</td>'
                    f'<td class="reason">{e(row.reason)}</td><td>{log}</td></tr>')
    return (f'<section id="agents"><h2>Agents</h2><table class="agents"><thead><tr>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table></section>')


def _merges(data: ReportData) -> str:
    if not data.merges:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("agent", "into", "merge", "commit", "sent back"))
    body = "".join(f'<tr data-task="{e(m.task)}"><td>{e(m.task)}</td><td>{e(m.into)}</td>'
                   f"<td>{e(m.state.replace('_', ' '))}</td><td><code>{e(m.sha[:12])}</code>"
                   f'</td><td class="num">{m.sent_back or ""}</td></tr>' for m in data.merges)
    return (f'<section id="merges"><h2>Merges</h2><table class="agents"><thead><tr>{head}'
            f"</tr></thead><tbody>{body}</tbody></table></section>")


def _failures(data: ReportData) -> str:
    if not data.failures:
        return ""
    parts = ['<section id="failures"><h2>Failed agents: the end of their logs</h2>']
    for failure in data.failures:
        text = "\n".join(failure.tail) if failure.tail else "(the log is empty)"
        parts.append(f'<article class="failure" data-task="{e(failure.task)}">'
                     f"<h3>{e(failure.task)}: {e(failure.reason)}</h3>"
                     f"<p class=\"meta\">last {len(failure.tail)} lines of {e(failure.log)}</p>"
                     f"<pre>{e(text)}</pre></article>")
    parts.append("</section>")
    return "".join(parts)
