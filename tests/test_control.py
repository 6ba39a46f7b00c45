"""Control under faults: timeouts, stalls, retries, cancel, caps, PID reuse,
corrupt state. Real doit, real processes, real signals."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import group_alive, wait_until


def agent_toml(ws, name: str, *args: str, **keys) -> str:
    lines = [f"[agents.{name}]", f"command = {json.dumps(ws.agent_cmd(*args))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_timeout_kills_the_whole_group_and_fails_with_reason(ws):
    # the agent starts a grandchild in its group, then hangs ignoring SIGTERM
    ws.write_pipeline("p", f'''
[agents.slow]
command = "sleep 60 & {ws.agent_cmd('--ignore-term', '--sleep', '60')}"
timeout = "0.5s"
kill_grace = "0.3s"
[agents.after]
command = "true"
after = ["slow"]
''')
    proc = ws.doit("wait", check_rc=1)
    record = ws.status("p", "slow")
    assert record["state"] == "failed" and record["reason"] == "timeout after 0.5s"
    assert "waiting on slow (failed)" in proc.stdout
    wait_until(lambda: not group_alive(record["pid"]), what="the agent's group gone")
    events = [json.loads(l) for l in (ws.state / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "stop" and e["reason"] == "timeout after 0.5s" for e in events)
    assert ws.status("p", "after") is None


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[1])


def _session_members(sid: int) -> set[int]:
    members = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.add(int(entry.name))
            except OSError:
                pass
    return members


def test_child_in_its_own_session_is_found_by_run_id_and_killed_on_timeout(ws):
    pidfile, gate = ws.root / "orphan.pid", ws.root / "release"
    # the spawner starts `sleep 60` in a new session and then exits, leaving
    # it an orphan; the wrapper's own `sleep 30` keeps the run going
    command = ws.agent_cmd("--spawn-session-child", str(pidfile), "--gate", str(gate))
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(command + " & sleep 30")}
timeout = "4s"
kill_grace = "1s"
''')
    ws.doit(check_rc=0)
    orphan = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="pidfile"))
    wrapper = ws.status("p", "a")["pid"]
    gate.touch()                    # its parent exits: the sleep is reparented
    # out of the agent's session and parentless: only its run id says whose it is
    wait_until(lambda: _parent_of(orphan) not in _session_members(wrapper),
               what="the orphan reparented")
    assert ws.status("p", "a")["state"] == "running"
    wait_until(lambda: ws.state_of("p", "a") == "failed", timeout=30, what="timeout")
    wait_until(lambda: not pid_alive(orphan), what="the session child killed")
    assert ws.status("p", "a")["reason"] == "timeout after 4s"


def test_stall_watchdog_stops_a_silent_agent(ws):
    ws.write_pipeline("p", agent_toml(ws, "quiet", "--sleep", "60", stall_timeout="0.5s",
                                      kill_grace="0.2s"))
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "quiet")
    assert record["state"] == "failed" and record["reason"] == "stalled: no output for 0.5s"
    wait_until(lambda: not group_alive(record["pid"]), what="group gone")


def test_retries_with_backoff_each_attempt_its_own_run_and_log(ws):
    ws.write_pipeline("p", agent_toml(ws, "flaky", "--exit", "3", "--succeed-from-attempt", "3",
                                      retries=2, retry_backoff="0.2s"))
    ws.doit("wait", check_rc=0)
    launches = ws.launches("flaky")
    assert len(launches) == 3
    assert len({l["run_id"] for l in launches}) == 3
    gaps = [b["t"] - a["t"] for a, b in zip(launches, launches[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4          # 0.2 s, doubling
    record = ws.status("p", "flaky")
    assert record["state"] == "done" and record["attempt"] == 3
    logs = ws.state / "logs" / "p"
    assert "exit 3" in (logs / "flaky.1.log").read_text()
    assert "exit 3" in (logs / "flaky.2.log").read_text()
    assert "exit 0" in (logs / "flaky.log").read_text()
    table = ws.doit("status", check_rc=0).stdout
    assert "p:flaky" in table and " 3 " in table


def test_retries_run_out_and_status_shows_the_last_attempt(ws):
    ws.write_pipeline("p", agent_toml(ws, "bad", "--exit", "2", retries=1, retry_backoff=0.05))
    ws.doit("wait", check_rc=1)
    assert len(ws.launches("bad")) == 2
    record = ws.status("p", "bad")
    assert record["state"] == "failed" and record["attempt"] == 2 and record["reason"] == "exit 2"
    ws.doit(check_rc=1)
    ws.wait_idle()
    assert len(ws.launches("bad")) == 2     # not relaunched once attempts are spent


def test_fail_fast_and_retry_on_exit(ws):
    ws.write_pipeline("p", agent_toml(ws, "fast", "--exit", "7", retries=3,
                                      retry_backoff=0.05, fail_fast_exit=[7])
                      + agent_toml(ws, "picky", "--exit", "4", retries=3, retry_backoff=0.05,
                                   retry_on_exit=[3])
                      + agent_toml(ws, "listed", "--exit", "3", "--succeed-from-attempt", "2",
                                   retries=3, retry_backoff=0.05, retry_on_exit=[3]))
    ws.doit("wait", check_rc=1)
    assert len(ws.launches("fast")) == 1 and len(ws.launches("picky")) == 1
    assert len(ws.launches("listed")) == 2 and ws.state_of("p", "listed") == "done"


def test_timed_out_agent_is_retried(ws):
    ws.write_pipeline("p", agent_toml(ws, "t", "--sleep", "60", timeout="0.3s", kill_grace="0.2s",
                                      retries=1, retry_backoff=0.05))
    ws.doit("wait", check_rc=1)
    assert len(ws.launches("t")) == 2
    assert ws.status("p", "t")["reason"] == "timeout after 0.3s"


def test_cancel_stops_the_agent_and_keeps_it_and_its_downstream_stopped(ws):
    ws.write_pipeline("p", agent_toml(ws, "a", "--sleep", "60")
                      + agent_toml(ws, "b", after=["a"]))
    ws.doit(check_rc=0)
    ws.wait_state("p", "a", "running")
    pid = ws.status("p", "a")["pid"]
    proc = ws.doit("cancel", "p:a", check_rc=0)
    assert "cancelled p:a" in proc.stdout
    record = ws.status("p", "a")
    assert record["state"] == "cancelled" and record["reason"] == "cancelled by user"
    assert not group_alive(pid)
    proc = ws.doit(check_rc=1)
    assert "cancelled p:a" in proc.stdout.replace("cancelled ", "cancelled ", 1)
    assert "waiting on a (cancelled)" in proc.stdout
    ws.wait_idle()
    assert len(ws.launches("a")) == 1 and not ws.launches("b")
    ws.doit("forget", "p:a", check_rc=0)
    ws.doit(check_rc=0)
    wait_until(lambda: len(ws.launches("a")) == 2, what="relaunch after forget")


def test_cancel_dequeues_queued_agents(ws):
    ws.write_pipeline("p", "max_parallel = 1\n" + agent_toml(ws, "first", "--sleep", "60")
                      + agent_toml(ws, "second", "--sleep", "60"))
    proc = ws.doit("-v", check_rc=0)
    assert "queued    p:second  (queued: max_parallel of pipeline p (1) reached)" in proc.stdout
    ws.wait_state("p", "first", "running")
    ws.doit("cancel", check_rc=0)
    assert ws.state_of("p", "first") == "cancelled"
    assert ws.state_of("p", "second") == "cancelled"
    ws.wait_idle()
    assert not ws.launches("second")


def start_waiter(ws, *args: str) -> subprocess.Popen:
    """`doit wait` in the background, returned once it printed its first line
    (it is then in its waiting loop, where Ctrl-C is handled)."""
    import select
    waiter = subprocess.Popen([sys.executable, "-m", "doit", "wait", *args], cwd=ws.root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ready, _, _ = select.select([waiter.stdout], [], [], 30)
    assert ready, "doit wait printed nothing"
    return waiter


def test_ctrl_c_in_wait_leaves_agents_running_unless_asked(ws):
    ws.write_pipeline("p", agent_toml(ws, "a", "--sleep", "60"))
    waiter = start_waiter(ws)
    waiter.send_signal(signal.SIGINT)
    out = waiter.communicate(timeout=20)[0].decode()
    assert waiter.returncode == 130, out
    assert "agents keep running" in out
    ws.wait_state("p", "a", "running")
    assert pid_alive(ws.status("p", "a")["pid"])
    waiter = start_waiter(ws, "--cancel-on-interrupt")
    waiter.send_signal(signal.SIGINT)
    out = waiter.communicate(timeout=30)[0].decode()
    assert waiter.returncode == 130 and "cancelled p:a" in out, out
    assert ws.state_of("p", "a") == "cancelled"


def test_max_parallel_caps_running_agents_and_releases_in_order(ws):
    gate = ws.root / "go"
    ws.write_pipeline("p", "max_parallel = 2\n" + "".join(
        agent_toml(ws, f"a{i}", "--gate", str(gate)) for i in range(5)))
    proc = ws.doit(check_rc=0)
    lines = proc.stdout.splitlines()
    assert sum(l.startswith("launched") for l in lines) == 2
    assert lines[-1] == "2 launched, 3 queued"
    wait_until(lambda: len(ws.launches()) == 2, what="two running")
    data = json.loads(ws.doit("status", "--json", check_rc=0).stdout)
    states = {a["agent"]: a["state"] for a in data["agents"]}
    assert states == {"a0": "running", "a1": "running", "a2": "queued", "a3": "queued",
                      "a4": "queued"}
    gate.touch()
    ws.doit("wait", check_rc=0)
    events = [json.loads(l) for l in (ws.state / "events.jsonl").read_text().splitlines()]
    order = [e["task"] for e in events if e["event"] == "launch"]
    assert order == ["p:a0", "p:a1", "p:a2", "p:a3", "p:a4"]     # declaration order


def test_pools_hold_across_pipelines(ws):
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.orchestrate]\npools = { llm = 1 }\n")
    gate = ws.root / "go"
    ws.write_pipeline("one", agent_toml(ws, "x", "--gate", str(gate), pool="llm"))
    ws.write_pipeline("two", agent_toml(ws, "y", "--gate", str(gate), pool="llm"))
    ws.doit("one", check_rc=0)
    ws.wait_state("one", "x", "running")
    proc = ws.doit("two", "-v", check_rc=0)
    assert "queued    two:y  (queued: pool llm (1) reached)" in proc.stdout
    gate.touch()
    ws.doit("wait", check_rc=0)
    x, y = ws.launches("x")[0], ws.launches("y")[0]
    assert y["t"] > x["t"]


def test_pid_reuse_is_not_mistaken_for_the_agent(ws):
    ws.write_pipeline("p", agent_toml(ws, "a"))
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        fields = ws.fingerprint_fields("p:a")
        path = ws.state / "status" / "p" / "a.json"
        # a record that says our agent runs as `stranger`'s pid, started long ago
        path.write_text(json.dumps({"state": "running", "pipeline": "p", "agent": "a",
                                    "task": "p:a", "run_id": "p.a.1.0badc0de", "attempt": 1,
                                    "pid": stranger.pid, "pid_create_time": 1000.0,
                                    "started_epoch": time.time(), **fields}))
        data = json.loads(ws.doit("status", "--json", check_rc=0).stdout)
        state = data["agents"][0]
        # not trusted: the run never claimed, so it never ran here; it is owed again
        assert state["state"] == "pending" and state["pid"] is None
        assert '"launch_abandoned"' in (ws.state / "events.jsonl").read_text()
        assert stranger.poll() is None           # the stranger was left alone
        ws.doit("cancel", check_rc=0)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"state": "done", "nope": 1}'])
def test_corrupt_status_file_gives_a_clear_error(ws, garbage):
    ws.write_pipeline("p", agent_toml(ws, "a"))
    ws.doit("wait", check_rc=0)
    path = ws.state / "status" / "p" / "a.json"
    path.write_text(garbage)
    for command in ((), ("status",), ("wait",)):
        proc = ws.doit(*command)
        if garbage.endswith('"nope": 1}'):
            continue   # unknown keys are ignored: a newer record stays readable
        assert proc.returncode == 3
        assert f"{path}" in proc.stderr and "corrupt state file" in proc.stderr
        # the way out, and what it costs, in every variant
        assert "doit forget p:a clears it, and p:a then runs again" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_workspace_max_parallel_holds_across_pipelines(ws):
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.orchestrate]\nmax_parallel = 1\n")
    gate = ws.root / "go"
    ws.write_pipeline("one", agent_toml(ws, "x", "--gate", str(gate)))
    ws.write_pipeline("two", agent_toml(ws, "y", "--gate", str(gate)))
    proc = ws.doit("--verbose", check_rc=0)
    assert "launched  one:x" in proc.stdout
    assert "queued    two:y  (queued: workspace max_parallel (1) reached)" in proc.stdout
    gate.touch()
    ws.doit("wait", check_rc=0)
    assert ws.launches("y")[0]["t"] > ws.launches("x")[0]["t"]


def test_piped_wait_is_a_complete_record_of_this_wait_and_nothing_else(ws):
    """Every launch, failure, relaunch and end of this wait, once, in order;
    the agents that were already done are in the summary only."""
    import re
    old = "".join(agent_toml(ws, f"old{i}") for i in range(5))
    ws.write_pipeline("p", old)
    ws.doit("wait", check_rc=0)
    ws.write_pipeline("p", old + agent_toml(ws, "flaky", "--exit", "3",
                                            "--succeed-from-attempt", "2",
                                            retries=1, retry_backoff="0.1s"))
    lines = ws.doit("wait", check_rc=0).stdout.splitlines()
    assert lines[0] == "launched  p:flaky  (never run)", lines
    assert re.fullmatch(r"failed    p:flaky  \(exit 3\); runs again at \d\d:\d\d:\d\d UTC",
                        lines[1]), lines
    assert lines[2:] == ["launched  p:flaky  (attempt 2 of 2)", "done      p:flaky",
                         "1 done, 5 up to date"], lines


def test_retry_with_feedback_relaunches_a_done_agent_given_the_file(ws):
    ws.write_pipeline("p", '''
[agents.a]
command = "cat \\"${ORCHESTRATE_FEEDBACK:-/dev/null}\\" > out.txt; echo ran >> out.txt"
outputs = ["out.txt"]
''')
    ws.doit("wait", check_rc=0)
    assert (ws.root / "out.txt").read_text() == "ran\n"
    (ws.root / "sub").mkdir()
    (ws.root / "sub" / "review.md").write_text("use fewer words\n")
    proc = subprocess.run([sys.executable, "-m", "doit", "retry", "p:a", "--feedback",
                           "review.md"], cwd=ws.root / "sub", capture_output=True, text=True,
                          timeout=60)        # FILE is taken from where the user is
    assert proc.returncode == 0, proc.stderr
    assert "retrying  p:a  (was done; with your feedback)" in proc.stdout
    ws.doit("wait", check_rc=0)
    assert (ws.root / "out.txt").read_text() == "use fewer words\nran\n"
    proc = ws.doit("retry", "--feedback", "sub/review.md", check_rc=3)
    assert "--feedback needs the agents it is for" in proc.stderr
    proc = ws.doit("retry", "p:a", "--feedback", "nope.md", check_rc=3)
    assert "cannot read the feedback file" in proc.stderr and "Traceback" not in proc.stderr
