"""Hooks: on_failure / on_done / on_blocked, once per occurrence, detached.

Real doit, real agents (fake_agent.py), real hook processes; each hook here
appends a line to a file, so counting lines counts runs.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import wait_until
from orchestrate.runtime.hooks import standing, verdict
from orchestrate.core.scheduler import Decision
from orchestrate.core.spec import Agent, Hooks, Pipeline, PipelineError
from orchestrate.runtime.workspace import load_workspace
from orchestrate.runtime.state import StatusRecord

PROBE = Path(__file__).with_name("hook_probe.py")
README = Path(__file__).parent.parent / "README.md"
APPEND = 'echo "$ORCHESTRATE_EVENT ${ORCHESTRATE_TASK:-$ORCHESTRATE_PIPELINE}" >> hooks.txt'


# -- helpers ------------------------------------------------------------------
def events(ws, kind: str) -> list[dict]:
    path = ws.state / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == kind]


def finished_hooks(ws) -> list[dict]:
    return events(ws, "hook_ran") + events(ws, "hook_failed")


def wait_hooks(ws, count: int, timeout: float = 30) -> list[dict]:
    return wait_until(lambda: len(finished_hooks(ws)) >= count and finished_hooks(ws),
                      timeout, f"{count} hooks to finish")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def workspace_hooks(ws, text: str) -> None:
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write("\n" + text.strip() + "\n")


def pending(ws) -> list[str]:
    directory = ws.state / "hooks" / "pending"
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def nothing_fires_again(ws, *commands: tuple[str, ...]) -> None:
    """Each command returns; no new event is recorded and none is pending."""
    recorded = len(events(ws, "hook"))
    for command in commands:
        ws.doit(*command)
        ws.wait_idle()
        assert len(events(ws, "hook")) == recorded, command
        assert pending(ws) == [], command


def failing_pipeline(ws, hooks: str, name: str = "p") -> None:
    ws.write_pipeline(name, f'''
{hooks}
[agents.a]
command = "{ws.agent_cmd('--exit', '2')}"
[agents.b]
command = "{ws.agent_cmd()}"
after = ["a"]
''')


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- validation -----------------------------------------------------------------
def test_hook_keys_are_validated(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text('''
[hooks]
on_succes = "true"
on_done = 5
on_failure = []
[agents.a]
command = "true"
''')
    (tmp_path / "pipelines" / "q.toml").write_text('hooks = "notify"\n[agents.a]\ncommand = "true"\n')
    (tmp_path / "pyproject.toml").write_text('[tool.orchestrate.hooks]\non_blocked = [1]\n')
    with pytest.raises(PipelineError) as info:
        load_workspace(tmp_path)
    assert info.value.problems == [
        "pyproject.toml: key 'tool.orchestrate.hooks.on_blocked': expected a string "
        "(run by /bin/sh) or a non-empty list of strings (argv)",
        "pipelines/p.toml: key 'hooks.on_succes': unknown hook event "
        "(known: on_blocked, on_done, on_failure)",
        "pipelines/p.toml: key 'hooks.on_done': expected a string (run by /bin/sh) "
        "or a non-empty list of strings (argv)",
        "pipelines/p.toml: key 'hooks.on_failure': expected a string (run by /bin/sh) "
        "or a non-empty list of strings (argv)",
        "pipelines/q.toml: key 'hooks': expected a table of on_failure, on_done, "
        "on_blocked, got a string",
    ]


def test_hooks_parse_and_a_pipelines_hook_wins_per_event(tmp_path):
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text(
        '[hooks]\non_done = ["echo", "p"]\n[agents.a]\ncommand = "true"\n')
    (tmp_path / "pyproject.toml").write_text(
        '[tool.orchestrate.hooks]\non_done = "echo ws"\non_failure = "echo ws-fail"\n')
    workspace = load_workspace(tmp_path)
    assert workspace.hooks == Hooks(on_failure="echo ws-fail", on_done="echo ws")
    merged = workspace.pipeline("p").hooks.over(workspace.hooks)
    assert merged == Hooks(on_failure="echo ws-fail", on_done=("echo", "p"))
    assert not Hooks() and merged


def test_invalid_hooks_exit_3_and_launch_nothing(ws):
    ws.write_pipeline("p", f'[hooks]\non_fail = "true"\n[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    for command, rc in (([], 3), (["wait"], 3), (["status"], 0)):   # status: a warning
        proc = ws.doit(*command, check_rc=rc)
        assert "pipelines/p.toml: key 'hooks.on_fail': unknown hook event" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert ws.launches() == []


# -- when each event fires (pure) ------------------------------------------------
def _agent(name: str, preset: str | None = None) -> Agent:
    return Agent(pipeline="p", name=name, command="true" if not preset else None,
                 preset=preset, prompt="x" if preset else None)


def _verdict(*decisions: Decision, limits: dict | None = None, runs: dict | None = None):
    pipeline = Pipeline("p", "pipelines/p.toml", tuple(d.agent for d in decisions))
    records = {t: StatusRecord("done", "p", t, run_id=r) for t, r in (runs or {}).items()}
    return verdict(pipeline, {d.agent.task: d for d in decisions}, records,
                   limits or {}, now=100.0)


def test_standing_of_each_kind_of_decision():
    a, c = _agent("a"), _agent("c", preset="claude")
    assert standing(Decision(a, "done", "done"), {}, 0) == "done"
    assert standing(Decision(a, "failed", "exit 2"), {}, 0) == "stuck"
    assert standing(Decision(a, "cancelled", "cancelled by user"), {}, 0) == "stuck"
    assert standing(Decision(a, "waiting", "on b (failed)", blocked=True), {}, 0) == "stuck"
    assert standing(Decision(a, "waiting", "on signal x", external=True), {}, 0) == "stuck"
    assert standing(Decision(a, "queued", "budget reached", blocked=True), {}, 0) == "stuck"
    assert standing(Decision(c, "queued", "rate limited", timed=True), {"claude": 50}, 10) == "stuck"
    assert standing(Decision(c, "waiting", "retry 2", timed=True), {"claude": 5}, 10) == "moving"
    assert standing(Decision(a, "waiting", "retry 2 of 3", timed=True), {}, 0) == "moving"
    assert standing(Decision(a, "waiting", "waiting on b"), {}, 0) == "follows"
    for state in ("pending", "running", "queued"):
        assert standing(Decision(a, state, "", launch=state == "pending"), {}, 0) == "moving"


def test_verdict_done_blocked_or_nothing():
    a, b = _agent("a"), _agent("b")
    done = _verdict(Decision(a, "done", "done"), Decision(b, "done", "done"),
                    runs={"p:a": "r1", "p:b": "r2"})
    assert (done.event, done.reason) == ("on_done", "all 2 agents done")
    again = _verdict(Decision(a, "done", "done"), Decision(b, "done", "done"),
                     runs={"p:a": "r1", "p:b": "r2"})
    rerun = _verdict(Decision(a, "done", "done"), Decision(b, "done", "done"),
                     runs={"p:a": "r1", "p:b": "r3"})
    assert again.id == done.id != rerun.id
    blocked = _verdict(Decision(a, "failed", "exit 2"),
                       Decision(b, "waiting", "waiting on a (failed)", blocked=True))
    assert blocked.event == "on_blocked"
    assert blocked.reason == "p:a failed: exit 2; p:b waiting: waiting on a (failed)"
    assert _verdict(Decision(a, "failed", "exit 2"), Decision(b, "running", "running")) is None
    assert _verdict(Decision(a, "running", ""), Decision(b, "waiting", "waiting on a")) is None


# -- firing, end to end --------------------------------------------------------------
def test_on_failure_and_on_blocked_fire_once(ws):
    failing_pipeline(ws, f"[hooks]\non_failure = '{APPEND}'\non_blocked = '{APPEND}'")
    ws.doit(check_rc=0)
    wait_hooks(ws, 2)
    assert sorted(lines(ws.root / "hooks.txt")) == ["on_blocked p", "on_failure p:a"]
    assert [e["event"] for e in finished_hooks(ws)] == ["hook_ran", "hook_ran"]
    nothing_fires_again(ws, (), ("wait",), ("status",), ("status", "p:a"), ("wait", "p:b"))
    assert sorted(lines(ws.root / "hooks.txt")) == ["on_blocked p", "on_failure p:a"]
    assert ws.state_of("p", "a") == "failed" and ws.state_of("p", "b") is None


def test_on_done_fires_once_and_again_after_a_rerun(ws):
    ws.write_pipeline("p", f'''
[hooks]
on_done = '{APPEND}'
[agents.a]
command = "{ws.agent_cmd()}"
[agents.b]
command = "{ws.agent_cmd()}"
after = ["a"]
''')
    ws.doit("wait", check_rc=0)
    wait_hooks(ws, 1)
    assert lines(ws.root / "hooks.txt") == ["on_done p"]
    nothing_fires_again(ws, ("wait",), ("status",), (), ("status", "p:b"))
    ws.doit("forget", "p:b")
    ws.doit("wait", check_rc=0)   # the pipeline ran again: a new occurrence
    wait_hooks(ws, 2)
    assert lines(ws.root / "hooks.txt") == ["on_done p", "on_done p"]
    assert len(ws.launches("b")) == 2


def test_blocked_on_an_external_signal_then_done(ws):
    ws.write_pipeline("p", f'''
[hooks]
on_blocked = '{APPEND}'
on_done = '{APPEND}'
[agents.a]
command = "{ws.agent_cmd()}"
[agents.b]
command = "{ws.agent_cmd()}"
after = ["a"]
wait_for = ["approved"]
''')
    ws.doit(check_rc=0)
    wait_hooks(ws, 1)   # the advancer saw a done and b waiting on the signal
    assert lines(ws.root / "hooks.txt") == ["on_blocked p"]
    ws.doit("signal", "approved", check_rc=0)
    wait_hooks(ws, 2)   # the same advancer launched b, then saw the pipeline done
    assert lines(ws.root / "hooks.txt") == ["on_blocked p", "on_done p"]
    ws.wait_idle()
    nothing_fires_again(ws, ("status",), ())


def test_a_failure_that_will_be_retried_is_not_one(ws):
    ws.write_pipeline("p", f'''
[hooks]
on_failure = 'echo "$ORCHESTRATE_TASK $ORCHESTRATE_REASON" >> hooks.txt; cat >> events.txt'
[agents.a]
command = "{ws.agent_cmd('--exit', '2')}"
retries = 1
retry_backoff = "0.1s"
''')
    ws.doit("wait", check_rc=1)
    wait_hooks(ws, 1)
    assert len(ws.launches("a")) == 2
    assert lines(ws.root / "hooks.txt") == ["p:a exit 2"]
    assert json.loads(lines(ws.root / "events.txt")[0])["attempt"] == 2
    nothing_fires_again(ws, ("status",))


def test_a_rate_limit_with_nothing_running_is_blocked_until_it_passes(ws, fake_bins):
    ws.write_pipeline("p", f'''
[hooks]
on_blocked = 'echo "$ORCHESTRATE_EVENT $ORCHESTRATE_REASON" >> hooks.txt'
on_done = '{APPEND}'
[agents.a]
agent = "claude"
prompt = "RATELIMIT then work"
''')
    ws.doit("wait", check_rc=0, env={**fake_bins, "FAKE_CLI_RESET_IN": "0.5"})
    wait_hooks(ws, 2)
    blocked, done = lines(ws.root / "hooks.txt")
    assert blocked.startswith("on_blocked p:a waiting: rate limited until ")
    assert done == "on_done p"


def test_a_pipelines_hooks_win_over_the_workspaces(ws):
    workspace_hooks(ws, '''
[tool.orchestrate.hooks]
on_done = 'echo "ws-done $ORCHESTRATE_PIPELINE" >> hooks.txt'
on_failure = 'echo "ws-failure $ORCHESTRATE_TASK" >> hooks.txt'
''')
    ws.write_pipeline("p1", f'''
[hooks]
on_blocked = '{APPEND}'
[agents.a]
command = "{ws.agent_cmd()}"
''')
    ws.write_pipeline("p2", f'''
[hooks]
on_done = 'echo "p2-done $ORCHESTRATE_PIPELINE" >> hooks.txt'
[agents.a]
command = "{ws.agent_cmd()}"
''')
    ws.write_pipeline("p3", f'[agents.a]\ncommand = "{ws.agent_cmd("--exit", "2")}"\n')
    ws.doit("wait", check_rc=1)
    wait_hooks(ws, 3)
    assert sorted(lines(ws.root / "hooks.txt")) == [
        "p2-done p2", "ws-done p1", "ws-failure p3:a"]


def test_the_hook_gets_environment_stdin_and_the_status_file(ws):
    out = ws.root / "probe.jsonl"
    probe = json.dumps([sys.executable, str(PROBE), str(out)])
    failing_pipeline(ws, f"[hooks]\non_failure = {probe}\non_blocked = {probe}")
    ws.doit(check_rc=0)
    wait_hooks(ws, 2)
    seen = {json.loads(line)["env"]["ORCHESTRATE_EVENT"]: json.loads(line) for line in lines(out)}
    failure, blocked = seen["on_failure"], seen["on_blocked"]
    run_id = ws.status("p", "a")["run_id"]
    assert {k: v for k, v in failure["env"].items() if k != "ORCHESTRATE_STATUS"} == {
        "ORCHESTRATE_EVENT": "on_failure", "ORCHESTRATE_PIPELINE": "p",
        "ORCHESTRATE_TASK": "p:a", "ORCHESTRATE_REASON": "exit 2",
        "ORCHESTRATE_EVENT_ID": f"on_failure.{run_id}", "ORCHESTRATE_ROOT": str(ws.root)}
    stdin = failure["stdin"]
    assert (stdin["event"], stdin["task"], stdin["run_id"], stdin["exit_code"],
            stdin["reason"]) == ("on_failure", "p:a", run_id, 2, "exit 2")
    assert stdin["status_file"] == failure["env"]["ORCHESTRATE_STATUS"]
    assert failure["stdin_file"].endswith(".event.json")   # a file, not a pipe
    states = {r["task"]: r["state"] for r in failure["status"]["agents"]}
    assert states == {"p:a": "failed", "p:b": "waiting"}
    assert failure["cwd"] == str(ws.root) and failure["sid"] == failure["pid"]
    assert "ORCHESTRATE_TASK" not in blocked["env"]
    assert blocked["env"]["ORCHESTRATE_REASON"] == ("p:a failed: exit 2; "
                                                    "p:b waiting: waiting on a (failed)")
    assert blocked["stdin"]["states"] == {"failed": 1, "waiting": 1}


def test_agent_text_in_a_reason_never_runs(ws, fake_bins):
    """A preset agent reports an error holding shell syntax; it reaches the
    hooks only as text."""
    ws.write_pipeline("p", '''
[hooks]
on_failure = 'echo "$ORCHESTRATE_TASK: $ORCHESTRATE_REASON" >> hooks.txt'
on_blocked = ["sh", "-c", "printf '%s\\n' \\"$ORCHESTRATE_REASON\\" >> hooks.txt"]
[agents.a]
agent = "claude"
prompt = "ERROR0 $(touch pwned) `touch pwned2`"
''')
    ws.doit(check_rc=0, env=fake_bins)
    wait_hooks(ws, 2)
    reason = ws.status("p", "a")["reason"]
    assert "$(touch pwned)" in reason
    assert sorted(lines(ws.root / "hooks.txt")) == sorted([f"p:a: {reason}", f"p:a failed: {reason}"])
    assert not list(ws.root.rglob("pwned*"))


# -- a hook cannot harm the pipeline -----------------------------------------------
def test_a_hook_past_its_limit_is_killed_and_recorded(ws):
    hang = "sleep 120 & echo $! > child.pid; echo $$ > hook.pid; wait"
    ws.write_pipeline("p", f'''
[hooks]
on_done = '{hang}'
[agents.a]
command = "{ws.agent_cmd()}"
''')
    ws.doit("wait", check_rc=0, env={"ORCHESTRATE_HOOK_TIMEOUT": "1"})
    failed = wait_hooks(ws, 1)[0]
    assert failed["event"] == "hook_failed" and failed["hook"] == "on_done"
    assert failed["reason"] == "timeout after 1s (process group killed)"
    for name in ("hook.pid", "child.pid"):
        pid = int((ws.root / name).read_text())
        wait_until(lambda: not alive(pid), 10, f"{name} to be gone")
    log = (ws.state / "logs" / "hooks.log").read_text()
    assert "end on_done p" in log and "timeout after 1s" in log
    assert ws.state_of("p", "a") == "done"


def test_failing_hooks_are_recorded_and_change_no_state_or_exit_code(ws):
    workspace_hooks(ws, '''
[tool.orchestrate.hooks]
on_done = 'echo "to the log"; exit 3'
on_failure = ["/nonexistent/notify"]
on_blocked = "no-such-command-here"
''')
    ws.write_pipeline("ok", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    failing_pipeline(ws, "", name="bad")
    assert ws.doit("wait", "ok").returncode == 0
    assert ws.doit("wait", "bad").returncode == 1
    reasons = {e["hook"]: e["reason"] for e in wait_hooks(ws, 3)}
    assert reasons == {
        "on_done": "exit 3",
        "on_failure": "could not start: No such file or directory: /nonexistent/notify",
        "on_blocked": "exit 127"}
    assert all(e["event"] == "hook_failed" for e in finished_hooks(ws))
    assert "to the log" in (ws.state / "logs" / "hooks.log").read_text()
    assert ws.state_of("ok", "a") == "done" and ws.state_of("bad", "a") == "failed"
    assert ws.doit("status").returncode == 0
    assert ws.doit().returncode == 1 and ws.doit("ok").returncode == 0
    assert len(finished_hooks(ws)) == 3


def test_a_hook_keeps_neither_doit_nor_the_advancer_waiting(ws):
    gate = ws.root / "gate"
    ws.write_pipeline("p", f'''
[hooks]
on_done = 'echo $$ > hook.pid; while [ ! -e gate ]; do sleep 0.02; done; {APPEND}'
[agents.a]
command = "{ws.agent_cmd()}"
''')
    ws.doit(check_rc=0)   # output captured: a hook holding the pipe would block this
    pid = int(wait_until(lambda: (ws.root / "hook.pid").exists()
                         and (ws.root / "hook.pid").read_text().strip(), 30, "the hook"))
    wait_until(lambda: events(ws, "advancer_exit"), 30, "the advancer to exit")
    ws.wait_idle()
    assert alive(pid) and ws.orchestrator_pids() == []
    ws.doit("wait", check_rc=0)
    assert alive(pid)
    gate.touch()
    wait_hooks(ws, 1)
    assert lines(ws.root / "hooks.txt") == ["on_done p"]


# -- exactly once across kill -9 ---------------------------------------------------
def test_kill_9_after_recording_the_event_runs_its_hook_once_later(ws):
    failing_pipeline(ws, f"[hooks]\non_failure = '{APPEND}'")
    ws.doit(check_rc=0, env={"ORCHESTRATE_CRASH_AT": "hook-recorded:1"})
    # the advancer recorded the failure, then died of SIGKILL before starting the hook
    wait_until(lambda: pending(ws) and not ws.orchestrator_pids(), 30, "the crash")
    assert not events(ws, "advancer_exit") and len(events(ws, "hook")) == 1
    assert finished_hooks(ws) == [] and not (ws.root / "hooks.txt").exists()
    ws.doit("status", check_rc=0)   # the next process that looks runs it
    wait_hooks(ws, 1)
    assert lines(ws.root / "hooks.txt") == ["on_failure p:a"]
    nothing_fires_again(ws, ("status",), (), ("wait",))
    assert lines(ws.root / "hooks.txt") == ["on_failure p:a"]
    assert len(finished_hooks(ws)) == 1


def test_racing_supervisors_run_a_pending_hook_once(ws):
    failing_pipeline(ws, f"[hooks]\non_failure = '{APPEND}'")
    ws.doit(check_rc=0, env={"ORCHESTRATE_CRASH_AT": "hook-recorded:1"})
    wait_until(lambda: pending(ws) and not ws.orchestrator_pids(), 30, "the crash")
    event_id = pending(ws)[0][:-len(".json")]
    racers = [subprocess.Popen([sys.executable, "-m", "orchestrate.runtime.hookrun", str(ws.root),
                                event_id]) for _ in range(4)]
    assert [r.wait(timeout=60) for r in racers] == [0, 0, 0, 0]
    assert lines(ws.root / "hooks.txt") == ["on_failure p:a"]
    assert len(finished_hooks(ws)) == 1 and pending(ws) == []


# -- the README's recipes, as written ------------------------------------------------
def readme_recipe(needle: str) -> str:
    section = README.read_text().split("## Hooks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    found = [b for b in blocks if b.startswith("[tool.orchestrate.hooks]") and needle in b]
    assert len(found) == 1, needle
    return found[0]


def test_every_hooks_example_in_the_readme_is_valid(tmp_path):
    section = README.read_text().split("## Hooks", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    (tmp_path / "pipelines").mkdir()
    for block in blocks:
        pipeline = block if block.startswith("[hooks]") else "[hooks]\n" + block.split("\n", 1)[1]
        (tmp_path / "pipelines" / "p.toml").write_text(pipeline + '[agents.a]\ncommand = "true"\n')
        (tmp_path / "pyproject.toml").write_text(block if block.startswith("[tool.") else "")
        workspace = load_workspace(tmp_path)
        assert workspace.pipeline("p").hooks
        assert bool(workspace.hooks) == block.startswith("[tool.orchestrate.hooks]")


def test_readme_append_to_a_file_recipe(ws):
    workspace_hooks(ws, readme_recipe("notifications.log"))
    failing_pipeline(ws, "", name="bad")
    ws.write_pipeline("ok", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    ws.doit("wait", check_rc=1)
    wait_hooks(ws, 3)
    assert [e["event"] for e in finished_hooks(ws)] == ["hook_ran"] * 3
    written = sorted(line.split(" ", 1)[1] for line in lines(ws.root / "notifications.log"))
    assert written == ["bad blocked: bad:a failed: exit 2; bad:b waiting: waiting on a (failed)",
                       "bad:a failed: exit 2", "ok done"]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", line)
               for line in lines(ws.root / "notifications.log"))
    posted = sorted(json.loads(line)["event"] for line in lines(ws.root / "hook-events.jsonl"))
    assert posted == ["on_blocked", "on_done", "on_failure"]


def test_readme_notify_send_recipe(ws, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "notify-calls.jsonl"
    fake = bin_dir / "notify-send"   # stands in for libnotify's: records its argv
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    workspace_hooks(ws, readme_recipe("notify-send"))
    failing_pipeline(ws, "", name="bad")
    ws.write_pipeline("ok", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
    ws.doit("wait", check_rc=1, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    wait_hooks(ws, 2)
    assert sorted(json.loads(line) for line in lines(calls)) == [
        ["orchestrate: bad:a failed", "exit 2"], ["orchestrate: ok is done"]]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers["Content-Type"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_readme_webhook_recipe_posts_the_event(ws):
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed (.ci/run installs it)")
        pytest.skip("curl is not installed: apt-get install -y curl")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        recipe = readme_recipe("curl")
        url = f"http://127.0.0.1:{server.server_port}/hook"
        workspace_hooks(ws, recipe.replace("https://hooks.example.com/orchestrate", url))
        failing_pipeline(ws, "", name="bad")
        ws.write_pipeline("ok", f'[agents.a]\ncommand = "{ws.agent_cmd()}"\n')
        ws.doit("wait", check_rc=1)
        wait_hooks(ws, 2)
        assert [e["event"] for e in finished_hooks(ws)] == ["hook_ran"] * 2
        posted = {json.loads(body)["event"]: (kind, json.loads(body))
                  for kind, body in _Receiver.received}
        assert set(posted) == {"on_failure", "on_done"}
        kind, failure = posted["on_failure"]
        assert kind == "application/json" and failure["task"] == "bad:a"
        assert posted["on_done"][1]["pipeline"] == "ok"
    finally:
        server.shutdown()
        server.server_close()
