"""The slurm executor against a real one-node Slurm (tests/slurm_cluster.py):
each agent a batch job running the same wrapper; squeue for liveness;
scancel to stop; re-attach by job id or job name after kill -9; caps, pools,
budgets and rate-limit holds exactly as on local."""
import json
import os
import subprocess
import time

import pytest

from conftest import wait_until
from orchestrate.runtime.executors import processes


def slurm(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def job_state(job_id: str) -> str:
    out = slurm("squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job_id}")
    return out.stdout.strip()


def jobs_named(run_id: str) -> list[str]:
    out = slurm("squeue", "--noheader", "--states=all", "--format=%i", f"--name={run_id}")
    return out.stdout.split()


@pytest.fixture
def sws(ws, slurm_cluster):
    """A workspace whose agents run on the test cluster, asked every 200 ms."""
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write('\n[tool.orchestrate]\nexecutor = "slurm"\n'
                     '[tool.orchestrate.slurm]\npoll = "200ms"\npartition = "debug"\n')
    yield ws
    for pipeline in (ws.state / "status").glob("*"):
        for path in pipeline.glob("*.json"):
            job = json.loads(path.read_text()).get("job_id")
            if job:
                slurm("scancel", "--full", "--signal=KILL", job)


def no_process_of(run_id: str) -> bool:
    return not processes.run_processes(run_id)


def workspace_keys(ws, text: str) -> None:
    """Add keys to the [tool.orchestrate] table the `sws` fixture wrote."""
    path = ws.root / "pyproject.toml"
    path.write_text(path.read_text().replace('executor = "slurm"\n',
                                             f'executor = "slurm"\n{text}', 1))


def jobs_of(ws, states: str = "all") -> dict[str, tuple[str, str]]:
    """Slurm's own view: job id -> (job name = run id, state) of every job
    working in this workspace (others' jobs share the cluster)."""
    out = slurm("squeue", "--noheader", f"--states={states}", "--format=%i|%j|%T|%Z")
    jobs = {}
    for line in out.stdout.splitlines():
        job, name, state, workdir = line.strip().split("|", 3)
        if workdir == str(ws.root):
            jobs[job] = (name, state)
    return jobs


def events_of(ws) -> list[dict]:
    return [json.loads(l) for l in (ws.state / "events.jsonl").read_text().splitlines()]


def most_in_flight(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at a tie)."""
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in points:
        now += step
        most = max(most, now)
    return most


def cli_calls(ws) -> list[dict]:
    path = ws.root / "cli-calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def preset_toml(name: str, preset: str, prompt: str, **keys) -> str:
    lines = [f"[agents.{name}]", f'agent = "{preset}"', f"prompt = {json.dumps(prompt)}"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def test_agents_are_batch_jobs_with_the_same_environment(sws):
    """Points 1-3: each agent is one sbatch job named by its run id, running
    the same wrapper (env, cwd, log, exit record, signal); status shows the job."""
    env_a = sws.root / "env-a.json"
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd("--env-to", str(env_a), "--write", "out/a.txt=A"))}
outputs = ["out/a.txt"]
resources = {{ cpus = 2, mem = "64M", time = "10m" }}
[agents.b]
command = {json.dumps(sws.agent_cmd("--copy-upstream", "a=out/b.txt"))}
after = ["a"]
outputs = ["out/b.txt"]
''')
    sws.doit("p:b", check_rc=0)
    sws.doit("wait", "p:b", timeout=120, check_rc=0)
    a, b = sws.status("p", "a"), sws.status("p", "b")
    assert a["state"] == b["state"] == "done"
    assert a["executor"] == "slurm" and a["job_id"].isdigit() and a["pid"] is None
    seen = json.loads(env_a.read_text())
    assert seen["ORCHESTRATE_RUN_ID"] == a["run_id"]
    assert (sws.root / "out/b.txt").read_text() == "A"
    assert jobs_named(a["run_id"]) == [a["job_id"]]
    shown = slurm("scontrol", "show", "job", a["job_id"]).stdout
    assert "NumCPUs=2" in shown and "TimeLimit=00:10:00" in shown and "JobState=COMPLETED" in shown
    assert sws.signal("p", "a").exists() and sws.signal("p", "b").exists()
    status = sws.doit("status", check_rc=0).stdout
    assert f"slurm job {a['job_id']}" in status
    log = (sws.root / a["log"]).read_text()
    assert "fake agent" in log or log is not None


def test_fake_agent_sees_slurm(sws):
    """The agent really runs inside the job: SLURM_JOB_ID is the recorded job id."""
    out = sws.root / "env.txt"
    sws.write_pipeline("p", f'''
[agents.a]
command = "echo $SLURM_JOB_ID $ORCHESTRATE_AGENT $(pwd) > {out}"
cwd = "sub"
''')
    (sws.root / "sub").mkdir()
    sws.doit("p:a", check_rc=0)
    sws.doit("wait", "p:a", timeout=120, check_rc=0)
    job, agent, cwd = out.read_text().split()
    assert job == sws.status("p", "a")["job_id"] and agent == "a"
    assert cwd == str(sws.root / "sub")


def test_scancel_from_outside_is_a_failure_with_slurms_state(sws):
    """Point 3: a job cancelled by someone else fails with `slurm: CANCELLED`,
    noticed by the advancer's poll (no doit command runs meanwhile)."""
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd("--sleep", "120"))}
''')
    sws.doit("p:a", check_rc=0)
    job = wait_until(lambda: (sws.status("p", "a") or {}).get("job_id"), 60, "a job id")
    wait_until(lambda: job_state(job) == "RUNNING", 60, "the job to run")
    wait_until(lambda: sws.launches("a"), 60, "the agent to start")
    slurm("scancel", job)
    sws.wait_state("p", "a", "failed", timeout=60)
    assert "slurm: CANCELLED" in sws.status("p", "a")["reason"]


def test_job_killed_without_exit_record_fails_from_squeue(sws):
    """Point 3: no exit record at all (the wrapper got SIGKILL, as on a node
    failure): only Slurm can tell, and the advancer asks it every poll."""
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd("--sleep", "120"))}
''')
    sws.doit("p:a", check_rc=0)
    wait_until(lambda: sws.launches("a"), 60, "the agent to start")
    record = sws.status("p", "a")
    for pid in processes.run_processes(record["run_id"]):   # the job's processes, as a dead node
        os.kill(pid, 9)
    sws.wait_state("p", "a", "failed", timeout=60)
    reason = sws.status("p", "a")["reason"]
    assert reason.startswith("slurm: "), reason
    assert not (sws.state / "runs" / f"{record['run_id']}.exit").exists()


def test_cancel_and_timeout_use_scancel_and_leave_no_process(sws):
    """Point 4: doit cancel and timeout stop the job (TERM, then KILL after
    kill_grace for an agent that ignores TERM); no process of the job is left."""
    sws.write_pipeline("p", f'''
[defaults]
kill_grace = "1s"
[agents.stubborn]
command = {json.dumps(sws.agent_cmd("--sleep", "120", "--ignore-term"))}
[agents.slow]
command = {json.dumps(sws.agent_cmd("--sleep", "120", "--ignore-term"))}
timeout = "3s"
''')
    sws.doit("p:stubborn", "p:slow", check_rc=0)
    wait_until(lambda: len(sws.launches()) == 2, 60, "both agents to start")
    sws.doit("cancel", "p:stubborn", timeout=120, check_rc=0)
    stubborn = sws.status("p", "stubborn")
    assert stubborn["state"] == "cancelled" and stubborn["reason"] == "cancelled by user"
    assert no_process_of(stubborn["run_id"])
    sws.wait_state("p", "slow", "failed", timeout=60)
    slow = sws.status("p", "slow")
    assert slow["reason"].startswith("timeout after 3s")
    wait_until(lambda: no_process_of(slow["run_id"]), 30, "the timed-out job's processes to end")
    assert job_state(slow["job_id"]) not in ("RUNNING", "PENDING")


def test_kill_9_of_every_orchestrator_then_reattach_by_job_id(sws):
    """Point 5: jobs go on without any orchestrator; the next doit re-attaches
    by job id and submits nothing again."""
    gate = sws.root / "gate"
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd("--gate", str(gate)))}
[agents.b]
command = {json.dumps(sws.agent_cmd("--gate", str(gate)))}
[agents.c]
command = {json.dumps(sws.agent_cmd())}
after = ["a", "b"]
''')
    sws.doit("p:c", check_rc=0)
    wait_until(lambda: len(sws.launches()) == 2, 60, "a and b to start")
    jobs = {n: sws.status("p", n)["job_id"] for n in "ab"}
    sws.kill_orchestrators()
    wait_until(lambda: not sws.orchestrator_pids(), 10, "orchestrators to be gone")
    assert all(job_state(j) == "RUNNING" for j in jobs.values())
    status = sws.doit("status", check_rc=0).stdout        # re-attaches, submits nothing
    assert all(f"slurm job {j}" in status for j in jobs.values())
    assert len(sws.launches()) == 2
    gate.touch()
    sws.doit("wait", "p:c", timeout=120, check_rc=0)
    assert [e["agent"] for e in sorted(sws.launches(), key=lambda e: e["t"])][-1] == "c"
    assert sorted(e["agent"] for e in sws.launches()) == ["a", "b", "c"]
    assert {n: sws.status("p", n)["job_id"] for n in "ab"} == jobs
    for name in "abc":
        assert len(jobs_named(sws.status("p", name)["run_id"])) == 1


@pytest.mark.parametrize("point,relaunched", [("launch-spawned:1", False),
                                              ("launch-recorded:1", True)])
def test_crash_between_recorded_and_sbatch_answer(sws, point, relaunched):
    """Point 5: killed after sbatch returned but before the job id was saved,
    the job is found by its name (re-attached, not resubmitted); killed before
    sbatch, the run's claim is taken and it is relaunched: one launch either way."""
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd("--sleep", "1"))}
''')
    sws.doit("p:a", env={"ORCHESTRATE_CRASH_AT": point})
    first = sws.status("p", "a")
    assert first["state"] == "launching" and first["job_id"] is None
    sws.doit("wait", "p:a", timeout=120, check_rc=0)
    final = sws.status("p", "a")
    assert final["state"] == "done"
    assert len(sws.launches("a")) == 1
    if relaunched:
        assert final["run_id"] != first["run_id"] and jobs_named(first["run_id"]) == []
    else:
        assert final["run_id"] == first["run_id"]
        assert jobs_named(first["run_id"]) == [final["job_id"]]


def test_sbatch_failing_fails_the_agent_with_its_message_and_retries(sws):
    """Point 7: sbatch's own message is the reason; retries apply; no traceback."""
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd())}
retries = 1
retry_backoff = "100ms"
''')
    with open(sws.root / "pyproject.toml", "a") as handle:
        handle.write('sbatch_args = ["--partition=nosuchpartition"]\n')
    proc = sws.doit("p:a")
    assert "Traceback" not in proc.stdout + proc.stderr
    sws.doit("wait", "p:a", timeout=60)
    record = sws.status("p", "a")
    assert record["state"] == "failed" and record["attempt"] == 2, record
    assert "Invalid partition name specified" in record["reason"]
    assert sws.launches() == []


def test_sbatch_missing(sws, tmp_path):
    sws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(sws.agent_cmd())}
''')
    proc = sws.doit("p:a", env={"PATH": str(tmp_path / "empty")})
    assert "Traceback" not in proc.stdout + proc.stderr
    record = sws.status("p", "a")
    assert record["state"] == "failed"
    assert "sbatch not found" in record["reason"]


def test_retries_and_worktree_free_policies_work_the_same(sws):
    """Point 4: a failing attempt is retried as another job; max_parallel holds."""
    sws.write_pipeline("p", f'''
max_parallel = 1
[agents.flaky]
command = {json.dumps(sws.agent_cmd("--exit", "3", "--succeed-from-attempt", "2"))}
retries = 1
retry_backoff = "100ms"
[agents.other]
command = {json.dumps(sws.agent_cmd("--sleep", "0.5"))}
''')
    sws.doit("p:flaky", "p:other", check_rc=0)
    sws.doit("wait", "p:flaky", "p:other", timeout=120, check_rc=0)
    flaky = sws.status("p", "flaky")
    assert flaky["state"] == "done" and flaky["attempt"] == 2
    assert len(sws.launches("flaky")) == 2
    runs = sorted(sws.launches(), key=lambda e: e["t"])
    assert len(runs) == 3


def test_worktree_and_preset_agents_on_slurm(sws, fake_bins):
    """Point 4: a worktree lives in the shared workspace and the job works in it;
    a preset's prompt reaches its CLI through the job's stdin (codex reads `-`)."""
    def git(*args):
        subprocess.run(["git", "-C", str(sws.root), *args], check=True, capture_output=True)
    git("init", "-q", "-b", "main")
    git("config", "user.email", "t@example.invalid")
    git("config", "user.name", "test")
    git("commit", "-q", "--allow-empty", "-m", "initial")
    sws.write_pipeline("p", '''
[agents.tree]
command = "printf tree > made.txt; test \\"$PWD\\" = \\"$ORCHESTRATE_WORKDIR\\""
isolation = "worktree"
outputs = ["made.txt"]
[agents.cli]
agent = "codex"
prompt = "Say hello over stdin"
''')
    sws.doit("wait", timeout=120, check_rc=0, env=fake_bins)
    assert (sws.state / "worktrees" / "p" / "tree" / "made.txt").read_text() == "tree"
    cli = sws.status("p", "cli")
    assert cli["state"] == "done" and cli["job_id"]
    assert "Say hello over stdin" in cli["result"]["final_message"]


def test_cancel_of_a_pending_job(sws):
    """A job Slurm has not started yet (here: --begin in an hour) is cancelled
    outright; it never runs."""
    sws.write_pipeline("p", f'''
[agents.later]
command = {json.dumps(sws.agent_cmd())}
''')
    with open(sws.root / "pyproject.toml", "a") as handle:
        handle.write('sbatch_args = ["--begin=now+1hour"]\n')
    sws.doit("p:later", check_rc=0)
    job = wait_until(lambda: (sws.status("p", "later") or {}).get("job_id"), 60, "a job id")
    assert job_state(job) == "PENDING"
    sws.doit("cancel", "p:later", timeout=60, check_rc=0)
    assert sws.status("p", "later")["state"] == "cancelled"
    assert job_state(job) == "CANCELLED"
    assert sws.launches() == []


def test_stall_timeout_stops_a_silent_job(sws):
    """Point 4: stall_timeout reads the job's log (on the shared filesystem)
    and stops the job with scancel; nothing of it is left."""
    sws.write_pipeline("p", f'''
[agents.quiet]
command = {json.dumps(sws.agent_cmd("--sleep", "120"))}
stall_timeout = "2s"
kill_grace = "1s"
''')
    sws.doit("p:quiet", check_rc=0)
    sws.wait_state("p", "quiet", "failed", timeout=60)
    record = sws.status("p", "quiet")
    assert record["reason"] == "stalled: no output for 2s"
    wait_until(lambda: no_process_of(record["run_id"]), 30, "the job's processes to end")


def test_max_parallel_and_pools_cap_slurm_jobs_in_flight(sws):
    """Point 4: pipeline max_parallel, workspace max_parallel and a pool hold
    Slurm agents as they hold local ones: while the agents are gated Slurm has
    exactly the jobs the caps allow and the rest are queued with the cap's
    reason; then all run, never more in flight than allowed, whether counted
    from the orchestrator's events (in file order) or from the jobs' own
    start and end stamps."""
    workspace_keys(sws, "max_parallel = 4\npools = { llm = 1 }\n")
    gate, ends = sws.root / "gate", sws.root / "ends.txt"
    command = (sws.agent_cmd("--gate", str(gate))
               + f' && echo "$ORCHESTRATE_RUN_ID $(date +%s.%N)" >> {ends}')

    def agent(name: str, **keys) -> str:
        lines = [f"[agents.{name}]", f"command = {json.dumps(command)}"]
        return "\n".join(lines + [f"{k} = {json.dumps(v)}" for k, v in keys.items()]) + "\n"
    sws.write_pipeline("p", "max_parallel = 2\n" + "".join(agent(f"a{i}") for i in range(4)))
    sws.write_pipeline("q", agent("x0", pool="llm") + agent("x1", pool="llm")
                       + agent("y") + agent("z"))
    proc = sws.doit("-v", check_rc=0)
    assert "queued    p:a2  (queued: max_parallel of pipeline p (2) reached)" in proc.stdout
    assert "queued    q:x1  (queued: pool llm (1) reached)" in proc.stdout
    assert "queued    q:z  (queued: workspace max_parallel (4) reached)" in proc.stdout
    wait_until(lambda: len(sws.launches()) >= 4, 60, "four agents to start")
    live = jobs_of(sws, "PENDING,CONFIGURING,RUNNING")
    running = {"p": ["a0", "a1"], "q": ["x0", "y"]}
    records = {(p, n): sws.status(p, n) for p, names in running.items() for n in names}
    assert sorted(name for name, _ in live.values()) == sorted(
        r["run_id"] for r in records.values())
    assert all(r["state"] == "running" and r["job_id"] in live for r in records.values())
    data = json.loads(sws.doit("status", "--json", check_rc=0).stdout)
    queued = sorted(a["task"] for a in data["agents"] if a["state"] == "queued")
    assert queued == ["p:a2", "p:a3", "q:x1", "q:z"]
    gate.touch()
    sws.doit("wait", timeout=120, check_rc=0)
    tasks = [f"p:a{i}" for i in range(4)] + ["q:x0", "q:x1", "q:y", "q:z"]
    assert all(sws.state_of(*t.split(":")) == "done" for t in tasks)
    assert sorted(e["agent"] for e in sws.launches()) == sorted(t[2:] for t in tasks)
    assert len(jobs_of(sws)) == 8                      # one job per agent, none more
    caps = {"workspace": (lambda t: True, 4), "pipeline p": (lambda t: t.startswith("p:"), 2),
            "pool llm": (lambda t: t in ("q:x0", "q:x1"), 1)}
    events = events_of(sws)
    launches = [e for e in events if e["event"] == "launch"]
    assert [e["task"] for e in launches if e["task"].startswith("p:")] == tasks[:4]
    for label, (member, size) in caps.items():     # the orchestrator's count, in file order
        flying, most = set(), 0
        for e in events:
            if member(e.get("task", "")) and e["event"] == "launch":
                flying.add(e["run_id"])
            elif e["event"] in ("finish", "fail", "cancel"):
                flying.discard(e.get("run_id"))
            most = max(most, len(flying))
        assert most == size, (label, most)
    started = {e["run_id"]: (e["agent"], e["t"]) for e in sws.launches()}
    ended = dict(line.split() for line in ends.read_text().splitlines())
    assert set(ended) == set(started)
    for label, (member, size) in caps.items():     # the jobs' own count
        spans = [(t, float(ended[run])) for run, (name, t) in started.items()
                 if member(f"{run.split('.')[0]}:{name}")]
        assert most_in_flight(spans) <= size, label


@pytest.mark.parametrize("scope", ["pipeline", "workspace"])
def test_budget_stops_slurm_launches_once_reached(sws, fake_bins, scope):
    """Point 4: the spend preset agents report from their jobs counts toward
    the pipeline's or the workspace's budget; once reached, no further job is
    submitted (queued, "budget reached"), and doit wait says so with 1."""
    budget = "budget_usd = 0.02\n"
    if scope == "workspace":
        workspace_keys(sws, budget)
    sws.write_pipeline("p", (budget if scope == "pipeline" else "") + "".join(
        preset_toml(f"a{i}", "claude", f"job {i}", after=[f"a{i - 1}"] if i else [])
        for i in range(4)))
    proc = sws.doit("wait", timeout=120, check_rc=1, env=fake_bins)
    assert len(cli_calls(sws)) == 2                    # $0.0123 each: the third would exceed
    assert {f"a{i}": sws.state_of("p", f"a{i}") for i in range(4)} == {
        "a0": "done", "a1": "done", "a2": None, "a3": None}
    assert f"budget reached: $0.02 of $0.02 ({scope})" in proc.stdout
    done = [sws.status("p", f"a{i}") for i in range(2)]
    assert all(r["executor"] == "slurm" and r["spent_usd"] == 0.0123 for r in done)
    assert sorted(jobs_of(sws)) == sorted(r["job_id"] for r in done)   # nothing else submitted
    label = "p" if scope == "pipeline" else "workspace"
    assert f"{label}: $0.0246 spent of $0.02 budget" in sws.doit("status", check_rc=0).stdout


def test_rate_limited_slurm_agent_rests_and_holds_its_preset(sws, fake_bins):
    """Point 4: a claude agent whose job's CLI hits a rate limit is rested
    (waiting, not counted as a retry) and the preset's other agent, ready
    and queued behind it (max_parallel = 1), is held. The limit resets in 10
    minutes, so nothing here races the reset; what happens at the reset is
    tested in-process on the engine's clock (the test after this one)."""
    env = {**fake_bins, "FAKE_CLI_RESET_IN": "600"}
    sws.write_pipeline("p", "max_parallel = 1\n"
                       + preset_toml("a", "claude", "RATELIMIT then work")
                       + preset_toml("b", "claude", "later"))
    proc = sws.doit("-v", check_rc=0, env=env)        # b is ready: only the cap holds it
    assert "queued    p:b  (queued: max_parallel of pipeline p (1) reached)" in proc.stdout
    limit = sws.state / "ratelimits" / "claude.json"
    wait_until(limit.exists, 60, "the rate limit to be recorded")
    data = json.loads(sws.doit("status", "--json", check_rc=0, env=env).stdout)
    states = {a["agent"]: (a["state"], a["reason"]) for a in data["agents"]}
    assert states["a"][0] == "waiting" and "not counted as a retry" in states["a"][1], states
    assert states["b"][0] == "queued" and states["b"][1].startswith("rate limited until"), states
    assert [c["agent"] for c in cli_calls(sws)] == ["a"]
    events = events_of(sws)
    assert any(e["event"] == "fail" and e["task"] == "p:a" and "retry_at" in e for e in events)
    assert [e["task"] for e in events if e["event"] == "launch"] == ["p:a"]
    a = sws.status("p", "a")
    assert a["executor"] == "slurm" and a["job_id"] and a["rate_limit_hits"] == 1
    assert a["retry_at"] == json.loads(limit.read_text())["until"]   # rests until the reset
    sws.doit("cancel", check_rc=0, env=env)

def test_a_rate_limit_holds_its_preset_until_the_reset_on_the_engines_clock(
        ws, fake_bins, monkeypatch):
    """The hold in-process: the real Engine with a fake clock, real wrapper
    processes (the fake claude CLI, limited for 10 minutes). Nothing launches
    a second before the reset; the rested agent launches at it, attempt 1,
    the preset's other agent still behind max_parallel."""
    from orchestrate.core.selection import select
    from orchestrate.runtime.engine import Engine
    from orchestrate.runtime.workspace import load_workspace
    for key, value in {**fake_bins, "FAKE_CLI_RESET_IN": "600"}.items():
        monkeypatch.setenv(key, value)
    ws.write_pipeline("p", "max_parallel = 1\n"
                      + preset_toml("a", "claude", "RATELIMIT then work")
                      + preset_toml("b", "claude", "later"))
    workspace = load_workspace(ws.root)
    now = [time.time()]
    engine = Engine(workspace, clock=lambda: now[0])
    agents = select(workspace, ["p"])

    def states(result) -> dict[str, tuple[str, str]]:
        return {d.agent.name: ("launch" if d.launch else d.state, d.reason)
                for d in result.decisions.values()}

    result = engine.run_pass(agents)
    assert states(result)["a"][0] == "launch" and states(result)["b"][0] == "queued"
    assert engine.launch_all(result) == ["p:a"]
    run_id = ws.status("p", "a")["run_id"]
    exit_record = ws.state / "runs" / f"{run_id}.exit"   # the shell creates it, then writes
    wait_until(lambda: exit_record.exists() and exit_record.read_text().strip(),
               what="a's CLI to end")
    result = engine.run_pass(agents)               # settles a: rate limited, rested
    until = json.loads((ws.state / "ratelimits" / "claude.json").read_text())["until"]
    assert until > now[0] + 500
    a, b = states(result)["a"], states(result)["b"]
    assert a[0] == "waiting" and "not counted as a retry" in a[1], a
    assert b[0] == "queued" and b[1].startswith("rate limited until"), b
    assert engine.next_wake == until
    now[0] = until - 1                             # a second before the reset: still held
    result = engine.run_pass(agents)
    assert [s for s, _ in states(result).values()] == ["waiting", "queued"]
    assert engine.launch_all(result) == []
    now[0] = until                                 # the reset: a relaunches, b waits its turn
    result = engine.run_pass(agents)
    assert states(result)["a"][0] == "launch" and states(result)["b"] == (
        "queued", "queued: max_parallel of pipeline p (1) reached")
    assert result.decisions["p:a"].attempt == 1    # a rate limit spends no retry
    assert engine.launch_all(result) == ["p:a"]
    assert [c["agent"] for c in cli_calls(ws)] == ["a"]
    wait_until(lambda: len(cli_calls(ws)) == 2, what="a's second call")
