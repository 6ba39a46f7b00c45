"""Checks: an agent is done when its check says so; a failed check goes back
to it with feedback (real doit, real processes, real files)."""
from __future__ import annotations

import json
import os
import signal

from conftest import wait_until

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
