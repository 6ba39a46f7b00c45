"""Running agents are never lost (DESIGN.md): a run whose pipeline file is
deleted, renamed or made invalid, or whose agent is removed from it, stays
visible and stoppable by its task name, keeps its limits as of launch, is
never relaunched, and (no longer declared) ends `removed`. Real doit, real
processes."""
import os

from conftest import group_alive, wait_until
from test_control import agent_toml


def start_long(ws, pipeline: str, name: str = "long", **keys) -> int:
    """Launch `pipeline:name` (a 60 s sleep) alone; its wrapper's pid once running."""
    ws.write_pipeline(pipeline, agent_toml(ws, name, "--sleep", "60", **keys))
    ws.doit(pipeline, check_rc=0)
    ws.wait_state(pipeline, name, "running")
    return ws.status(pipeline, name)["pid"]


def test_a_deleted_files_agent_is_shown_and_its_log_read(ws):
    pid = start_long(ws, "gone")
    (ws.root / "pipelines" / "gone.toml").unlink()
    status = ws.doit("status", check_rc=0)
    assert "gone:long" in status.stdout and "no longer declared" in status.stdout
    named = ws.doit("status", "gone:long", check_rc=0)
    assert "no longer declared" in named.stdout
    logs = ws.doit("logs", "gone:long", check_rc=0)
    assert "started long" in logs.stdout
    assert group_alive(pid)                           # looking stopped nothing
    ws.doit("cancel", check_rc=0)
    assert not group_alive(pid)


def test_a_deleted_files_agent_keeps_its_timeout_and_ends_removed(ws):
    """Nobody runs a command: its advancer still stops it at its launch's
    timeout (no command in between, so no race with the 3 s)."""
    pid = start_long(ws, "gone", timeout="3s", kill_grace="0.3s")
    (ws.root / "pipelines" / "gone.toml").unlink()
    ws.wait_state("gone", "long", "removed", timeout=30)
    record = ws.status("gone", "long")
    assert record["reason"] == "removed: no longer declared; it ended: timeout after 3s"
    wait_until(lambda: not group_alive(pid), what="the agent's group gone")
    ws.wait_idle()
    assert len(ws.launches("long")) == 1              # never relaunched
    assert not ws.signal("gone", "long").exists()


def test_a_renamed_files_agent_is_cancelled_by_its_old_name(ws):
    pid = start_long(ws, "gone")
    os.rename(ws.root / "pipelines" / "gone.toml", ws.root / "pipelines" / "renamed.toml")
    proc = ws.doit("cancel", "gone:long", check_rc=0)
    assert proc.stdout == "cancelled gone:long\n"
    assert not group_alive(pid)
    record = ws.status("gone", "long")
    assert record["state"] == "removed"
    assert record["reason"] == "removed: no longer declared; it ended: cancelled by user"
    ws.wait_idle()
    assert len(ws.launches("long")) == 1


def test_an_invalid_files_agent_answers_status_logs_and_cancel(ws):
    pid = start_long(ws, "blog", "wordcount")
    ws.write_pipeline("blog", agent_toml(ws, "wordcount", "--sleep", "60")
                      + "[agents.oops]\ncomand = 'typo'\n")
    status = ws.doit("status", "blog:wordcount", check_rc=0)
    assert "blog:wordcount" in status.stdout and "pipeline file invalid" in status.stdout
    logs = ws.doit("logs", "blog:wordcount", check_rc=0)
    assert "started wordcount" in logs.stdout
    proc = ws.doit("cancel", "blog:wordcount", check_rc=0)
    assert proc.stdout == "cancelled blog:wordcount\n"
    assert not group_alive(pid)
    assert ws.state_of("blog", "wordcount") == "cancelled"
    ws.wait_idle()


def test_an_agent_removed_from_its_file_is_reached_by_a_bare_cancel(ws):
    ws.write_pipeline("p", agent_toml(ws, "a", "--sleep", "60") + agent_toml(ws, "b"))
    ws.doit("p", check_rc=0)
    ws.wait_state("p", "a", "running")
    ws.wait_state("p", "b", "done")
    pid = ws.status("p", "a")["pid"]
    ws.write_pipeline("p", agent_toml(ws, "b"))       # a is no longer declared
    proc = ws.doit("cancel", check_rc=0)
    assert proc.stdout == "cancelled p:a\n"
    assert not group_alive(pid)
    assert ws.state_of("p", "a") == "removed" and ws.state_of("p", "b") == "done"
    ws.wait_idle()
    assert len(ws.launches("a")) == 1


def test_with_no_orchestrator_left_the_next_command_applies_the_launch_timeout(ws):
    pid = start_long(ws, "gone", timeout="1s", kill_grace="0.3s")
    ws.kill_orchestrators()                           # its advancer is gone too
    (ws.root / "pipelines" / "gone.toml").unlink()
    # each `doit status` is a pass: past the timeout it stops the run, then settles it
    wait_until(lambda: ws.doit("status", check_rc=0) and ws.state_of("gone", "long") == "removed",
               timeout=30, what="the run stopped at its launch's timeout")
    assert ws.status("gone", "long")["reason"] == \
        "removed: no longer declared; it ended: timeout after 1s"
    wait_until(lambda: not group_alive(pid), what="the agent's group gone")
    assert len(ws.launches("long")) == 1
