"""The real Engine in-process (issue 20 sections 5 and 7): a fake executor
and a fake clock drive it, no process starts and no time passes but the
clock's, so each path runs in milliseconds: a planner's list becoming
instances and shrinking (fan-out), a polled executor asked every `poll`.
Cancel and retire: tests/test_stopping.py; the rate-limit hold:
tests/test_slurm.py. And the machine check that no helper reaches into the
engine's insides."""
import json
import re
import signal
from pathlib import Path

import pytest

from orchestrate.core.selection import select
from orchestrate.runtime.engine import LIVENESS_INTERVAL, Engine
from orchestrate.runtime.executors.fake import FakeClock, FakeExecutor
from orchestrate.runtime.state import Layout
from orchestrate.runtime.workspace import load_workspace

PACKAGE = Path(__file__).resolve().parent.parent / "orchestrate"


def fake_engine(root: Path, pipeline: str, pyproject: str = "", ignores_term: bool = False):
    """An Engine over `pipeline` (pipelines/p.toml) whose local and slurm
    executors are fakes on one fake clock; the slurm one is polled."""
    (root / "pipelines").mkdir()
    (root / "pipelines" / "p.toml").write_text(pipeline)
    if pyproject:
        (root / "pyproject.toml").write_text(pyproject)
    clock = FakeClock()
    layout = Layout(root)
    local = FakeExecutor(layout, clock, ignores_term=ignores_term)
    slurm = FakeExecutor(layout, clock, name="slurm", polled=True)
    engine = Engine(load_workspace(root), liveness_interval=LIVENESS_INTERVAL, clock=clock,
                    sleep=clock.sleep, executors={"local": local, "slurm": slurm})
    return engine, local, slurm, clock


def states(engine: Engine, agents) -> dict[str, str]:
    return {task: record.state for task, record in engine.records(agents).items() if record}


def run_id(engine: Engine, task: str) -> str:
    return engine.records([engine.workspace.agents_by_task[task]])[task].run_id


def events(engine: Engine) -> list[dict]:
    lines = (engine.layout.base / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


# -- fan-out ----------------------------------------------------------------
PLANNED = '''
[agents.plan]
command = "true"
inputs = ["list.json"]
[agents.work]
foreach = { json = "list.json", from = "plan" }
command = ["echo", "{item}"]
kill_grace = "2s"
'''


def test_a_planners_list_becomes_instances_and_a_removed_item_is_retired(tmp_path):
    (tmp_path / "list.json").write_text('["a", "b"]')
    engine, local, _, clock = fake_engine(tmp_path, PLANNED, ignores_term=True)
    agents = select(engine.workspace, [])
    assert engine.launch_all(engine.run_pass(agents)) == ["p:plan"]
    local.finish(run_id(engine, "p:plan"), 0)
    # the planner is settled, its list read and recorded, the instances scheduled
    result = engine.run_pass(agents)
    agents = result.agents
    assert {"p:work.a", "p:work.b"} <= set(engine.workspace.agents_by_task)
    assert sorted(engine.launch_all(result)) == ["p:work.a", "p:work.b"]
    assert states(engine, agents)["p:work"] == "done"   # the fan-out's row: what it became
    local.finish(run_id(engine, "p:work.a"), 0)
    # the list shrinks: the planner runs again (its input changed) ...
    (tmp_path / "list.json").write_text('["a"]')
    result = engine.run_pass(agents)
    agents = result.agents
    assert engine.launch_all(result) == ["p:plan"]
    local.finish(run_id(engine, "p:plan"), 0)
    # ... and its new list retires b: TERM, its kill_grace on the engine's clock, KILL
    b_run = run_id(engine, "p:work.b")
    began = clock()
    result = engine.run_pass(agents)
    assert local.runs[b_run].signals == [(began, signal.SIGTERM),
                                         (pytest.approx(began + 2.0, abs=0.01), signal.SIGKILL)]
    record = engine.records([a for a in agents if a.task == "p:work.b"])["p:work.b"]
    assert (record.state, record.reason) == ("removed", "removed: its item left list.json")
    assert "p:work.b" not in engine.workspace.agents_by_task
    assert [a.task for a in result.agents if a.task.startswith("p:work.")] == ["p:work.a"]
    assert states(engine, result.agents)["p:work.a"] == "done"
    assert engine.launch_all(result) == []
    assert [(e["event"], e.get("task")) for e in events(engine)][-3:] == [
        ("stop", "p:work.b"), ("removed", "p:work.b"), ("fanout", "p:work")]


# -- a polled executor (Slurm) ----------------------------------------------
ON_SLURM = '''
[agents.a]
command = "true"
executor = "slurm"
[agents.b]
command = "true"
executor = "slurm"
'''
POLL = 30.0
PYPROJECT = f'[tool.orchestrate.slurm]\npoll = "{POLL:g}s"\n'


def launched_on_slurm(tmp_path):
    engine, _, slurm, clock = fake_engine(tmp_path, ON_SLURM, PYPROJECT)
    agents = select(engine.workspace, [])
    assert sorted(engine.launch_all(engine.run_pass(agents))) == ["p:a", "p:b"]
    assert slurm.asked == []                   # nothing ran before: nothing to ask
    return engine, slurm, clock, agents


def test_a_polled_executor_is_asked_every_poll_and_only_then_settles(tmp_path):
    engine, slurm, clock, agents = launched_on_slurm(tmp_path)
    launched = clock()
    engine.run_pass(agents)
    assert slurm.asked == []                   # just launched: first asked one poll later
    assert engine.next_wake == launched + POLL
    clock.now = began = launched + POLL
    engine.run_pass(agents)
    assert slurm.asked == [began]
    assert engine.next_wake == began + POLL    # the advancer sleeps until the next poll
    # the run ends with its exit record; the executor is not due to be asked:
    # a remote run is settled only on its word (its log may be incomplete)
    slurm.finish(run_id(engine, "p:a"), 0)
    for _ in range(3):
        clock.now += LIVENESS_INTERVAL         # a local executor would be asked now
        engine.run_pass(agents)
    assert slurm.asked == [began]
    assert states(engine, agents) == {"p:a": "running", "p:b": "running"}
    clock.now = began + POLL
    engine.run_pass(agents)
    assert slurm.asked == [began, began + POLL]
    assert states(engine, agents) == {"p:a": "done", "p:b": "running"}


def test_a_polled_run_gone_without_an_exit_record_ends_with_the_executors_reason(tmp_path):
    engine, slurm, clock, agents = launched_on_slurm(tmp_path)
    slurm.finish(run_id(engine, "p:a"), None, ended_as="slurm: NODE_FAIL")
    clock.now += POLL
    engine.run_pass(agents)
    record = engine.records(agents)["p:a"]
    assert record.state == "failed" and "slurm: NODE_FAIL" in record.reason, record.reason
    assert engine.records(agents)["p:b"].state == "running"


def test_runs_a_polled_executor_cannot_answer_for_stay_running(tmp_path):
    """Controller down: neither a run with its exit record nor one gone
    without is settled; once it answers, both are, each as it ended."""
    engine, slurm, clock, agents = launched_on_slurm(tmp_path)
    slurm.finish(run_id(engine, "p:a"), 0)
    slurm.finish(run_id(engine, "p:b"), None, ended_as="slurm: NODE_FAIL")
    slurm.unreachable = "squeue: Unable to contact slurm controller"
    for _ in range(3):
        clock.now += POLL
        engine.run_pass(agents)
    assert len(slurm.asked) == 3
    assert states(engine, agents) == {"p:a": "running", "p:b": "running"}
    slurm.unreachable = None
    clock.now += POLL
    engine.run_pass(agents)
    assert states(engine, agents) == {"p:a": "done", "p:b": "failed"}
    assert "slurm: NODE_FAIL" in engine.records(agents)["p:b"].reason


# -- the engine is not a hub ------------------------------------------------
# `engine._x` (also `self.engine._x`) read outside engine.py, `engine.x = ...`
# set there, or a view's engine (`view._engine`) reached through: each means a
# helper works the engine's insides.
REACHING_IN = re.compile(
    r"(?<!\w)_?engine\.(?:_\w|\w+\s*[-+*/|&]?=(?!=))|\._engine\b")


def reaching_in(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).as_posix() == "runtime/engine.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if REACHING_IN.search(line):
                found.append(f"{path.relative_to(package)}:{number}: {line.strip()}")
    return found


def test_no_helper_touches_the_engines_insides():
    """Keepers read a StateView and ask through their interface
    (`fanout.FanoutHost`); settings such as liveness_interval are the
    constructor's: nothing outside runtime/engine.py reads a private
    attribute of an engine or sets any of its attributes."""
    assert reaching_in(PACKAGE) == []


def test_the_check_on_the_engines_insides_sees_what_it_forbids(tmp_path):
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "engine.py").write_text("engine._save(r)\nself.x = 1\n")
    (tmp_path / "runtime" / "keeper.py").write_text(
        "engine.status_cache.get(p)\nif engine.clock() == 0: pass\n"
        "engine._save(record)\nself.engine.workspace = fresh\nengine.liveness_interval = 1\n"
        "view._engine.status_cache\nx = engine.next_wake == 0\nmy_engine._x = 1\n")
    assert [line.split(":")[1] for line in reaching_in(tmp_path)] == ["3", "4", "5", "6"]
