"""Commands that behave like their names (issue 10, point 5) and work from a
subdirectory (point 6): real doit, real processes."""
import subprocess
import sys

from conftest import wait_until

GATED = '''
[agents.gated]
command = "echo gated-output"
wait_for = ["approved"]
'''


def test_list_is_in_declaration_order(ws):
    ws.write_pipeline("p", '[agents.zeta]\ncommand = "true"\n[agents.alpha]\ncommand = "true"\n'
                      '[agents.mid]\ncommand = "true"\n')
    names = [line.split()[0] for line in ws.doit("list", "--all", check_rc=0).stdout.splitlines()]
    assert names.index("p:zeta") < names.index("p:alpha") < names.index("p:mid")


def test_signal_clear_closes_the_gate_again(ws):
    ws.write_pipeline("p", GATED)
    assert ws.doit("signal", "approved", check_rc=0).stdout.strip() == "signal approved created"
    assert ws.doit("signal", "approved", "--clear", check_rc=0).stdout.strip() == \
        "signal approved cleared"
    assert not (ws.state / "signals" / "approved.signal").exists()
    assert "waiting on signal approved" in ws.doit("-v", check_rc=0).stdout
    assert ws.doit("signal", "--clear", "approved", check_rc=0).stdout.strip() == \
        "signal approved not present"
    ws.doit("cancel", "p:gated", check_rc=0)
    ws.wait_idle()


def test_status_names_the_advancer_waiting_on_a_signal_and_cancel_lets_it_go(ws):
    ws.write_pipeline("p", GATED)
    ws.doit(check_rc=0)
    pids = wait_until(ws.advancer_pids, what="the advancer waiting on the signal")
    table = ws.doit("status", check_rc=0).stdout
    assert f"waiting for signal approved, advancer pid {pids[0]}" in table
    cancel = ws.doit("cancel", "p:gated", check_rc=0)
    assert cancel.stdout == "cancelled p:gated (waiting on signal approved)\n"
    assert ws.state_of("p", "gated") == "cancelled"
    assert ws.status("p", "gated")["started_at"] is None      # it never started
    ws.wait_idle()                          # the advancer has nothing left to wait for


def test_logs_follow_waits_for_an_agent_that_has_not_started(ws):
    ws.write_pipeline("p", GATED)
    ws.doit(check_rc=0)
    follower = subprocess.Popen([sys.executable, "-m", "doit", "logs", "p:gated", "-f"],
                                cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        first = follower.stdout.readline()
        assert "has not started; waiting for it" in first
        ws.doit("signal", "approved", check_rc=0)
        out, err = follower.communicate(timeout=30)
        assert follower.returncode == 0, err
        assert "gated-output" in out
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    ws.wait_idle()


def test_info_shows_command_executable_outputs_and_gates(ws):
    ws.write_pipeline("p", '''
[agents.a]
command = "true"
[agents.b]
command = "sh -c 'echo hi > out.txt'"
outputs = ["out.txt"]
after = ["a"]
wait_for = ["approved"]
''')
    out = ws.doit("info", "p:b").stdout
    assert "command    : sh -c 'echo hi > out.txt'" in out
    assert "executable : /" in out and "/sh" in out
    assert "outputs    : out.txt" in out
    assert "gates      : after a; wait_for signal approved" in out


def test_doit_commands_that_mean_nothing_for_agents_say_why_in_one_line(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\n')
    for command in ("ignore", "reset-dep", "strace"):
        proc = ws.doit(command, "p:a", check_rc=3)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR: ") and "agents" in lines[0], proc
    ws.doit(check_rc=0)
    ws.wait_idle()
    assert ws.state_of("p", "a") == "done"


def test_help_names_orchestrates_commands_and_exit_codes(ws):
    text = ws.doit("help", check_rc=0).stdout
    ours = text.split("orchestrate's commands")[1].split("doit's own commands")[0]
    for command in ("wait", "status", "logs", "signal", "cancel", "retry", "run"):
        assert f" {command} " in ours
    assert "ignore" not in ours
    wait = ws.doit("help", "wait", check_rc=0).stdout
    assert "124" in wait and "130" in wait and "Exit:" in wait


def test_commands_work_from_a_subdirectory(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "echo from-a"\n')
    ws.doit("wait", check_rc=0)
    deep = ws.root / "src" / "deeper"
    deep.mkdir(parents=True)

    def doit(*args):
        return subprocess.run([sys.executable, "-m", "doit", *args], cwd=deep,
                              capture_output=True, text=True, timeout=60)
    assert "p:a" in doit("status").stdout
    assert "from-a" in doit("logs", "p:a").stdout
    assert doit("wait").returncode == 0
    for args in (("-k",), ("list", "-k"), ("forget", "-k", "p:a")):
        proc = doit(*args)
        assert proc.returncode == 3, (args, proc)
        assert f"run doit from the workspace root: cd {ws.root}" in proc.stderr
    assert not list(ws.root.glob(".doit.db*")) and not list(deep.glob(".doit.db*"))
    assert ws.state_of("p", "a") == "done"


def test_logs_says_when_there_is_nothing_to_print(ws):
    ws.write_pipeline("p", '[agents.quiet]\ncommand = "exec sleep 30"\n' + GATED)
    ws.doit(check_rc=0)
    ws.wait_state("p", "quiet", "running")
    assert ws.doit("logs", "p:quiet", check_rc=0).stdout == \
        "p:quiet has written nothing to its log yet (it is running)\n"
    assert ws.doit("logs", "p:gated", check_rc=0).stdout == "p:gated has no log yet\n"
    ws.doit("cancel", check_rc=0)
    assert ws.doit("logs", "p:quiet", check_rc=0).stdout == \
        "p:quiet has written nothing to its log\n"
    ws.doit("cancel", "p:gated", check_rc=0)
    ws.wait_idle()
