"""Safety: nothing outside the workspace is touched, a status record is not
proof of identity, clean and cancel never harm a running pipeline."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_until


def agent_toml(ws, name: str, *args: str, **keys) -> str:
    lines = [f"[agents.{name}]", f"command = {json.dumps(ws.agent_cmd(*args))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def outside(tmp_path):
    """A file outside the workspace that nothing may delete."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    victim = folder / "x"
    victim.write_text("precious")
    return victim


@pytest.mark.parametrize("output", ["../elsewhere/x", "{abs}", "{absdir}/*", "out/x"])
def test_outputs_outside_the_workspace_are_refused_and_never_cleaned(ws, outside, output):
    (ws.root / "out").symlink_to(outside.parent)         # out -> /elsewhere
    output = output.format(abs=outside, absdir=outside.parent)
    ws.write_pipeline("p", agent_toml(ws, "a", outputs=[output]))
    for command in ((), ("wait",)):
        proc = ws.doit(*command, check_rc=3)
        assert "pipelines/p.toml: agent 'a': key 'outputs'" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    ws.doit("clean", "p:a")
    ws.doit("clean", "--clean-all")
    assert outside.read_text() == "precious"
    assert ws.launches() == []


def test_cwd_through_a_symlink_outside_is_refused(ws, outside):
    (ws.root / "sub").symlink_to(outside.parent)
    ws.write_pipeline("p", agent_toml(ws, "a", cwd="sub"))
    proc = ws.doit(check_rc=3)
    assert "agent 'a': key 'cwd': 'sub' resolves to" in proc.stderr


def test_remove_inside_rechecks_at_removal_time(tmp_path, outside):
    from orchestrate.runtime.state import remove_inside
    root = tmp_path / "ws"
    (root / "out").mkdir(parents=True)
    (root / "out" / "x").write_text("ours")
    assert remove_inside(root, root / "out" / "x")
    (root / "out").rmdir()
    (root / "out").symlink_to(outside.parent)             # swapped after validation
    assert not remove_inside(root, root / "out" / "x")
    (root / "link").symlink_to(outside)
    assert not remove_inside(root, root / "link")
    assert outside.read_text() == "precious"


def test_clean_refuses_a_running_agent(ws):
    gate = ws.root / "go"
    (ws.root / "in.txt").write_text("1")
    ws.write_pipeline("p", agent_toml(ws, "a", "--gate", str(gate), "--write", "out/a.txt=full",
                                      inputs=["in.txt"], outputs=["out/a.txt"]))
    gate.touch()
    ws.doit("wait", check_rc=0)
    gate.unlink()
    (ws.root / "in.txt").write_text("2")                 # stale: runs again, held by the gate
    ws.doit(check_rc=0)
    ws.wait_state("p", "a", "running")
    proc = ws.doit("clean", "p:a", check_rc=1)          # a refusal: one line, exit 1
    assert proc.stderr == "p:a is running; not cleaned (doit cancel p:a first)\n"
    assert proc.stdout == ""
    assert (ws.root / "out" / "a.txt").read_text() == "full"
    assert ws.state_of("p", "a") == "running"
    ws.doit(check_rc=0)                                  # no second copy is launched
    gate.touch()
    ws.wait_state("p", "a", "done")
    ws.wait_idle()
    assert len(ws.launches("a")) == 2
    ws.doit("clean", "p:a", check_rc=0)                  # once it is done, clean works
    assert not (ws.root / "out" / "a.txt").exists() and ws.state_of("p", "a") is None
    assert not list((ws.state / "logs" / "p").glob("a.*.log"))


def forge_running(ws, task: str, pid: int, **extra) -> None:
    pipeline, agent = task.split(":")
    path = ws.state / "status" / pipeline / f"{agent}.json"
    path.write_text(json.dumps({
        "state": "running", "pipeline": pipeline, "agent": agent, "task": task,
        "run_id": f"{pipeline}.{agent}.1.0badc0de", "attempt": 1, "pid": pid,
        "started_epoch": time.time(), **ws.fingerprint_fields(task), **extra}))


def start_time(pid: int) -> float:
    import psutil
    return psutil.Process(pid).create_time()


@pytest.mark.parametrize("proof", ["none", "start time only"])
def test_a_record_is_not_proof_of_identity(ws, proof):
    ws.write_pipeline("p", agent_toml(ws, "a"))
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        extra = {} if proof == "none" else {"pid_create_time": start_time(stranger.pid)}
        forge_running(ws, "p:a", stranger.pid, **extra)
        proc = ws.doit("cancel", check_rc=0)
        assert stranger.poll() is None, proc.stdout       # never signalled
        record = ws.status("p", "a")            # settled, not trusted: it never claimed a run
        assert record["state"] not in ("running", "launching"), record
        assert record["pid"] != stranger.pid or record["state"] != "running"
    finally:
        stranger.kill()
        stranger.wait()


def test_bare_cancel_touches_only_running_queued_and_retry_waiting_agents(ws):
    gate = ws.root / "go"
    ws.write_pipeline("p", "max_parallel = 1\n"
                      + agent_toml(ws, "run", "--gate", str(gate))
                      + agent_toml(ws, "queued")
                      + agent_toml(ws, "gated", wait_for=["approved"])
                      + agent_toml(ws, "retrying", "--exit", "3", retries=1,
                                   retry_backoff="1h"))
    ws.write_pipeline("other", agent_toml(ws, "pending"))
    ws.doit("p", check_rc=0)
    ws.wait_state("p", "run", "running")
    proc = ws.doit("cancel", check_rc=0)
    assert "cancelled p:run" in proc.stdout and "cancelled p:queued (queued)" in proc.stdout
    states = {n: ws.state_of("p", n) for n in ("run", "queued", "gated", "retrying")}
    assert states["run"] == "cancelled" and states["queued"] == "cancelled"
    assert states["gated"] is None and ws.state_of("other", "pending") is None
    ws.doit("other", check_rc=0)                         # the pending agent was left ready
    ws.wait_state("other", "pending", "done")


def test_bare_cancel_dequeues_an_agent_waiting_for_its_retry(ws):
    ws.write_pipeline("p", agent_toml(ws, "retrying", "--exit", "3", retries=1,
                                      retry_backoff="1h"))
    ws.doit(check_rc=0)
    wait_until(lambda: (ws.status("p", "retrying") or {}).get("retry_at"), what="retry wait")
    ws.doit("cancel", check_rc=0)
    assert ws.state_of("p", "retrying") == "cancelled"
    ws.wait_idle()
    assert len(ws.launches("retrying")) == 1


def test_cancel_returns_only_once_no_process_is_left(ws):
    pidfile = ws.root / "child.pid"
    ws.write_pipeline("p", agent_toml(ws, "a", "--ignore-term", "--spawn-session-child",
                                      str(pidfile), "--sleep", "60", kill_grace="0.3s"))
    ws.doit(check_rc=0)
    wait_until(pidfile.exists, what="the child")
    ws.wait_state("p", "a", "running")
    ws.doit("cancel", "p:a", check_rc=0)
    assert ws.agent_pids() == []
    assert ws.state_of("p", "a") == "cancelled"


def test_earlier_logs_are_never_overwritten(ws):
    (ws.root / "in.txt").write_text("0")
    ws.write_pipeline("p", agent_toml(ws, "a", inputs=["in.txt"]))
    for run in range(1, 4):
        (ws.root / "in.txt").write_text(str(run))       # each run is a fresh attempt 1
        ws.doit("wait", check_rc=0)
    run_ids = [e["run_id"] for e in ws.launches("a")]
    logs = ws.state / "logs" / "p"
    assert [p.name for p in sorted(logs.glob("a.*.log"))] == ["a.1.log", "a.2.log"]
    for name, run_id in zip(["a.1.log", "a.2.log", "a.log"], run_ids):
        assert (logs / name).read_text().startswith(f"started a run {run_id}\n"), name
    ws.doit("forget", "p:a", check_rc=0)                 # the record goes, the logs stay
    (ws.root / "in.txt").write_text("4")
    ws.doit("wait", check_rc=0)
    assert [p.name for p in sorted(logs.glob("a.*.log"))] == ["a.1.log", "a.2.log", "a.3.log"]


def test_write_atomic_writes_everything_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from orchestrate.runtime import state
    real_write = os.write
    monkeypatch.setattr(state.os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    target = tmp_path / "record.json"
    state.write_atomic(target, "0123456789" * 10)
    assert target.read_text() == "0123456789" * 10
    monkeypatch.undo()
    (tmp_path / "folder").mkdir()                         # replacing a folder fails
    with pytest.raises(OSError):
        state.write_atomic(tmp_path / "folder", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "record.json"]


def lock_is_free(ws) -> bool:
    import fcntl
    fd = os.open(ws.state / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def stop_between_passes(ws, pid: int) -> None:
    """SIGSTOP the advancer while it sleeps (not while it holds the lock)."""
    import signal
    while True:
        os.kill(pid, signal.SIGSTOP)
        if lock_is_free(ws):
            return
        os.kill(pid, signal.SIGCONT)


def test_lost_inotify_events_make_the_advancer_read_everything_again(ws):
    import signal
    gate = ws.root / "go"
    ws.write_pipeline("p", agent_toml(ws, "a", "--gate", str(gate))
                      + agent_toml(ws, "b", after=["a"]))
    ws.doit(check_rc=0)
    ws.wait_state("p", "a", "running")
    [advancer] = wait_until(ws.advancer_pids, what="the advancer")
    stop_between_passes(ws, advancer)
    try:
        queue = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        for i in range(queue // 3 + 1000):     # create, close, delete: more than the queue holds
            flood = ws.state / "runs" / f"flood-{i}.tmp"
            flood.write_bytes(b"")
            flood.unlink()
        gate.touch()                           # a ends; the advancer never hears of it ...
        wait_until(lambda: list((ws.state / "runs").glob("*.exit")), what="a's exit record")
        ws.doit("status", check_rc=0)          # ... and another process settles it
        assert ws.state_of("p", "a") == "done"
    finally:
        os.kill(advancer, signal.SIGCONT)
    ws.wait_state("p", "b", "done")            # the advancer re-read a's record: b runs
    assert ws.state_of("p", "a") == "done"
    ws.wait_idle()


def test_the_advancer_works_without_inotify(ws, tmp_path):
    shadow = tmp_path / "no-inotify"
    shadow.mkdir()
    (shadow / "inotify_simple.py").write_text("raise ImportError('not on this system')\n")
    env = {"PYTHONPATH": f"{shadow}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    ws.write_pipeline("p", agent_toml(ws, "a") + agent_toml(ws, "b", after=["a"])
                      + agent_toml(ws, "c", after=["b"]))
    ws.doit(check_rc=0, env=env)
    ws.wait_state("p", "c", "done")            # nobody calls doit again
    ws.wait_idle()
    proc = ws.doit("wait", check_rc=0, env=env)
    assert proc.stdout == "3 up to date\n"


@pytest.mark.parametrize("broken", ["another file", "its own file"])
def test_an_invalid_pipeline_file_blinds_nothing_but_launching(ws, broken):
    slow = agent_toml(ws, "slow", "--sleep", "60", timeout="1s", kill_grace="0.2s")
    ws.write_pipeline("p", slow)
    ws.write_pipeline("q", agent_toml(ws, "quick"))
    ws.doit("p", check_rc=0)
    ws.wait_state("p", "slow", "running")
    if broken == "its own file":
        ws.write_pipeline("p", slow + "[agents.oops]\ncomand = 'typo'\n")
        bad = "pipelines/p.toml: agent 'oops'"
    else:
        ws.write_pipeline("bad", "[agents.x]\ntimeout = 'soon'\ncommand = 'true'\n")
        bad = "pipelines/bad.toml: agent 'x': key 'timeout'"
    # nobody runs a command: the advancer still enforces the running agent's limit
    ws.wait_state("p", "slow", "failed")
    assert ws.status("p", "slow")["reason"] == "timeout after 1s"
    proc = ws.doit(check_rc=3)                             # launching stays blocked
    assert bad in proc.stderr and "Traceback" not in proc.stderr
    assert ws.state_of("q", "quick") is None
    status = ws.doit("status", check_rc=0)
    assert "warning: invalid pipeline" in status.stderr and bad in status.stderr
    assert "q:quick" in status.stdout
    if broken == "another file":
        assert "p:slow" in status.stdout
        logs = ws.doit("logs", "p:slow", check_rc=0)
        assert "started slow" in logs.stdout
    assert ws.doit("cancel", check_rc=0).returncode == 0
    ws.wait_idle()


def doit_read_only(ws, *args: str) -> subprocess.CompletedProcess:
    """`doit ARGS` with `.orchestrate/` mounted read-only (a private mount
    namespace: root ignores file modes, not a read-only mount)."""
    state = str(ws.state)
    script = (f"mount --bind {state} {state} && mount -o remount,ro,bind {state} {state} "
              f'&& exec "$@"')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", sys.executable, "-m",
                           "doit", *args], cwd=ws.root, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if "mount" in proc.stderr and "Traceback" not in proc.stderr and proc.returncode in (1, 32):
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount read-only here: {proc.stderr}")
        pytest.skip("needs root and mount namespaces (unshare -m)")
    return proc


def test_a_read_only_state_folder_gives_one_line_errors_and_status_still_works(ws):
    ws.write_pipeline("p", agent_toml(ws, "a"))
    ws.doit("wait", check_rc=0)
    status = doit_read_only(ws, "status")
    assert status.returncode == 0 and "p:a" in status.stdout and "done" in status.stdout
    assert "read-only" in status.stderr and "Traceback" not in status.stderr
    for command in ((), ("wait",), ("cancel",), ("forget", "p:a"), ("signal", "go"),
                    ("clean", "p:a")):
        proc = doit_read_only(ws, *command)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        assert "cannot write the state folder" in proc.stderr, (command, proc.stderr)
        expected = 1 if command[:1] == ("clean",) else 3   # clean refuses, one line
        assert proc.returncode == expected, (command, proc.returncode)
    assert ws.state_of("p", "a") == "done"


@pytest.mark.parametrize("garbage", ["{torn", "[1, 2]"])
def test_forget_clears_a_corrupt_status_file_as_the_error_offers(ws, garbage):
    ws.write_pipeline("p", agent_toml(ws, "a"))
    ws.doit("wait", check_rc=0)
    path = ws.state / "status" / "p" / "a.json"
    path.write_text(garbage)
    proc = ws.doit(check_rc=3)
    assert "corrupt state file" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "doit forget p:a clears it" in proc.stderr
    ws.doit("forget", "p:a", check_rc=0)
    assert not path.exists()
    ws.doit("wait", check_rc=0)                           # runs again, as the error said
    assert len(ws.launches("a")) == 2


def test_a_chain_of_1500_agents_needs_no_recursion(ws):
    lines = ['[agents.a0]\ncommand = "true"\n']
    lines += [f'[agents.a{i}]\ncommand = "true"\nafter = ["a{i - 1}"]\n' for i in range(1, 1500)]
    ws.write_pipeline("p", "".join(lines))
    proc = ws.doit("info", "p:a1499", timeout=120)
    assert "Traceback" not in proc.stderr and "RecursionError" not in proc.stderr, proc.stderr
    assert "waiting on a1498" in proc.stdout
    cyclic = "".join(lines).replace('[agents.a0]\ncommand = "true"\n',
                                    '[agents.a0]\ncommand = "true"\nafter = ["a1499"]\n')
    ws.write_pipeline("p", cyclic)
    proc = ws.doit(check_rc=3, timeout=120)
    assert "dependency cycle" in proc.stderr and "Traceback" not in proc.stderr


def test_ctrl_c_early_in_wait_is_one_line_and_exit_130(ws):
    import signal
    ws.write_pipeline("p", "".join(agent_toml(ws, f"a{i}", "--sleep", "30") for i in range(40)))
    lock = str(ws.state / "lock")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "doit", "wait"], cwd=ws.root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)

        def holds_lock() -> bool:     # our code runs: it has opened the lock (held
            try:                      # only during a pass) or made wait's inotify watch
                return any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") in (lock, "anon_inode:inotify")
                           for fd in os.listdir(f"/proc/{proc.pid}/fd"))
            except OSError:
                return proc.poll() is not None
        wait_until(holds_lock, what="doit wait to reach its first pass")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in err, err
        assert "interrupted" in err or "stopped waiting" in out, (out, err)
    ws.doit("cancel", check_rc=0)


def test_dead_ends_say_the_way_out_and_retry_takes_it(ws):
    flag = ws.root / "fixed"
    command = f"test -e {flag} || exit 4"
    ws.write_pipeline("p", f"[agents.a]\ncommand = {json.dumps(command)}\n"
                      + agent_toml(ws, "b", after=["a"]))
    proc = ws.doit("wait", check_rc=1)
    assert "failed    p:a  (exit 4)  -> doit retry p:a" in proc.stdout
    assert "waiting   p:b  (waiting on a (failed))  -> doit retry p:a" in proc.stdout
    proc = ws.doit(check_rc=1)                     # doit alone moves nothing on
    assert proc.stdout.splitlines()[-1] == "1 waiting, 1 failed"
    flag.touch()                                   # the cause is fixed
    proc = ws.doit("retry", check_rc=0)
    assert "retrying  p:a  (was failed: exit 4)" in proc.stdout
    assert "launched  p:a  (retry requested (doit retry))" in proc.stdout
    ws.wait_state("p", "b", "done")
    assert ws.status("p", "a")["state"] == "done" and ws.status("p", "a")["attempt"] == 1
    assert ws.doit("retry", check_rc=0).stdout == "2 up to date\n"


def test_a_wrapper_killed_with_sigkill_after_it_started_is_a_failure(ws):
    import signal
    gate = ws.root / "go"
    ws.write_pipeline("p", agent_toml(ws, "a", "--gate", str(gate)))
    ws.doit(check_rc=0)
    wait_until(lambda: ws.launches("a"), what="the agent to start")
    wrapper = ws.status("p", "a")["pid"]
    os.kill(wrapper, signal.SIGKILL)                  # the agent ran: its run was claimed
    ws.wait_state("p", "a", "failed")
    assert "without recording an exit status" in ws.status("p", "a")["reason"]
    ws.doit(check_rc=1)
    assert len(ws.launches("a")) == 1                 # a failure, not a relaunch


def test_a_reader_that_leaves_early_gets_no_traceback(ws):
    ws.write_pipeline("p", "".join(agent_toml(ws, f"a{i}") for i in range(30)))
    reader = subprocess.Popen(f"{sys.executable} -m doit wait | head -1", shell=True,
                              cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    out, err = reader.communicate(timeout=60)
    assert len(out.splitlines()) == 1 and "Traceback" not in err, err
    ws.doit("wait", check_rc=0)
