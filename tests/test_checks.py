"""Checks: an agent is done when its check says so; a failed check goes back
to it with feedback (real doit, real processes, real files)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import wait_until
from test_real_clis import api, cli_env, home  # noqa: F401 (fixtures)

FIX = ('if [ -n "$ORCHESTRATE_FEEDBACK" ] && grep -q "says: broken" "$ORCHESTRATE_FEEDBACK"; '
       'then echo fixed > out.txt; else echo broken > out.txt; fi')
CHECK = 'grep -q fixed out.txt || { echo "out.txt says: $(cat out.txt)"; exit 1; }'


def events(ws, kind=None):
    path = ws.state / "events.jsonl"
    found = [json.loads(l) for l in path.read_text().splitlines() if l]
    return [e for e in found if kind is None or e["event"] == kind]


def test_an_agent_that_fixes_what_its_feedback_says_passes_on_the_relaunch(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd() + " && " + FIX)}
outputs = ["out.txt"]
check = {json.dumps(CHECK)}

[agents.b]
command = {json.dumps(ws.agent_cmd())}
after = ["a"]
''')
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("a")) == 2 and len(ws.launches("b")) == 1
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["check_attempts"] == 1
    assert record["attempt"] == 1                    # not one of `retries`
    assert record["check"]["exit_code"] == 0
    assert (ws.root / "out.txt").read_text() == "fixed\n"
    feedback = (ws.state / "feedback" / "p" / "a.md").read_text()
    assert "out.txt says: broken" in feedback and "exit code 1" in feedback
    assert "grep -q fixed out.txt" in feedback
    failed = events(ws, "check_failed")
    assert [(e["task"], e["last_line"], e["check"], e["of"]) for e in failed] == [
        ("p:a", "out.txt says: broken", 1, 2)]
    assert [e["task"] for e in events(ws, "check_passed")] == ["p:a"]
    relaunch = [e for e in events(ws, "launch") if e["task"] == "p:a"][1]
    assert relaunch["reason"] == "check 1 of 2 failed: out.txt says: broken"
    log = ws.doit("logs", "p:a", "--check", check_rc=0).stdout
    assert "# check: grep" in log and "says: broken" not in log   # the passing check


def test_a_check_that_never_passes_fails_the_agent_after_check_retries(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
check = "echo first line; echo 'tests: 3 failed'; exit 4"
check_retries = 1
retries = 3

[agents.b]
command = {json.dumps(ws.agent_cmd())}
after = ["a"]
''')
    ws.doit("wait", check_rc=1)
    assert len(ws.launches("a")) == 2 and ws.launches("b") == []
    record = ws.status("p", "a")
    assert record["state"] == "failed" and record["reason"] == "check failed: tests: 3 failed"
    assert not ws.signal("p", "a").exists()
    assert [e["reason"] for e in events(ws, "fail")] == [
        "check 1 of 1 failed: tests: 3 failed", "check failed: tests: 3 failed"]
    table = ws.doit("status", check_rc=0).stdout
    assert "check failed: tests: 3 failed" in table
    assert "tests: 3 failed" in ws.doit("logs", "p:a", "--check", check_rc=0).stdout
    from orchestrate.cli.mcp_tools import Toolbox   # the MCP server's `logs` tool, check=true
    assert Toolbox(ws.root).logs("p:a", 1, check=True)["log"] == "tests: 3 failed\n"
    ws.doit("report", check_rc=0)
    html = (ws.state / "report.html").read_text()
    assert html.count('data-task="p:a" data-check="failed"') == 2   # one bar per run
    assert "check 1 of 1 failed: tests: 3 failed" in html
    failure = html[html.index('<article class="failure" data-task="p:a"'):]
    assert "a.check.log" in failure[:failure.index("</article>")]
    assert "first line" in failure[:failure.index("</article>")]   # the check's output


def test_a_check_past_its_timeout_is_killed_and_counts_as_failed(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
check = "echo looking; sleep 600"
check_timeout = "1s"
check_retries = 0
kill_grace = "1s"
''')
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"] == "check failed: timed out after 1s (check_timeout)"
    assert record["check"]["timed_out"] is True
    assert len(ws.launches("a")) == 1
    wait_until(lambda: not ws.agent_pids(), 10, "the check's sleep to be killed")


def test_checking_shows_in_status_and_a_kill_9_of_every_orchestrator_keeps_the_verdict(ws):
    gate = ws.root / "go"
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd() + " && " + FIX)}
outputs = ["out.txt"]
check = {json.dumps(f"while [ ! -e {gate} ]; do sleep 0.05; done; " + CHECK)}
''')
    ws.doit(check_rc=0)
    wait_until(lambda: (ws.status("p", "a") or {}).get("reason") == "checking", 30,
               "the check to run")
    assert "checking" in ws.doit("status", check_rc=0).stdout
    for pid in ws.orchestrator_pids():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not ws.orchestrator_pids(), 10, "orchestrators gone")
    gate.touch()   # the check fails now, with nobody watching
    runs = ws.state / "runs"
    wait_until(lambda: list(runs.glob("*.exit")), 20, "the wrapper's exit record")
    assert len(ws.launches("a")) == 1
    ws.doit("wait", check_rc=0)
    # the verdict was kept: one relaunch with feedback, not a rerun of the first run
    assert len(ws.launches("a")) == 2
    assert ws.status("p", "a")["check_attempts"] == 1
    assert [e["last_line"] for e in events(ws, "check_failed")] == ["out.txt says: broken"]


def test_bad_check_keys_exit_3_naming_file_agent_and_key(ws):
    ws.write_pipeline("p", '''
[agents.a]
command = "true"
check = 5
check_timeout = 0
check_retries = -1

[agents.b]
command = "true"
check = []
check_timeout = "soon"
check_retries = "2"
''')
    proc = ws.doit(check_rc=3)
    assert "Traceback" not in proc.stderr
    for agent, key in (("a", "check"), ("a", "check_timeout"), ("a", "check_retries"),
                       ("b", "check"), ("b", "check_timeout"), ("b", "check_retries")):
        assert f"pipelines/p.toml: agent '{agent}': key '{key}'" in proc.stderr, proc.stderr
    assert "expected a duration > 0" in proc.stderr
    assert "expected an integer >= 0, got -1" in proc.stderr
    assert not (ws.state / "status" / "p").exists() or not list((ws.state / "status" / "p").iterdir())


def test_the_relaunch_shows_in_status_and_its_cost_counts_toward_the_budget(ws, fake_bins):
    """Every relaunch after a failed check is a run like any: its cost adds up,
    and once the budget is reached no further relaunch starts."""
    gate = ws.root / "go"
    ws.write_pipeline("p", f'''
budget_usd = 0.02

[agents.a]
agent = "claude"
prompt = "Write the parser."
check = {json.dumps(f"if [ -e {gate} ]; then echo still red; exit 1; fi; touch {gate}; echo red; exit 1")}
check_retries = 5
''')
    ws.doit("wait", env=fake_bins, check_rc=1)
    calls = cli_calls(ws)
    assert len(calls) == 2                       # 0.0123 spent < 0.02: one relaunch; then held
    record = ws.status("p", "a")
    assert record["spent_usd"] == 0.0246 and record["check_attempts"] == 2
    table = ws.doit("status", env=fake_bins, check_rc=0).stdout
    assert "budget reached: $0.02 of $0.02 (pipeline)" in table
    assert [e["reason"] for e in events(ws, "launch")] == [
        "never run", "check 1 of 5 failed: red"]


def test_status_says_which_check_failed_while_the_relaunch_runs(ws):
    wait = 'if [ -n "$ORCHESTRATE_FEEDBACK" ]; then while [ ! -e go ]; do sleep 0.05; done; fi'
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd() + "; " + wait)}
check = {json.dumps(ONCE)}
''')
    ws.doit(check_rc=0)
    wait_until(lambda: len(ws.launches("a")) == 2, what="the relaunch")
    line = next(l for l in ws.doit("status", check_rc=0).stdout.splitlines() if "p:a" in l)
    assert "running" in line and "check 1 of 2 failed: 2 tests failed: test_parse" in line
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)


def test_the_check_runs_in_the_agents_worktree_until_its_tests_pass(ws):
    """The recipe: implement in a worktree until the tests pass (real git, real pytest)."""
    git = ["git", "-C", str(ws.root)]
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@example.invalid"],
                 ["config", "user.name", "test"]):
        subprocess.run(git + args, check=True, capture_output=True)
    (ws.root / "test_calc.py").write_text("from calc import add\n\n"
                                          "def test_add():\n    assert add(2, 2) == 4\n")
    subprocess.run(git + ["add", "-A"], check=True, capture_output=True)
    subprocess.run(git + ["commit", "-qm", "tests"], check=True, capture_output=True)
    # a first draft that is wrong; told by pytest, the agent fixes it
    implement = ('if [ -n "$ORCHESTRATE_FEEDBACK" ] && grep -q "assert 0 == 4" '
                 '"$ORCHESTRATE_FEEDBACK"; then op=+; else op=-; fi; '
                 'printf "def add(a, b):\\n    return a $op b\\n" > calc.py')
    ws.write_pipeline("p", f'''
[agents.implement]
command = {json.dumps(implement)}
isolation = "worktree"
outputs = ["calc.py"]
check = {json.dumps([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"])}
''')
    ws.doit("wait", check_rc=0)
    tree = ws.state / "worktrees" / "p" / "implement"
    assert "return a + b" in (tree / "calc.py").read_text()
    assert not (ws.root / "calc.py").exists()          # the check ran in the worktree
    record = ws.status("p", "implement")
    assert record["check_attempts"] == 1 and "1 passed" in record["check"]["last_line"]
    assert "assert 0 == 4" in (ws.state / "feedback" / "p" / "implement.md").read_text()


def test_cancel_while_checking_stops_the_check_and_its_children(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
check = "sleep 600 & sleep 600; wait"
timeout = "1s"
''')
    ws.doit(check_rc=0)
    wait_until(lambda: (ws.status("p", "a") or {}).get("reason") == "checking", 30,
               "the check to run")
    assert ws.agent_pids()
    ws.doit("cancel", "p:a", check_rc=0)
    record = ws.status("p", "a")
    assert record["state"] == "cancelled" and record["reason"] == "cancelled by user"
    assert not ws.agent_pids()   # the check's own process group went too
    assert events(ws, "check_failed") == [] and len(ws.launches("a")) == 1


def test_changing_the_check_makes_the_agent_stale_and_the_check_leaves_nothing_running(ws):
    def pipeline(check: str) -> str:
        return f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
check = {json.dumps(check)}
'''
    ws.write_pipeline("p", pipeline("sleep 600 & echo started a daemon"))
    ws.doit("wait", check_rc=0)
    # what the check left in its group was ended with it (else: 600 s of sleep)
    wait_until(lambda: not ws.agent_pids(), 10, "the check's daemon to be gone")
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("a")) == 1
    ws.write_pipeline("p", pipeline("true"))
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("a")) == 2


# -- presets: the feedback goes into the prompt, the CLI's session is resumed --

ONCE = ('if [ -e .checked-once ]; then echo ok; else touch .checked-once; '
        'echo "2 tests failed: test_parse"; exit 1; fi')


def preset_pipeline(preset: str, **keys) -> str:
    lines = ["[agents.a]", f'agent = "{preset}"', 'prompt = "Write the parser."',
             f"check = {json.dumps(ONCE)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def cli_calls(ws) -> list[dict]:
    path = ws.root / "cli-calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


RESUMED_ARGV = {
    "claude": lambda sid: ["-p", "--output-format", "stream-json", "--verbose",
                           "--resume", sid],
    "codex": lambda sid: ["exec", "resume", "--json", "--skip-git-repo-check", sid, "-"],
    "gemini": lambda sid: ["--output-format", "stream-json", "--skip-trust",
                           "--resume", sid, "-p", ""],
}


@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
def test_a_preset_agent_gets_the_feedback_and_resumes_its_session(ws, fake_bins, preset):
    ws.write_pipeline("p", preset_pipeline(preset))
    ws.doit("wait", env=fake_bins, check_rc=0)
    first, second = cli_calls(ws)
    assert first["prompt"].strip() == "Write the parser."
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["check_attempts"] == 1
    session = record["result"]["session_id"]
    if preset == "aider":   # no session to resume: a fresh one, prompt and feedback
        assert "--restore-chat-history" not in second["argv"]
        assert second["prompt"].startswith("Write the parser.")
    else:                   # the session has the prompt: only the feedback is sent
        assert second["argv"] == RESUMED_ARGV[preset](session)
        assert "Write the parser." not in second["prompt"]
    assert "2 tests failed: test_parse" in second["prompt"]
    assert "Check 1 of 2 failed" in second["prompt"]


@pytest.mark.real_cli
@pytest.mark.parametrize("preset", ["claude", "codex", "gemini", "aider"])
def test_the_real_cli_continues_its_conversation_after_a_failed_check(ws, api, home, preset):
    """Against the real CLI and the mock model API: the relaunch's request
    holds the first turn (the prompt and the model's answer) and then the
    feedback, so the CLI resumed its session (aider: a fresh one, with both)."""
    env = cli_env(preset, api, "success", home)
    model = {"gemini": "gemini-2.5-flash", "aider": "openai/gpt-4o-mini"}.get(preset)
    ws.write_pipeline("p", preset_pipeline(preset, **({"model": model} if model else {})))
    before = len(api.seen("success"))
    ws.doit("wait", env=env, timeout=180, check_rc=0)
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["check_attempts"] == 1, record
    bodies = [json.dumps(r["body"]) for r in api.seen("success")[before:]
              if r["body"] and ("Write the parser." in json.dumps(r["body"])
                                or "test_parse" in json.dumps(r["body"]))]
    last = bodies[-1]
    assert "2 tests failed: test_parse" in last
    assert "Write the parser." in last
    if preset != "aider":
        assert "PLAN: hello" in last   # the first turn's answer: the same conversation
        assert last.index("Write the parser.") < last.index("PLAN: hello") < last.index(
            "test_parse")


def test_a_lost_session_is_retried_fresh_with_the_feedback(ws, fake_bins):
    """The CLI no longer knows the session (its store was wiped): the resumed
    run fails as the real claude does, and its retry starts a fresh session
    with the prompt and the feedback."""
    gated = f"while [ ! -e go ]; do sleep 0.05; done; {ONCE}"
    ws.write_pipeline("p", preset_pipeline("claude", retries=1, retry_backoff="0s")
                      .replace(json.dumps(ONCE), json.dumps(gated)))
    ws.doit(env=fake_bins, check_rc=0)
    wait_until(lambda: (ws.status("p", "a") or {}).get("reason") == "checking",
               what="the first check")
    (ws.root / "fake-cli-sessions.txt").unlink()
    (ws.root / "go").touch()
    ws.doit("wait", env=fake_bins, check_rc=0)
    first, resumed, fresh = cli_calls(ws)
    assert "--resume" in resumed["argv"] and "--resume" not in fresh["argv"]
    assert fresh["prompt"].startswith("Write the parser.") and "test_parse" in fresh["prompt"]
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["attempt"] == 2


# -- the pure parts ----------------------------------------------------------------

def test_last_line_feedback_and_what_a_relaunch_carries():
    from orchestrate.core.checks import (Verdict, carried, feedback_text, last_line,
                                    prompt_with_feedback)
    from orchestrate.runtime.state import StatusRecord
    assert last_line(["a", "FAILED x", "  ", ""]) == "FAILED x"
    assert last_line([]) == "(no output)" and len(last_line(["y" * 500])) == 200
    verdict = Verdict("pytest -q", 1, "1 failed", ("E assert 1 == 2", "1 failed"))
    text = feedback_text(verdict, 1, 2)
    assert "Check 1 of 2 failed" in text and "`pytest -q`" in text and "exit code 1" in text
    assert "E assert 1 == 2\n1 failed" in text
    assert prompt_with_feedback("Do it.", "FB", resumed=True) == "FB"
    assert prompt_with_feedback("Do it.\n", "FB", resumed=False) == "Do it.\n\n---\n\nFB"
    base = StatusRecord(state="waiting", pipeline="p", agent="a", retry_at=1.0,
                        check_attempts=1, feedback="f.md", resume_session="s1",
                        check={"exit_code": 1})
    assert carried(base) == {"check_attempts": 1, "feedback": "f.md", "resume_session": "s1"}
    crashed = StatusRecord(state="waiting", pipeline="p", agent="a", retry_at=1.0,
                           check_attempts=1, feedback="f.md", resume_session="s1")
    assert carried(crashed)["resume_session"] is None   # a fresh session after a crash
    assert carried(StatusRecord(state="failed", pipeline="p", agent="a")) == {}


def test_the_resume_invocations():
    from orchestrate.agents.presets import invocation
    from orchestrate.core.spec import Agent
    def argv(preset, **kw):
        agent = Agent("p", "a", preset=preset, prompt="x", extra_args=("--x",), **kw)
        return list(invocation(agent, preset, "/prompt", resume="ID").argv)
    assert argv("claude") == ["claude", "-p", "--output-format", "stream-json", "--verbose",
                              "--resume", "ID", "--x"]
    assert argv("codex", model="m") == ["codex", "exec", "resume", "--json",
                                        "--skip-git-repo-check", "-m", "m", "--x", "ID", "-"]
    assert argv("gemini") == ["gemini", "--output-format", "stream-json", "--skip-trust",
                              "--resume", "ID", "--x", "-p", ""]
