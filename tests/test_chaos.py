"""Crash recovery, proved by chaos: the orchestrator is SIGKILLed at random
moments (never the agents), then `doit wait` must bring every agent to the
state it should have, with no agent run more often than its attempts allow,
no current agent re-run, and no process left behind."""
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from conftest import wait_until

TRIALS = 30
SEED = int(os.environ.get("CHAOS_SEED", "20261125"))   # CHAOS_SEED=N replays a run


def chaos_pipeline(ws) -> str:
    def agent(name, *args, **keys):
        lines = [f"[agents.{name}]", f"command = {json.dumps(ws.agent_cmd(*args))}"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
        return "\n".join(lines) + "\n"
    workers = [agent(f"w{i}", "--sleep", str(0.05 * i), "--write", f"out/w{i}.txt=w{i}",
                     after=["src"], outputs=[f"out/w{i}.txt"]) for i in range(1, 7)]
    return "".join([
        agent("src", "--sleep", "0.05", "--write", "out/src.txt=s", outputs=["out/src.txt"]),
        *workers,
        agent("flaky", "--exit", "3", "--succeed-from-attempt", "2", after=["src"],
              retries=2, retry_backoff=0.05),
        agent("doomed", "--exit", "5", after=["src"], retries=1, retry_backoff=0.05),
        agent("hang", "--sleep", "30", after=["src"], timeout="0.4s", kill_grace="0.2s"),
        agent("join", after=[f"w{i}" for i in range(1, 7)] + ["flaky"]),
        agent("blocked", after=["doomed"]),
    ])


EXPECTED_STATE = {**{f"w{i}": "done" for i in range(1, 7)}, "src": "done", "flaky": "done",
                  "join": "done", "doomed": "failed", "hang": "failed", "blocked": None}
MAX_LAUNCHES = {**{f"w{i}": 1 for i in range(1, 7)}, "src": 1, "flaky": 2, "join": 1,
                "doomed": 2, "hang": 1, "blocked": 0}


def reset(ws) -> None:
    for path in (ws.state, ws.root / "out"):
        shutil.rmtree(path, ignore_errors=True)
    ws.ledger.unlink(missing_ok=True)


def check_outcome(ws, trial) -> None:
    states = {name: ws.state_of("chaos", name) for name in EXPECTED_STATE}
    reasons = {name: (ws.status("chaos", name) or {}).get("reason") for name in states
               if states[name] != EXPECTED_STATE[name]}
    assert states == EXPECTED_STATE, f"trial {trial}: {states}; reasons {reasons}"
    counts = {name: len(ws.launches(name)) for name in MAX_LAUNCHES}
    events = (ws.state / "events.jsonl").read_text()
    assert all(counts[n] <= MAX_LAUNCHES[n] for n in counts), f"trial {trial}: {counts}\n{events}"
    assert counts["doomed"] == 2 and counts["flaky"] == 2, f"trial {trial}: {counts}"
    assert ws.status("chaos", "hang")["reason"] == "timeout after 0.4s"


def settle(ws) -> None:
    """No orchestrator nor agent of the workspace left running."""
    wait_until(lambda: not ws.orchestrator_pids(), 30, "orchestrator processes to exit")
    wait_until(lambda: not ws.agent_pids(), 30, "agent processes to exit")


def crash_plan(rng: random.Random, fanout: bool = False) -> list[tuple[str, str, float]]:
    """One to three crashes per trial: each lets a `doit` reach a named crash
    point (orchestrate/runtime/faults.py) a seeded number of times, or not, then
    SIGKILLs every orchestrator process at a seeded moment. The fan-out's
    points are drawn only for a pipeline that has one (so the seeded plans
    of the other trials stay as they were)."""
    from orchestrate.runtime.faults import POINTS
    points = [p for p in POINTS if (fanout or not p.startswith("fanout-"))
              and not p.startswith(("merge-", "bestof-"))]   # test_landing and test_best_of have their own
    plan = []
    for _ in range(rng.randint(1, 3)):
        point = f"{rng.choice(points)}:{rng.randint(1, 6)}" if rng.random() < 0.6 else ""
        plan.append(("crash at " + point if point else "kill", point, rng.uniform(0.0, 0.8)))
    return plan


def test_sigkill_at_random_moments_over_many_trials(ws):
    rng = random.Random(SEED)
    print(f"chaos seed {SEED} (CHAOS_SEED={SEED} replays it)")
    ws.write_pipeline("chaos", chaos_pipeline(ws))
    started = time.monotonic()
    for trial in range(TRIALS):
        reset(ws)
        plan = crash_plan(rng)
        where = f"seed {SEED}, trial {trial}, plan {plan}"
        for _, point, moment in plan:
            env = {**os.environ, "ORCHESTRATE_CRASH_AT": point}
            subprocess.Popen([sys.executable, "-m", "doit"], cwd=ws.root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(moment)                          # a seeded moment, not a synchronisation
            ws.kill_orchestrators()                     # callers, forked children, advancers
        proc = ws.doit("wait", timeout=60)
        assert proc.returncode == 1, (where, proc.stdout, proc.stderr)
        check_outcome(ws, where)
        before = len(ws.launches())
        ws.doit(timeout=60)                              # everything current: nothing re-runs
        settle(ws)
        assert len(ws.launches()) == before, where
    print(f"{TRIALS} chaos trials in {time.monotonic() - started:.1f}s")


def test_eight_racing_doit_and_wait_calls(ws):
    ws.write_pipeline("chaos", chaos_pipeline(ws))
    for trial in range(3):
        reset(ws)
        with ThreadPoolExecutor(8) as pool:
            procs = list(pool.map(lambda i: ws.doit("wait" if i % 2 else "run", timeout=60),
                                  range(8)))
        assert all(p.returncode in (0, 1) for p in procs), [p.stderr for p in procs]
        ws.doit("wait", timeout=60)
        check_outcome(ws, trial)
        settle(ws)


def test_a_launch_stuck_between_fork_and_exec_never_runs_twice(ws):
    """The interleaving behind 'doomed': 3: the orchestrator dies after forking
    the wrapper but before it execs; recovery relaunches; then the old child
    execs after all. Its claim is taken, so it runs nothing."""
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.wrapper import wrapper_argv
    ws.write_pipeline("p", f"[agents.a]\ncommand = {json.dumps(ws.agent_cmd('--exit', '5'))}\n")
    crashed = ws.doit(env={"ORCHESTRATE_CRASH_AT": "launch-recorded:1"})
    assert crashed.returncode == 0
    wait_until(lambda: not ws.orchestrator_pids(), what="the crashed advancer to be gone")
    record = ws.status("p", "a")
    assert record["state"] == "launching" and record["pid"] is None
    ws.doit("wait", check_rc=1)                         # recovery: relaunched once
    assert len(ws.launches("a")) == 1
    late = subprocess.run(wrapper_argv("p:a", ws.agent_cmd("--exit", "5"),
                                       Layout(ws.root).exit_file(record["run_id"])),
                          cwd=ws.root, env={**os.environ, "ORCHESTRATE_RUN_ID": record["run_id"]},
                          capture_output=True, text=True, timeout=30)
    assert late.returncode == 0 and late.stdout == ""   # it found its claim taken
    assert len(ws.launches("a")) == 1
    assert not Layout(ws.root).exit_file(record["run_id"]).exists()


def test_a_wrapper_killed_before_it_claimed_its_run_is_relaunched_not_failed(ws):
    """`doit` forked the wrapper and was told it started (Popen learns of a
    failed exec only through a pipe the dead child closes), but the child was
    killed before exec: the agent never ran, so that attempt is owed."""
    import psutil
    ws.write_pipeline("p", f"[agents.a]\ncommand = {json.dumps(ws.agent_cmd())}\n")
    dead = subprocess.Popen(["true"])
    started = psutil.Process(dead.pid).create_time()
    dead.wait()
    fields = ws.fingerprint_fields("p:a")
    (ws.state / "status" / "p" / "a.json").write_text(json.dumps({
        "state": "running", "pipeline": "p", "agent": "a", "task": "p:a", "attempt": 1,
        "run_id": "p.a.1.deadbeef", "pid": dead.pid, "pid_create_time": started,
        "launches": 1, "started_epoch": time.time(), **fields}))
    ws.doit("wait", check_rc=0)
    assert len(ws.launches("a")) == 1
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["attempt"] == 1


def fanout_pipeline(ws) -> str:
    """planner -> one worker per planned item -> a per-item check -> gather."""
    plan = ws.agent_cmd("--sleep", "0.05", "--copy", "in/plan.json=build/plan.json")
    worker = json.dumps([sys.executable, ws.agent_cmd().split()[1], str(ws.ledger),
                         "--sleep", "0.1", "--write", "out/{key}.txt={item}"])
    return f"""
[agents.plan]
command = {json.dumps(plan)}
inputs = ["in/plan.json"]
outputs = ["build/plan.json"]
[agents.work]
foreach = {{ json = "build/plan.json", from = "plan" }}
command = {worker}
outputs = ["out/{{key}}.txt"]
[agents.check]
foreach = {{ each_of = "work" }}
command = {json.dumps(ws.agent_cmd("--write", "out/check-$ORCHESTRATE_KEY.txt=ok"))}
[agents.gather]
command = {json.dumps(ws.agent_cmd())}
after = ["check"]
"""


def crash_and_recover(ws, rng, where: str) -> None:
    """Seeded crashes of every orchestrator process, then `doit wait`."""
    for _, point, moment in crash_plan(rng, fanout=True):
        if rng.random() < 0.5:
            point = "fanout-recorded:1"
        env = {**os.environ, "ORCHESTRATE_CRASH_AT": point}
        subprocess.Popen([sys.executable, "-m", "doit"], cwd=ws.root, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(moment)                          # a seeded moment, not a synchronisation
        ws.kill_orchestrators()
    proc = ws.doit("wait", timeout=60)
    assert proc.returncode == 0, (where, proc.stdout, proc.stderr)


def test_sigkill_during_a_dynamic_fan_out(ws):
    """A planner's list becomes instances with every orchestrator killed at
    seeded moments (and at the crash point right after the expansion is
    recorded): no instance runs twice, none is forgotten; a changed list then
    runs only its new item and retires the removed one, under the same chaos."""
    rng = random.Random(SEED + 1)
    ws.write_pipeline("fan", fanout_pipeline(ws))
    (ws.root / "in").mkdir()
    for trial in range(8):
        reset(ws)
        (ws.root / "in/plan.json").write_text(json.dumps(["a", "b; touch pwned", "c", "d"]))
        where = f"seed {SEED + 1}, trial {trial}"
        crash_and_recover(ws, rng, where)
        counts = {e["agent"]: 0 for e in ws.launches()}
        for entry in ws.launches():
            counts[entry["agent"]] += 1
        keys = ["a", "b-touch-pwned", "c", "d"]
        assert counts == {"plan": 1, "gather": 1, **{f"work.{k}": 1 for k in keys},
                          **{f"check.{k}": 1 for k in keys}}, (where, counts)
        (ws.root / "in/plan.json").write_text(json.dumps(["a", "c", "d", "e"]))
        crash_and_recover(ws, rng, where + " (changed list)")
        again = {}
        for entry in ws.launches():
            again[entry["agent"]] = again.get(entry["agent"], 0) + 1
        assert again == {**counts, "plan": 2, "gather": 2, "work.e": 1, "check.e": 1}, \
            (where, again)
        assert ws.state_of("fan", "work.b-touch-pwned") == "removed", where
        assert ws.state_of("fan", "check.b-touch-pwned") == "removed", where
        settle(ws)
    assert not list(ws.root.rglob("pwned"))
