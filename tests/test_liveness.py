"""The advancer waits on events (issue 10, point 9): an agent whose wrapper
is killed without recording an exit status still wakes it (its pidfd)."""
import os
import signal

from conftest import wait_until


def test_a_wrapper_killed_with_sigkill_wakes_the_idle_advancer(ws):
    ws.write_pipeline("p", '''
[agents.victim]
command = "sleep 600"
[agents.other]
command = "sleep 600"
[agents.after]
command = "true"
after = ["victim"]
''')
    # the once-a-second fallback pushed out of the test's reach: only the
    # wrapper's pidfd can wake the advancer in time
    ws.doit(check_rc=0, env={"ORCHESTRATE_LIVENESS_INTERVAL": "600"})
    ws.wait_state("p", "victim", "running")
    ws.wait_state("p", "other", "running")
    advancer = wait_until(ws.advancer_pids, what="the advancer")[0]
    record = ws.status("p", "victim")
    os.kill(record["pid"], signal.SIGKILL)        # the wrapper: no exit record is written
    ws.wait_state("p", "victim", "failed", timeout=20)
    assert "without recording an exit status" in ws.status("p", "victim")["reason"]
    assert ws.advancer_pids() == [advancer]        # the same advancer settled it
    # ... woken by the wrapper's pidfd, not by the once-a-second liveness check
    # that stands in where pidfds are missing
    assert "woken by a wrapper that ended without an exit record (pidfd)" in \
        (ws.state / "advancer.log").read_text()
    os.killpg(record["pid"], signal.SIGKILL)       # the sleep left in the victim's group
    ws.doit("cancel", check_rc=0)
    ws.wait_idle()
    assert ws.state_of("p", "other") == "cancelled"


def _waiting_for_flock(pid: int) -> bool:
    """`pid` is blocked on an flock (a "->" line of /proc/locks)."""
    return any(line.split()[1] == "->" and line.split()[5] == str(pid)
               for line in open("/proc/locks").read().splitlines())


def test_a_wrapper_ending_while_the_advancer_waits_for_the_lock_is_settled_at_once(ws):
    """The pidfd's news read at the start of a pass (not between passes)
    must still make that pass ask the executors: dropped, the ended agent
    would wait for the idle timeout (minutes with pidfds; here 600 s)."""
    import fcntl
    ws.write_pipeline("p", '''
[agents.victim]
command = "sleep 600"
''')
    ws.doit(check_rc=0, env={"ORCHESTRATE_LIVENESS_INTERVAL": "600"})
    ws.wait_state("p", "victim", "running")
    advancer = wait_until(ws.advancer_pids, what="the advancer")[0]
    record = ws.status("p", "victim")
    lock = os.open(ws.state / "lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)       # the advancer's next pass waits for us
        (ws.root / "pipelines" / "notes.txt").write_text("wake up")   # ... and starts
        wait_until(lambda: _waiting_for_flock(advancer), what="the advancer to wait for the lock")
        os.kill(record["pid"], signal.SIGKILL)
        wait_until(lambda: not _is_running(record["pid"]), what="the wrapper to end")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    ws.wait_state("p", "victim", "failed", timeout=20)
    assert "woken by a wrapper that ended without an exit record (pidfd)" in \
        (ws.state / "advancer.log").read_text()
    os.killpg(record["pid"], signal.SIGKILL)       # the sleep left in the victim's group
    ws.wait_idle()


def _is_running(pid: int) -> bool:
    """Not yet ended (a zombie has ended: its pidfd is readable)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_pidwatch_reports_an_ended_process_and_ignores_a_reused_pid():
    import subprocess
    from orchestrate.runtime.executors.pidwatch import PidWatch
    from orchestrate.runtime.executors.processes import create_time
    watch = PidWatch()
    child = subprocess.Popen(["sleep", "60"])
    try:
        started = create_time(child.pid)
        watch.track([(child.pid, started), (child.pid, started - 1000.0)])
        assert list(watch.fds) == [(child.pid, started)]   # the wrong start time is not ours
        # ... so that record's process has ended, as far as it is concerned
        assert watch.wait(0.0) == ({(child.pid, started - 1000.0)}, set())
        assert watch.wait(0.0) == (set(), set())
        child.kill()
        child.wait()
        ended, _ = watch.wait(5.0)
        assert ended == {(child.pid, started)}
        assert not watch.fds                   # a process ends once: not reported again
        assert watch.wait(0.0) == (set(), set())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        watch.close()


def test_pidwatch_reports_a_process_that_ended_before_it_was_watched():
    import subprocess
    from orchestrate.runtime.executors.pidwatch import PidWatch
    from orchestrate.runtime.executors.processes import create_time
    watch = PidWatch()
    child = subprocess.Popen(["sleep", "60"])
    started = create_time(child.pid)
    child.kill()
    child.wait()
    try:
        watch.track([(child.pid, started)])      # too late for a pidfd
        assert watch.complete
        assert watch.wait(60.0) == ({(child.pid, started)}, set())   # at once, not in 60 s
        assert watch.wait(0.0) == (set(), set())
    finally:
        watch.close()
