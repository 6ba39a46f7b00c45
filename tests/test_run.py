"""End to end: the installed doit, a workspace made by init, real agent processes."""
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import wait_until


def pipeline_abc(ws, a_args=(), b_args=(), c_args=()) -> str:
    def cmd(name, extra):
        produce = ("--copy", "in/one.txt=out/a.txt") if name == "a" else (
            "--write", f"out/{name}.txt={name}")
        return json.dumps(ws.agent_cmd(*extra, *produce))
    return f'''
description = "a -> (b, c) -> d"
[agents.a]
command = {cmd("a", a_args)}
inputs = ["in/*.txt"]
outputs = ["out/a.txt"]
[agents.b]
command = {cmd("b", b_args)}
after = ["a"]
outputs = ["out/b.txt"]
[agents.c]
command = {cmd("c", c_args)}
after = ["a"]
outputs = ["out/c.txt"]
[agents.d]
command = {cmd("d", ())}
after = ["b", "c"]
outputs = ["out/d.txt"]
'''


def setup_abc(ws, **kw):
    (ws.root / "in").mkdir()
    (ws.root / "in" / "one.txt").write_text("1")
    ws.write_pipeline("p", pipeline_abc(ws, **kw))


def launch_counts(ws):
    return {name: len(ws.launches(name)) for name in "abcd"}


def test_doit_returns_while_the_agent_runs_and_the_pipeline_advances_by_itself(ws):
    setup_abc(ws, a_args=("--gate", str(ws.root / "go")))
    proc = ws.doit(check_rc=0)
    assert proc.stdout == "launched  p:a  (never run)\n1 launched, 3 waiting\n"
    # doit has returned; the detached child launches a, which then runs
    # (gated on a file) with no caller waiting for it.
    ws.wait_state("p", "a", "running")
    assert not (ws.root / "out" / "a.txt").exists()
    (ws.root / "go").touch()
    # Nobody calls doit again: the advancer launches b, c, then d.
    wait_until(lambda: ws.signal("p", "d").exists(), what="d's signal")
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert (ws.root / "out" / "d.txt").read_text() == "d"
    ws.wait_idle()


def test_agent_is_detached_in_its_own_session_with_the_contract_environment(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd("--env-to", str(ws.root / "env.json")))}
env = {{ FAKE_MODEL = "sonnet" }}
[agents.b]
command = {json.dumps(ws.agent_cmd("--env-to", str(ws.root / "env_b.json")))}
after = ["a"]
''')
    ws.doit(check_rc=0)
    wait_until(lambda: ws.state_of("p", "b") == "done", what="b done")
    env = json.loads((ws.root / "env.json").read_text())
    assert env["sid"] == env["pgid"] != os.getsid(0)
    assert env["stdin"] == "/dev/null" and not env["stdin_isatty"]
    assert env["FAKE_MODEL"] == "sonnet"
    assert env["ORCHESTRATE_PIPELINE"] == "p" and env["ORCHESTRATE_AGENT"] == "a"
    assert env["ORCHESTRATE_ATTEMPT"] == "1" and env["ORCHESTRATE_ROOT"] == str(ws.root)
    record = ws.status("p", "a")
    assert env["ORCHESTRATE_RUN_ID"] == record["run_id"]
    assert record["pid"] and record["started_at"].endswith("Z") and record["exit_code"] == 0
    env_b = json.loads((ws.root / "env_b.json").read_text())
    assert env_b["ORCHESTRATE_RUN_ID"] != env["ORCHESTRATE_RUN_ID"]
    assert ws.launches("a")[0]["run_id"] == record["run_id"]


def test_second_doit_launches_nothing_and_says_done(ws):
    setup_abc(ws)
    ws.doit(check_rc=0)
    wait_until(lambda: ws.state_of("p", "d") == "done", what="d done")
    ws.wait_idle()
    proc = ws.doit(check_rc=0)
    assert proc.stdout == "4 up to date\n"                # what changed: nothing
    assert ws.doit("-v", check_rc=0).stdout.count("done ") == 4
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert not ws.advancer_pids()


def test_input_change_reruns_that_agent_and_downstream_only(ws):
    (ws.root / "in").mkdir()
    (ws.root / "in" / "one.txt").write_text("1")
    ws.write_pipeline("p", pipeline_abc(ws) + f'''
[agents.other]
command = {json.dumps(ws.agent_cmd("--write", "out/other.txt=o"))}
inputs = ["in/other.txt"]
''')
    ws.doit("wait", check_rc=0)
    assert "status     : up-to-date" in ws.doit("info", "p:a", check_rc=0).stdout
    (ws.root / "in" / "one.txt").write_text("2")   # content of a's input changed
    info = ws.doit("info", "p:a", check_rc=1).stdout
    assert "status     : run" in info and "stale: input in/one.txt changed" in info
    proc = ws.doit("wait", check_rc=0)
    assert "p:a" in proc.stdout
    # a's output changed, so b and c re-ran; they wrote what they wrote
    # before, so d (early cutoff) and the unrelated agent did not.
    assert launch_counts(ws) == {"a": 2, "b": 2, "c": 2, "d": 1}
    assert len(ws.launches("other")) == 1


def test_identical_upstream_output_leaves_downstream_up_to_date(ws):
    setup_abc(ws)
    ws.doit("wait", check_rc=0)
    before = ws.signal("p", "a").read_text()
    (ws.root / "in" / "two.txt").write_text("new input, same output")
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("a")) == 2           # a re-ran for its new input ...
    assert ws.signal("p", "a").read_text() == before   # ... wrote the same output ...
    assert launch_counts(ws)["b"] == 1 and launch_counts(ws)["d"] == 1   # ... early cutoff
    assert "run_id" not in json.loads(before) and "out/a.txt" in json.loads(before)["outputs"]


def test_failing_agent_stays_failed_blocks_downstream_until_forgotten(ws):
    setup_abc(ws, b_args=("--exit", "3"))
    proc = ws.doit("wait", check_rc=1)
    record = ws.status("p", "b")
    assert record["state"] == "failed" and record["exit_code"] == 3
    assert record["reason"] == "exit 3"
    assert not ws.signal("p", "b").exists()
    assert ws.status("p", "d") is None and not ws.launches("d")
    assert "waiting on b (failed)" in proc.stdout
    proc = ws.doit(check_rc=1)      # a later doit does not relaunch it
    assert "failed    p:b" in proc.stdout
    ws.wait_idle()
    assert len(ws.launches("b")) == 1
    ws.doit("forget", "p:b", check_rc=0)
    ws.doit("wait", check_rc=1)     # relaunched (and fails again, as it must)
    assert len(ws.launches("b")) == 2


def test_missing_declared_output_fails_the_agent(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
outputs = ["out/never.txt"]
''')
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed" and "out/never.txt" in record["reason"]
    assert not ws.signal("p", "a").exists()


def test_deleted_output_makes_its_agent_stale_and_the_next_doit_relaunches_it(ws):
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd("--write", "out/a.txt=a"))}
outputs = ["out/a.txt"]
[agents.g]
command = {json.dumps(ws.agent_cmd("--write", "out/g/one.txt=1", "--write", "out/g/two.txt=2"))}
outputs = ["out/g/*.txt"]
''')
    ws.doit("wait", check_rc=0)
    (ws.root / "out" / "a.txt").unlink()
    info = ws.doit("info", "p:a", check_rc=1).stdout
    assert "status     : run" in info and "stale: output missing: out/a.txt" in info
    # a glob is missing only when it matches nothing
    (ws.root / "out" / "g" / "one.txt").unlink()
    assert "status     : up-to-date" in ws.doit("info", "p:g", check_rc=0).stdout
    (ws.root / "out" / "g" / "two.txt").unlink()
    assert "stale: output missing: out/g/*.txt" in ws.doit("info", "p:g", check_rc=1).stdout
    proc = ws.doit("wait", check_rc=0)
    assert "p:a" in proc.stdout and "p:g" in proc.stdout
    assert len(ws.launches("a")) == 2 and len(ws.launches("g")) == 2
    assert (ws.root / "out" / "a.txt").read_text() == "a"
    assert ws.doit(check_rc=0).stdout == "2 up to date\n"


def test_concurrent_doit_calls_launch_each_agent_once(ws):
    setup_abc(ws, a_args=("--sleep", "0.3"))
    with ThreadPoolExecutor(8) as pool:
        procs = list(pool.map(lambda _: ws.doit(), range(8)))
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    assert sum("launched  p:a" in p.stdout for p in procs) == 1
    wait_until(lambda: ws.state_of("p", "d") == "done", what="d done")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: ws.doit(), range(8)))
    ws.wait_idle()
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_concurrent_waits_race_and_each_agent_runs_once(ws):
    setup_abc(ws)
    with ThreadPoolExecutor(8) as pool:
        procs = list(pool.map(lambda i: ws.doit("wait" if i % 2 else "run"), range(8)))
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    wait_until(lambda: ws.state_of("p", "d") == "done", what="d done")
    ws.wait_idle()
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_sigkill_of_the_orchestrator_mid_run_loses_nothing(ws):
    setup_abc(ws, a_args=("--gate", str(ws.root / "go")))
    ws.doit(check_rc=0)
    advancers = wait_until(ws.advancer_pids, what="an advancer")
    for pid in advancers:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not ws.advancer_pids(), what="advancer dead")
    (ws.root / "go").touch()      # a finishes while no orchestrator is alive
    wait_until(lambda: (ws.state / "runs").exists() and any(
        p.suffix == ".exit" for p in (ws.state / "runs").iterdir()), what="a's exit record")
    assert ws.state_of("p", "a") == "running"     # nobody has settled it yet
    ws.doit("wait", check_rc=0)                   # picks a's result up, goes on
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_sigkill_during_the_launch_pass_is_recovered(ws):
    setup_abc(ws)
    for _ in range(5):     # kill the caller's doit at once, several times
        proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=ws.root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for pid in ws.advancer_pids():
        os.kill(pid, signal.SIGKILL)
    ws.doit("wait", check_rc=0)
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_deleting_doits_database_reruns_nothing(ws):
    setup_abc(ws)
    ws.doit("wait", check_rc=0)
    ws.wait_idle()
    (ws.state / "doit.sqlite").unlink()
    proc = ws.doit("wait", check_rc=0)
    assert proc.stdout == "4 up to date\n"
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_invalid_pipeline_exits_3_launches_nothing_and_keeps_state(ws):
    setup_abc(ws)
    ws.doit("wait", check_rc=0)
    ws.wait_idle()
    snapshot = {p: p.read_bytes() for p in (ws.state / "status").rglob("*.json")}
    (ws.root / "in" / "one.txt").write_text("changed")   # would re-run a if valid
    ws.write_pipeline("broken", '[agents.x]\ncommand = "true"\nafter = ["ghost"]\n')
    # launching refuses (exit 3); looking answers for the valid pipelines, with a warning
    for command, rc in (((), 3), (("wait",), 3), (("status",), 0), (("list",), 0)):
        proc = ws.doit(*command, check_rc=rc)
        assert "Traceback" not in proc.stderr
        assert "pipelines/broken.toml: agent 'x': key 'after': unknown agent 'ghost'" in proc.stderr
    assert launch_counts(ws)["a"] == 1
    assert snapshot == {p: p.read_bytes() for p in (ws.state / "status").rglob("*.json")}


def test_cyclic_and_malformed_pipelines_exit_3(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand="x"\nafter=["b"]\n[agents.b]\ncommand="x"\nafter=["a"]\n')
    proc = ws.doit(check_rc=3)
    assert "dependency cycle" in proc.stderr and "Traceback" not in proc.stderr
    ws.write_pipeline("p", '[agents.a\ncommand="x"\n')
    proc = ws.doit(check_rc=3)
    assert "pipelines/p.toml: invalid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_upstream_output_cannot_run_code(ws):
    payload = "$(touch pwned1)`touch pwned2`; touch pwned3"
    ws.write_pipeline("p", f'''
[agents.up]
command = {json.dumps(ws.agent_cmd("--write", "out/up.txt=" + payload))}
outputs = ["out/up.txt"]
[agents.down]
command = {json.dumps(ws.agent_cmd("--copy-upstream", "up=out/down.txt"))}
after = ["up"]
outputs = ["out/down.txt"]
''')
    ws.doit("wait", check_rc=0)
    assert (ws.root / "out" / "down.txt").read_text() == payload
    assert not list(ws.root.rglob("pwned*"))
    assert not list(ws.root.parent.rglob("pwned*"))


def test_after_any_launches_on_the_first_upstream_and_records_it(ws):
    ws.write_pipeline("p", f'''
[agents.fast]
command = {json.dumps(ws.agent_cmd("--write", "out/fast.txt=f"))}
outputs = ["out/fast.txt"]
[agents.slow]
command = {json.dumps(ws.agent_cmd("--gate", str(ws.root / "go"), "--write", "out/slow.txt=s"))}
outputs = ["out/slow.txt"]
[agents.judge]
command = {json.dumps(ws.agent_cmd("--env-to", str(ws.root / "judge.json")))}
after_any = ["fast", "slow"]
''')
    ws.doit(check_rc=0)
    wait_until(lambda: ws.state_of("p", "judge") == "done", what="judge done")
    assert ws.state_of("p", "slow") == "running"
    upstream = json.loads((ws.root / "judge.json").read_text())["ORCHESTRATE_UPSTREAM"]
    assert ws.status("p", "judge")["upstream_used"] == "fast"
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("judge")) == 1     # slow finishing does not re-run it
    assert upstream.endswith(".upstream.json")


def test_wait_for_gates_until_doit_signal(ws):
    ws.write_pipeline("p", f'''
[agents.gated]
command = {json.dumps(ws.agent_cmd())}
wait_for = ["approved"]
''')
    proc = ws.doit(check_rc=0)
    assert "waiting on signal approved" in proc.stdout
    assert ws.doit("signal", "approved", check_rc=0).stdout.strip() == "signal approved created"
    wait_until(lambda: ws.state_of("p", "gated") == "done", what="gated done")
    assert (ws.state / "signals" / "approved.signal").exists()
    # the status record is saved just before the finish event is appended
    events = wait_until(lambda: (e := [json.loads(l)["event"] for l in (
        ws.state / "events.jsonl").read_text().splitlines()]) and "finish" in e and e,
        what="the finish event")
    assert "signal" in events and "launch" in events
    assert ws.doit("signal", "bad name!", check_rc=3).stderr.startswith("ERROR:")


def test_wait_exit_codes_and_timeout(ws):
    ws.write_pipeline("p", f'''
[agents.slow]
command = {json.dumps(ws.agent_cmd("--gate", str(ws.root / "go")))}
''')
    proc = ws.doit("wait", "--timeout", "0.5", check_rc=124)
    assert "timeout after 0.5s" in proc.stdout
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)


def test_status_json_logs_and_list(ws):
    setup_abc(ws, c_args=("--exit", "2"))
    ws.doit("wait", check_rc=1)
    data = json.loads(ws.doit("status", "--json", check_rc=0).stdout)
    by_task = {a["task"]: a for a in data["agents"]}
    assert by_task["p:a"]["state"] == "done" and by_task["p:c"]["state"] == "failed"
    assert by_task["p:d"]["state"] == "waiting"
    for key in ("state", "pipeline", "agent", "attempt", "pid", "started_at", "ended_at",
                "exit_code", "reason", "log", "task"):
        assert key in by_task["p:a"] and key in by_task["p:d"]
    table = ws.doit("status", check_rc=0).stdout
    assert "p:c" in table and "failed" in table and "exit 2" in table
    assert "finished a" in ws.doit("logs", "p:a", check_rc=0).stdout
    assert "finished c with exit 2" in ws.doit("logs", "p:c", "-f", check_rc=0).stdout
    listed = ws.doit("list", check_rc=0).stdout
    assert listed.split()[0] == "p"
    all_tasks = ws.doit("list", "--all", check_rc=0).stdout
    assert all(f"p:{n}" in all_tasks for n in "abcd")
    info = ws.doit("info", "p:d").stdout
    assert "waiting on c (failed)" in info and "file_dep" in info


def test_selection_runs_the_agent_and_its_upstream_only(ws):
    setup_abc(ws)
    ws.doit("wait", "p:b", check_rc=0)
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 0, "d": 0}
    proc = ws.doit("nosuch", check_rc=3)
    assert "no pipeline or agent matches 'nosuch'" in proc.stderr


def test_rerun_keeps_the_earlier_log(ws):
    setup_abc(ws)
    ws.doit("wait", check_rc=0)
    (ws.root / "in" / "one.txt").write_text("2")
    ws.doit("wait", "p:a", check_rc=0)
    logs = ws.state / "logs" / "p"
    assert (logs / "a.log").exists() and (logs / "a.1.log").exists()
    assert ws.status("p", "a")["log"] == ".orchestrate/logs/p/a.log"


def test_clean_removes_signal_and_outputs(ws):
    setup_abc(ws)
    ws.doit("wait", check_rc=0)
    ws.doit("clean", "p:d", check_rc=0)
    assert not ws.signal("p", "d").exists() and not (ws.root / "out" / "d.txt").exists()
    assert ws.signal("p", "c").exists()
    ws.doit("wait", check_rc=0)
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 2}


def test_wait_on_a_terminal_shows_a_live_table(ws):
    import pty
    setup_abc(ws)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "doit", "wait"], cwd=ws.root,
                            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:        # EIO: the terminal's last writer has gone
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=30) == 0
    os.close(primary)
    screen = b"".join(chunks).decode(errors="replace")
    assert "agent" in screen and "state" in screen and "elapsed" in screen
    assert "4 done" in screen


def _record_launching(ws, run_id: str) -> None:
    """What a pass leaves behind when killed between recording a launch and the spawn."""
    fields = ws.fingerprint_fields("p:a")
    path = ws.state / "status" / "p" / "a.json"
    path.write_text(json.dumps({
        "state": "launching", "pipeline": "p", "agent": "a", "task": "p:a", "run_id": run_id,
        "launches": 1, "attempt": 1, "reason": "never run", **fields}))


def test_crash_before_the_spawn_relaunches_once(ws):
    setup_abc(ws)
    (ws.state / "status").mkdir(parents=True, exist_ok=True)
    _record_launching(ws, "p.a.1.deadbeef")
    ws.doit("wait", check_rc=0)
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_crash_after_the_spawn_adopts_the_running_agent(ws):
    setup_abc(ws, a_args=("--gate", str(ws.root / "go")))
    run_id = "p.a.1.cafe0001"
    _record_launching(ws, run_id)
    exit_path = ws.state / "runs" / f"{run_id}.exit"
    exit_path.parent.mkdir(parents=True, exist_ok=True)
    # the agent as the launcher would have started it: its wrapper, its session
    from orchestrate.runtime.workspace import load_workspace
    from orchestrate.runtime.wrapper import wrapper_argv
    agent = load_workspace(ws.root).pipeline("p").agent("a")
    orphan = subprocess.Popen(wrapper_argv(agent.task, agent.command, exit_path), cwd=ws.root,
                              start_new_session=True, stdout=subprocess.DEVNULL,
                              env={**os.environ, "ORCHESTRATE_RUN_ID": run_id,
                                   "ORCHESTRATE_AGENT": "a", "ORCHESTRATE_ROOT": str(ws.root)})
    wait_until(lambda: ws.launches("a"), what="the orphan agent to start")
    proc = ws.doit("-v", check_rc=0)
    assert "running   p:a" in proc.stdout
    assert ws.status("p", "a")["pid"] == orphan.pid
    (ws.root / "go").touch()
    orphan.wait(timeout=20)
    ws.doit("wait", check_rc=0)
    assert launch_counts(ws) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_sigkill_of_orchestrator_processes_at_random_moments(ws):
    import random
    rng = random.Random(20261125)
    setup_abc(ws, a_args=("--sleep", "0.1"), b_args=("--sleep", "0.1"))
    for trial in range(6):
        (ws.root / "in" / "one.txt").write_text(f"trial {trial}")   # a (and so all) stale
        caller = subprocess.Popen([sys.executable, "-m", "doit"], cwd=ws.root,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, 0.6))     # a random moment, not a synchronisation
        for pid in ws.advancer_pids():      # the orchestrator, never the agents
            os.kill(pid, signal.SIGKILL)
        if caller.poll() is None:
            caller.send_signal(signal.SIGKILL)
        caller.wait()
        ws.doit("wait", check_rc=0)
        counts = launch_counts(ws)
        assert counts["a"] == trial + 1, counts      # never twice for one change
        assert all(n <= trial + 1 for n in counts.values()), counts
