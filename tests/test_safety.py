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
    from orchestrate.state import remove_inside
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
    proc = ws.doit("clean", "p:a")
    assert "p:a is running; not cleaned (doit cancel p:a first)" in proc.stderr
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
        record = ws.status("p", "a")
        assert record["state"] == "failed", record
        assert "without recording an exit status" in record["reason"]
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
