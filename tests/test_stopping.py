"""One stop policy, bounded (issue 20 section 4, issue 21 point 3): `doit
cancel` returns within kill_grace + 10 s whatever the executor does, says
which agents it could not confirm gone, and exits 1 then. Real doit, real
processes; Slurm made unreachable by scripts named squeue and scancel."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import group_alive, process_stats, wait_until


def agent_toml(ws, name: str, *args: str, **keys) -> str:
    lines = [f"[agents.{name}]", f"command = {json.dumps(ws.agent_cmd(*args))}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def test_cancel_kills_an_agent_that_ignores_sigterm_and_returns(ws):
    ws.write_pipeline("p", agent_toml(ws, "stubborn", "--ignore-term", "--sleep", "600",
                                      kill_grace="0.5s"))
    ws.doit(check_rc=0)
    ws.wait_state("p", "stubborn", "running")
    pid = ws.status("p", "stubborn")["pid"]
    ws.kill_orchestrators()   # no advancer to send the SIGKILL: the cancel must
    wait_until(lambda: not ws.orchestrator_pids(), what="orchestrators gone")
    proc = ws.doit("cancel", "p:stubborn", timeout=60, check_rc=0)
    assert "cancelled p:stubborn" in proc.stdout
    assert not group_alive(pid)          # gone when cancel returned: no wait here
    assert ws.state_of("p", "stubborn") == "cancelled"


def fake_slurm(directory, squeue: str, scancel: str) -> dict[str, str]:
    """A PATH whose squeue and scancel are these shell bodies (Slurm unreachable)."""
    directory.mkdir(exist_ok=True)
    for name, body in (("squeue", squeue), ("scancel", scancel)):
        path = directory / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


def forge_slurm_run(ws, task: str, job_id: str) -> None:
    """The status record of a running Slurm job (no cluster needed)."""
    pipeline, agent = task.split(":")
    (ws.state / "status" / pipeline).mkdir(parents=True, exist_ok=True)
    (ws.state / "status" / pipeline / f"{agent}.json").write_text(json.dumps({
        "state": "running", "pipeline": pipeline, "agent": agent, "task": task,
        "run_id": f"{pipeline}.{agent}.1.0badc0de", "attempt": 1, "launches": 1,
        "job_id": job_id, "executor": "slurm", "started_epoch": time.time(),
        **ws.fingerprint_fields(task)}))


SLURM_DOWN = {
    "failing": ("echo 'squeue: error: Unable to contact slurm controller' >&2; exit 1",
                "echo 'scancel: error: Unable to contact slurm controller' >&2; exit 1"),
    "hanging": ("exec sleep 600", "exec sleep 600"),
}


@pytest.mark.parametrize("how", sorted(SLURM_DOWN))
def test_cancel_with_slurm_unreachable_is_bounded_and_says_so(ws, tmp_path, how):
    ws.write_pipeline("p", '[agents.a]\ncommand = "sleep 600"\nexecutor = "slurm"\n'
                           'kill_grace = "0.5s"\n[agents.b]\ncommand = "true"\n')
    forge_slurm_run(ws, "p:a", "4242")
    env = fake_slurm(tmp_path / "bin", *SLURM_DOWN[how])
    # without the bound it never returns: the subprocess timeout fails the test
    proc = ws.doit("cancel", timeout=60, env=env)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stdout.splitlines() if "p:a" in line]
    assert len(lines) == 1 and lines[0].startswith("could not confirm that p:a ended"), \
        proc.stdout
    if how == "failing":
        assert "Unable to contact slurm controller" in lines[0]
    record = ws.status("p", "a")
    assert record["state"] == "running" and record["stop_kind"] == "cancel"
    # Slurm answers again, the job still runs: the next pass sends SIGKILL again
    calls = tmp_path / "scancel.calls"
    env = fake_slurm(tmp_path / "bin", "echo '4242|RUNNING'", f'echo "$@" >> {calls}')
    wait_until(lambda: ws.doit("status", env=env, check_rc=0) and calls.exists()
               and "--signal=KILL --state=RUNNING 4242" in calls.read_text(),
               what="a pass to send SIGKILL again")
    assert ws.state_of("p", "a") == "running"
    # ... and once it has ended, the next pass settles it as cancelled
    env = fake_slurm(tmp_path / "bin", "echo '4242|CANCELLED'", "exit 0")
    ws.doit("status", env=env, check_rc=0)
    assert ws.state_of("p", "a") == "cancelled"
    assert ws.status("p", "a")["reason"] == "cancelled by user"



def zombie_children(pid: int) -> list[int]:
    """Children of `pid` that have exited and were not reaped."""
    return [child for child, fields in process_stats()
            if int(fields[1]) == pid and fields[0] == "Z"]


def test_doit_wait_reaps_the_agents_it_launches(ws, tmp_path):
    """Issue 21 point 4: `doit wait` launches agents too (whichever of it and
    the advancer takes the lock first); a wrapper it started must not stay
    its zombie past its next pass."""
    gate = ws.root / "release"
    chain = ["[agents.a0]\ncommand = \"true\"\n"]
    chain += [f"[agents.a{i}]\ncommand = \"true\"\nafter = [\"a{i - 1}\"]\n" for i in range(1, 12)]
    chain.append(agent_toml(ws, "last", "--gate", str(gate), after=["a11"]))
    ws.write_pipeline("p", "".join(chain))
    with open(tmp_path / "wait.out", "w") as out:
        waiter = subprocess.Popen([sys.executable, "-m", "doit", "wait"], cwd=ws.root,
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        ws.wait_state("p", "last", "running", timeout=60)
        # every wrapper of the chain has exited: none is left a zombie of `doit wait`
        wait_until(lambda: not zombie_children(waiter.pid), what="no zombie of doit wait")
        gate.touch()
        assert waiter.wait(timeout=60) == 0, (tmp_path / "wait.out").read_text()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()
    assert all(ws.state_of("p", f"a{i}") == "done" for i in range(12))


# What outside runtime/executors may name a process operation, and why it is
# not a run's: the rest must go through an executor (its docstring's promise).
NOT_A_RUN = {
    ("runtime/stopping.py", "os.killpg("): "a check's or a hook's group, child of its supervisor",
    ("runtime/faults.py", "os.kill("): "a crash point kills its own process",
    ("runtime/state.py", "/proc/"): "/proc/self/fd: where a state folder really is",
    ("runtime/bestof.py", "executors.processes"):
        "a best_of judge's supervisor (pid and start time), not an agent's run",
}
PROCESS_OPERATIONS = ("psutil", "executors.processes", "executors import processes",
                      "/proc/", "os.kill(", "os.killpg(", "pidfd_open")


def test_nothing_outside_the_executors_reads_proc_or_signals_a_run():
    """runtime/executors/__init__.py promises that nothing outside the
    executors signals a run's process or reads /proc: no other module imports
    psutil or the executors' `processes`, names /proc, kill or a pidfd."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "orchestrate")
    found = set()
    for folder, _, files in os.walk(root):
        relative = os.path.relpath(folder, root)
        if relative.startswith(os.path.join("runtime", "executors")):
            continue
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(folder, name)).read()
                path = os.path.normpath(os.path.join(relative, name))
                found |= {(path, needle) for needle in PROCESS_OPERATIONS if needle in text}
    assert found - set(NOT_A_RUN) == set()
    assert set(NOT_A_RUN) <= found, "an exception that no longer applies: remove it"


# -- in-process: a fake executor and a fake clock drive the real Engine ---------
def fake_engine(tmp_path, ignores_term: bool = True, kill_grace: str = "5s"):
    from orchestrate.core.selection import select
    from orchestrate.runtime.engine import Engine
    from orchestrate.runtime.executors.fake import FakeClock, FakeExecutor
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.workspace import load_workspace
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "p.toml").write_text(
        f'[agents.a]\ncommand = "true"\nkill_grace = "{kill_grace}"\n')
    clock = FakeClock()
    fake = FakeExecutor(Layout(tmp_path), clock, ignores_term=ignores_term)
    workspace = load_workspace(tmp_path)
    engine = Engine(workspace, executors={"local": fake}, clock=clock)
    agents = select(workspace, [])
    engine.launch_all(engine.run_pass(agents))
    return engine, fake, clock, agents


def events(engine) -> list[str]:
    lines = (engine.layout.base / "events.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines]


def test_a_cancel_is_term_then_kill_at_kill_at_then_cancelled(tmp_path):
    from orchestrate.core.policy import StopKind
    engine, fake, clock, agents = fake_engine(tmp_path)
    agent = agents[0]
    record = engine.records(agents)["p:a"]
    assert record.state == "running" and fake.reaped == 1
    began = clock()
    stopping = engine.stop(agent, record, StopKind.CANCEL, "cancelled by user")
    assert stopping.kill_at == began + 5.0
    assert engine.wait_until_gone([(agent, stopping)], sleep=clock.sleep) == {}
    run = fake.runs[record.run_id]
    assert run.signals == [(began, signal.SIGTERM), (pytest.approx(began + 5.0, abs=0.01), signal.SIGKILL)]
    engine.run_pass(agents)          # settled: no exit record, stopped by a cancel
    record = engine.records(agents)["p:a"]
    assert record.state == "cancelled" and record.reason == "cancelled by user"
    assert events(engine) == ["launch", "stop", "cancel"]


def test_a_run_that_ends_on_sigterm_is_not_killed(tmp_path):
    from orchestrate.core.policy import StopKind
    engine, fake, clock, agents = fake_engine(tmp_path, ignores_term=False)
    record = engine.records(agents)["p:a"]
    began = clock()
    stopping = engine.stop(agents[0], record, StopKind.CANCEL, "cancelled by user")
    assert engine.wait_until_gone([(agents[0], stopping)], sleep=clock.sleep) == {}
    assert fake.runs[record.run_id].signals == [(began, signal.SIGTERM)]
    assert clock() == began          # nothing waited for


def test_an_executor_that_cannot_tell_is_given_up_at_kill_grace_plus_ten_seconds(tmp_path):
    from orchestrate.core.policy import StopKind
    engine, fake, clock, agents = fake_engine(tmp_path)
    record = engine.records(agents)["p:a"]
    began = clock()
    deadline = engine.bound_stops(agents)
    assert deadline == began + 5.0 + 10.0
    stopping = engine.stop(agents[0], record, StopKind.CANCEL, "cancelled by user")
    fake.unreachable = "controller down"
    unconfirmed = engine.wait_until_gone([(agents[0], stopping)], sleep=clock.sleep)
    assert unconfirmed == {"p:a": "local: controller down"}
    assert clock() == pytest.approx(deadline, abs=0.05)
    kills = [at for at, sig in fake.runs[record.run_id].signals if sig == signal.SIGKILL]
    assert kills[0] == pytest.approx(began + 5.0, abs=0.01) and len(kills) == 10   # every second after


def test_a_retired_instance_gets_term_its_grace_then_kill_and_a_stop_event(tmp_path):
    engine, fake, clock, agents = fake_engine(tmp_path, kill_grace="2s")
    record = engine.records(agents)["p:a"]
    began = clock()
    engine.kill(record, sleep=clock.sleep)
    assert fake.runs[record.run_id].signals == [
        (began, signal.SIGTERM), (pytest.approx(began + 2.0, abs=0.01), signal.SIGKILL)]
    assert events(engine)[-1] == "stop"
