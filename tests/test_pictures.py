"""`doit graph` and `doit report`: DOT checked by Graphviz's real `dot`, the
report opened in a real headless Chromium (Debian's, driven by playwright).

Off CI a missing `dot`, playwright or chromium skips those tests with the
command that installs it; under CI=true it fails them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import Workspace, wait_until
from orchestrate.core import graph, report, timeline
from orchestrate.core.spec import Agent
from orchestrate.runtime.state import StatusRecord

CHROMIUM = "/usr/bin/chromium"
PLAYWRIGHT_PIN = "playwright==1.65.2"
EVIL_LINES = ['<script>window.__pwned = 1</script>',
              '<img src=x onerror="window.__pwned_img = 1">',
              'plain text after the markup & "quotes"']


def _missing(what: str, install: str) -> None:
    message = f"{what} is not available here; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def need_dot() -> str:
    program = shutil.which("dot")
    if program is None:
        _missing("Graphviz's dot", "apt-get install graphviz")
    return program


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright", f"pip install {PLAYWRIGHT_PIN}")
    if not os.path.exists(CHROMIUM):
        _missing("chromium", "apt-get install chromium")
    with sync_playwright() as driver:
        try:
            chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        except Exception as err:   # noqa: BLE001 - any reason the browser cannot start
            _missing(f"a working chromium ({str(err).splitlines()[0]})",
                     "apt-get install chromium")
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A report opened in the browser, with what it logged and requested."""

    def __init__(self, browser, path: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda err: self.errors.append(str(err)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.as_uri()
        self.page.goto(self.url, wait_until="load")

    def close(self) -> None:
        self.context.close()

    def dag_label(self, text: str):
        """The DAG's <text> element that reads exactly `text`."""
        exact = re.compile(f"^{re.escape(text)}$")
        return self.page.locator("#dag svg text").filter(has_text=exact)


# -- a workspace that ran: a retried agent, a failing one whose log holds markup
PIPELINE_MAIN = """
[agents.flaky]
command = {flaky}
retries = 1
retry_backoff = 0

[agents.evil]
command = {evil}

[agents.after_evil]
command = {ok}
after = ["evil"]

[agents.either]
command = {ok}
after_any = ["flaky", "evil"]
"""

PIPELINE_HELD = """
[agents.gated]
command = {ok}
wait_for = ["approved"]
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """Pipelines `main` and `other` run to the end with `doit wait`; `held`
    waits on a signal nobody gives. Yields (workspace, wait's result)."""
    root = tmp_path_factory.mktemp("pictures") / "ws"
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    (root / "pipelines" / "example.toml").unlink()
    ws = Workspace(root.resolve())
    (root / "evil.py").write_text("print(" + repr("\n".join(EVIL_LINES)) + ")\n"
                                  "raise SystemExit(1)\n")
    quote = json.dumps
    ok = quote(ws.agent_cmd())
    ws.write_pipeline("main", PIPELINE_MAIN.format(
        flaky=quote(ws.agent_cmd("--exit", "3", "--succeed-from-attempt", "2")),
        evil=quote(f"{sys.executable} evil.py"), ok=ok))
    ws.write_pipeline("other", f"[agents.solo]\ncommand = {ok}\n")
    ws.write_pipeline("held", PIPELINE_HELD.format(ok=ok))
    try:
        waited = ws.doit("wait", "main", "other", timeout=120)
        ws.wait_idle()
        yield ws, waited
    finally:
        ws.kill_everything()
        wait_until(lambda: not ws.agent_pids(), 10, "agents to be gone")


def test_wait_ends_with_the_report_path_when_something_failed(ran):
    ws, waited = ran
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    last = waited.stdout.strip().splitlines()[-1]
    assert last == f"report: {ws.root / '.orchestrate' / 'report.html'}"
    assert "main:evil" in (ws.root / ".orchestrate" / "report.html").read_text()


def test_wait_prints_no_report_when_all_is_done(ran):
    ws, _ = ran
    proc = ws.doit("wait", "other", check_rc=0)
    # the whole output is the summary: no report line (and not silence either)
    assert proc.stdout == "1 up to date\n", proc.stdout


def test_report_in_chromium_shows_every_attempt_escapes_agent_output(ran, browser):
    ws, _ = ran
    proc = ws.doit("report", check_rc=0)
    path = ws.root / ".orchestrate" / "report.html"
    assert proc.stdout == f"{path}\n"
    html = path.read_text()
    assert "<script" not in html.lower() and "<img" not in html.lower()
    page = Page(browser, path)
    try:
        # loads with no console error and no request but the file itself
        assert page.errors == []
        assert page.requests == [page.url]
        bars = page.page.locator(".attempt")
        found = [(b.get_attribute("data-task"), b.get_attribute("data-attempt"),
                  b.get_attribute("data-state")) for b in bars.all()]
        # one bar per attempt: the retried agent has two, failed then done
        assert [f for f in found if f[0] == "main:flaky"] == [
            ("main:flaky", "1", "failed"), ("main:flaky", "2", "done")]
        assert [f for f in found if f[0] == "main:evil"] == [("main:evil", "1", "failed")]
        for task in ("main:either", "other:solo"):
            assert [f for f in found if f[0] == task] == [(task, "1", "done")]
        assert not [f for f in found if f[0] in ("main:after_evil", "held:gated")]
        for task in {f[0] for f in found}:
            pipeline, agent = task.split(":")
            assert len([f for f in found if f[0] == task]) == ws.status(pipeline, agent)["attempt"]
        # the agent's markup ran nothing and shows as text
        assert page.page.evaluate("() => [window.__pwned, window.__pwned_img]") == [None, None]
        assert page.page.locator("script, img").count() == 0
        log = page.page.locator('.failure[data-task="main:evil"] pre')
        assert log.is_visible()
        text = log.inner_text()
        for line in EVIL_LINES:
            assert line in text
        # the DAG shows every agent, and the signal nobody gave
        for task in ("main:flaky", "main:evil", "main:after_evil", "main:either",
                     "other:solo", "held:gated", "signal approved"):
            assert page.dag_label(task).is_visible(), task
        assert "drawn by Graphviz" in page.page.inner_text("#dag") or shutil.which("dot") is None
        # the table: state, attempts, reason, log path
        row = page.page.locator('tr[data-task="main:flaky"]').inner_text()
        assert "done" in row and "2" in row and ".orchestrate/logs/main/flaky.log" in row
        assert "exit 1" in page.page.locator('tr[data-task="main:evil"]').inner_text()
    finally:
        page.close()


def test_report_draws_its_own_layout_without_graphviz(ran, browser):
    ws, _ = ran
    # no `dot` on PATH (doit itself is started by absolute path)
    proc = ws.doit("report", "main:either", "-o", "own/report.html",
                   env={"PATH": str(ws.root / "no-such-bin")}, check_rc=0)
    path = ws.root / "own" / "report.html"
    assert proc.stdout == f"{path}\n"
    page = Page(browser, path)
    try:
        assert page.errors == [] and page.requests == [page.url]
        assert "orchestrate's layered layout" in page.page.inner_text("#dag")
        for task in ("main:flaky", "main:evil", "main:either"):
            assert page.dag_label(task).is_visible(), task
        # the selection is the agent and its upstream only
        assert page.dag_label("main:after_evil").count() == 0
        assert page.page.locator(".attempt").count() == 4
    finally:
        page.close()


# -- doit graph --------------------------------------------------------------
def test_graph_dot_is_valid_for_graphviz_and_svg_is_drawn(ran):
    ws, _ = ran
    dot = need_dot()
    text = ws.doit("graph", check_rc=0).stdout
    rendered = subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    titles = set(re.findall(r'<g id="node\d+" class="node">\s*<title>([^<]+)</title>',
                            rendered.stdout))
    assert {"main:flaky", "main:evil", "main:after_evil", "main:either", "other:solo",
            "held:gated", "signal:approved"} <= titles
    assert '"main:flaky" -> "main:either" [style=dashed];' in text
    assert '"main:evil" -> "main:after_evil";' in text
    assert '"signal:approved" -> "held:gated" [style=dotted];' in text
    assert text.count("subgraph cluster_") == 4   # three pipelines and the legend
    proc = ws.doit("graph", "main:after_evil", "--format", "svg", "-o", "pictures/dag.svg",
                   check_rc=0)
    out = ws.root / "pictures" / "dag.svg"
    assert proc.stdout == f"{out}\n"
    svg = ET.fromstring(out.read_bytes())
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert {"main:evil", "main:after_evil"} <= texts and "main:flaky" not in texts


def test_graph_mermaid_of_a_selection(ran):
    ws, _ = ran
    text = ws.doit("graph", "main:either", "--format", "mermaid", check_rc=0).stdout
    lines = text.splitlines()
    assert lines[0] == "flowchart TB"
    assert '  subgraph p0["main"]' in lines
    nodes = dict(re.findall(r'^\s+(n\d+)\["([^"]+)"\]:::\w+$', text, re.M))
    assert set(nodes.values()) == {"main:flaky", "main:evil", "main:either"}
    states = dict(re.findall(r'^\s+n\d+\["([^"]+)"\]:::(\w+)$', text, re.M))
    assert states == {"main:flaky": "done", "main:evil": "failed", "main:either": "done"}
    ids = {label: node for node, label in nodes.items()}
    assert f"  {ids['main:flaky']} -.-> {ids['main:either']}" in lines
    assert "  classDef failed fill:#ffebee,stroke:#c62828" in lines


def test_graph_svg_without_graphviz_says_how_to_install_and_exits_3(ran):
    ws, _ = ran
    proc = ws.doit("graph", "--format", "svg", env={"PATH": str(ws.root / "no-such-bin")})
    assert proc.returncode == 3
    assert "apt-get install graphviz" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_graph_unknown_task_and_format_exit_3(ran):
    ws, _ = ran
    proc = ws.doit("graph", "nosuch")
    assert proc.returncode == 3 and "no pipeline or agent matches 'nosuch'" in proc.stderr
    proc = ws.doit("graph", "--format", "png")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    # the option the user typed, never doit's internal parameter name
    assert proc.stderr == "ERROR: unknown format 'png' (expected one of dot, mermaid, svg)\n"


# -- pure: the layout, the timeline, escaping, size ---------------------------
def _agents_50() -> list[Agent]:
    """Two pipelines, 50 agents: fan-outs of 12, chains, joins."""
    agents = []
    for p, size in (("build", 30), ("docs", 20)):
        for i in range(size):
            after = tuple(f"a{j}" for j in (i // 3 - 1, i // 5 - 2) if 0 <= j < i)
            agents.append(Agent(p, f"a{i}", command="true", after=tuple(dict.fromkeys(after)),
                                wait_for=("go",) if i == 0 else ()))
    return agents


def test_own_layout_keeps_50_agents_readable():
    agents = _agents_50()
    dag = graph.build(agents, {a.task: "done" for a in agents}, set())
    svg = ET.fromstring(graph.to_svg(dag))
    ns = "{http://www.w3.org/2000/svg}"
    boxes = []
    for group in svg.iter(f"{ns}g"):
        if group.get("class") == "node":
            rect, label = group.find(f"{ns}rect"), group.find(f"{ns}text")
            box = tuple(float(rect.get(k)) for k in ("x", "y", "width", "height"))
            assert len(label.text) * graph.CHAR_W <= box[2]   # the label fits its box
            boxes.append(box)
    assert len(boxes) == 51   # 50 agents and the signal
    for i, (x, y, w, h) in enumerate(boxes):
        for (x2, y2, w2, h2) in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y, "overlap"
    assert float(svg.get("width")) <= graph.PAGE_W + 400
    # every edge goes downwards from its upstream
    assert len([p for p in svg.iter(f"{ns}path") if p.get("marker-end")]) == len(dag.edges)


def test_timeline_shows_retries_timeouts_cancels_and_running():
    events = [
        {"ts": "2026-01-01T10:00:00.000Z", "event": "launch", "task": "p:a", "run_id": "r1",
         "attempt": 1},
        {"ts": "2026-01-01T10:00:05.000Z", "event": "stop", "task": "p:a", "run_id": "r1",
         "reason": "timeout after 5s"},
        {"ts": "2026-01-01T10:00:06.000Z", "event": "fail", "task": "p:a", "run_id": "r1",
         "attempt": 1, "reason": "timeout after 5s", "retry_at": 1.0},
        {"ts": "2026-01-01T10:00:07.000Z", "event": "launch", "task": "p:a", "run_id": "r2",
         "attempt": 2},
        {"ts": "2026-01-01T10:00:08.000Z", "event": "launch", "task": "p:b", "run_id": "r3",
         "attempt": 1},
        {"ts": "2026-01-01T10:00:09.000Z", "event": "cancel", "task": "p:b", "run_id": "r3",
         "attempt": 1, "reason": "cancelled by user"},
        {"ts": "2026-01-01T10:00:09.000Z", "event": "cancel", "task": "p:c",
         "reason": "cancelled by user"},   # never launched: no bar
        {"ts": "2026-01-01T10:00:09.000Z", "event": "launch", "task": "x:other", "run_id": "r9",
         "attempt": 1},                    # outside the selection
        "not an event line",
    ]
    records = {"p:a": StatusRecord("running", "p", "a", attempt=2, run_id="r2")}
    line = timeline.build([e for e in events if isinstance(e, dict)], {"p:a", "p:b", "p:c"},
                          records)
    got = [(a.task, a.attempt, a.state, a.stop_reason, a.relaunched) for a in line.attempts]
    assert got == [("p:a", 1, "failed", "timeout after 5s", True),
                   ("p:a", 2, "running", None, False),
                   ("p:b", 1, "cancelled", None, False)]
    data = report.ReportData("ws", [], [], line, "<svg></svg>",
                             generated=timeline.parse_time("2026-01-01T10:00:10.000Z"))
    html = report.render(data)
    assert html.count('class="attempt') == 3
    assert 'class="attempt stopped" data-task="p:a" data-attempt="1" data-state="failed"' in html
    assert 'data-task="p:a" data-attempt="2" data-state="running"' in html
    assert "+10s" in html   # the time axis spans the run


def test_report_escapes_reasons_logs_and_names():
    row = report.AgentRow("p:a", "failed", 1, reason='exit 1 <b onmouseover="x()">',
                          log='.orchestrate/logs/p/a"><script>.log', log_href='a"><script>.log')
    failure = report.Failure("p:a", "agent reported an error: </pre><script>x()</script>",
                             "log", ["<script>alert(1)</script>", "<img src=x onerror=y()>"])
    html = report.render(report.ReportData("<ws>", ["<sel>"], [row], timeline.Timeline(),
                                           "<svg></svg>", failures=[failure]))
    assert re.findall(r"<(script|img|b )", html, re.I) == []
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="a&quot;&gt;&lt;script&gt;.log"' in html


def test_log_links_are_relative_and_never_a_script_url(tmp_path):
    from orchestrate.cli.cmd_pictures import _row
    from orchestrate.core.scheduler import Decision
    agent = Agent("p", "a", command="true")
    record = StatusRecord("failed", "p", "a", attempt=1, log="javascript:alert(1)")
    row = _row(tmp_path, Decision(agent, "failed", "exit 1"), record, tmp_path)
    assert row.log_href == "javascript%3Aalert%281%29"
    row = _row(tmp_path, Decision(agent, "failed", "exit 1"),
               StatusRecord("failed", "p", "a", log=".orchestrate/logs/p/a b.log"),
               tmp_path / ".orchestrate")
    assert row.log_href == "logs/p/a%20b.log"


def synthetic_report(agents: int, attempts_each: int) -> report.ReportData:
    """Report data of `agents` agents (chains of 10, in 10 pipelines) that each
    ran `attempts_each` times; one in ten failed with a 40-line log tail."""
    specs, attempts, rows, failures = [], [], [], []
    start = 1_700_000_000.0
    for n in range(agents):
        pipeline, index = f"p{n % 10}", n // 10
        after = (f"a{index - 10}",) if index >= 10 else ()
        agent = Agent(pipeline, f"a{index}", command="true", after=after)
        specs.append(agent)
        failed = n % 10 == 3
        for k in range(1, attempts_each + 1):
            begin = start + n * 0.5 + k * 2
            attempts.append(timeline.Attempt(agent.task, f"{agent.task}.{k}", k, begin,
                                             begin + 1.5, "failed" if failed or k < attempts_each
                                             else "done", reason="exit 1"))
        rows.append(report.AgentRow(agent.task, "failed" if failed else "done", attempts_each,
                                    "1.5s", reason="exit 1" if failed else "done",
                                    log=f".orchestrate/logs/{pipeline}/a{index}.log"))
        if failed:
            failures.append(report.Failure(agent.task, "exit 1", rows[-1].log,
                                           [f"line {i}: some output of a failing agent <x>"
                                            for i in range(40)]))
    dag = graph.build(specs, {r.task: r.state for r in rows}, set())
    return report.ReportData("/ws", [], rows, timeline.Timeline(attempts), graph.to_svg(dag),
                             dag_source="orchestrate's layered layout", failures=failures,
                             generated=start + 1000)


def test_report_of_1000_agents_and_3000_attempts_is_small():
    """Point 3 at its full size: every bar is there and the page stays under
    3 MB (`python -m bench --only report` measures the time, on a real run)."""
    html = report.render(synthetic_report(agents=1000, attempts_each=3))
    assert html.count('class="attempt') == 3000
    assert html.count('<g class="node"') == 1000
    assert len(html.encode()) < 3_000_000


def test_an_invalid_pipeline_is_left_out_with_a_warning(ws):
    # like doit status: looking never needs every file valid (launching does)
    ws.write_pipeline("good", "[agents.y]\ncommand = 'true'\n")
    ws.write_pipeline("bad", "[agents.x]\ncommand = 3\n")
    for args in (["report"], ["graph"]):
        proc = ws.doit(*args)
        assert proc.returncode == 0, proc
        assert "warning: invalid pipeline" in proc.stderr
        assert "pipelines/bad.toml: agent 'x': key 'command'" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert "good:y" in proc.stdout and "bad:x" not in proc.stdout
    proc = ws.doit("graph", "bad:x", check_rc=3)
    assert "its pipeline file is invalid" in proc.stderr


def test_report_sums_cost_tokens_and_budget_of_agent_clis(ws, fake_bins):
    from test_presets import preset_toml
    ws.write_pipeline("p", "budget_usd = 1.0\n" + preset_toml("a", "claude", "one"))
    ws.doit("wait", check_rc=0, env=fake_bins)
    path = ws.doit("report", check_rc=0).stdout.strip()
    html = Path(path).read_text()
    summary = html[html.index('id="summary"'):html.index('id="dag"')]
    assert "<dt>cost</dt><dd>$0.0123</dd>" in summary
    assert "<dt>tokens</dt><dd>1,200 in / 340 out</dd>" in summary
    assert "<dt>budget p</dt><dd>$0.0123 spent of $1.00 budget" in summary
    row = html[html.index('<tr data-task="p:a">'):]
    assert "$0.0123" in row[:row.index("</tr>")]


def test_a_relaunch_after_a_rate_limit_is_a_bar_of_its_own():
    """A rate-limited run is relaunched as the same attempt: two bars, both #1."""
    events = [
        {"ts": "2026-01-01T10:00:00.000Z", "event": "launch", "task": "p:a", "run_id": "r1",
         "attempt": 1},
        {"ts": "2026-01-01T10:00:01.000Z", "event": "fail", "task": "p:a", "run_id": "r1",
         "attempt": 1, "reason": "exit 1", "retry_at": 2.0},
        {"ts": "2026-01-01T10:00:03.000Z", "event": "launch", "task": "p:a", "run_id": "r2",
         "attempt": 1},
        {"ts": "2026-01-01T10:00:04.000Z", "event": "finish", "task": "p:a", "run_id": "r2",
         "attempt": 1, "reason": "done"},
    ]
    line = timeline.build(events, {"p:a"}, {})
    html = report.render(report.ReportData("ws", [], [], line, "<svg></svg>"))
    bars = re.findall(r'data-attempt="(\d)" data-state="(\w+)"', html)
    assert bars == [("1", "failed"), ("1", "done")]
