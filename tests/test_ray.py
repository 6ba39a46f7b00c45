"""The ray executor against a real one-node Ray head (tests/ray_cluster.py):
each agent one Ray job (submission id = run id) running the same wrapper;
one job listing per poll for liveness; Ray's job stop to stop; re-attach by
submission id after kill -9; an unreachable address fails cleanly. And, in
process, the engine asking a polled `ray` executor every `[tool.orchestrate.ray] poll`."""
import json
import os
import socket
import urllib.error
import urllib.request

import pytest

from conftest import wait_until
from orchestrate.runtime.executors import processes


@pytest.fixture(scope="session")
def ray_head():
    """One real head for the session (per xdist worker). Under CI=true a head
    that cannot start fails the tests; elsewhere they skip with the install."""
    from ray_cluster import INSTALL, HeadUnavailable, RayHead
    head = RayHead(cpus=4)
    try:
        head.start()
    except HeadUnavailable as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Ray test head did not start: {err}; install: {INSTALL}")
        pytest.skip(f"no Ray test head ({err}); install: {INSTALL}")
    try:
        yield head
    finally:
        head.stop()


def api(head, method: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{head.address}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def job(head, job_id: str) -> dict:
    return api(head, "GET", f"/api/jobs/{job_id}")


def jobs_of(head, ws) -> dict[str, dict]:
    """Ray's own view: submission id -> job, for every job of this workspace
    (the head is shared by the session's tests)."""
    return {j["submission_id"]: j for j in api(head, "GET", "/api/jobs/")
            if (j.get("metadata") or {}).get("orchestrate_root") == str(ws.root)}


def supervisor_resources(head) -> dict[str, dict]:
    """Submission id -> the resources Ray reserved for its job (its
    supervisor actor's, from Ray's state API)."""
    answer = api(head, "GET", "/api/v0/actors?detail=1&limit=10000")
    prefix = "_ray_internal_job_actor_"
    return {a["name"][len(prefix):]: a.get("required_resources") or {}
            for a in answer["data"]["result"]["result"] if a.get("name", "").startswith(prefix)}


def live(job_info: dict) -> bool:
    return job_info["status"] in ("PENDING", "RUNNING")


@pytest.fixture
def rws(ws, ray_head):
    """A workspace whose agents run on the test head, asked every 200 ms;
    every job of it is stopped (and seen ended) at teardown."""
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write(f'\n[tool.orchestrate]\nexecutor = "ray"\n'
                     f'[tool.orchestrate.ray]\naddress = "{ray_head.address}"\npoll = "200ms"\n')
    ws.head = ray_head
    yield ws
    running = [j for j in jobs_of(ray_head, ws).values() if live(j)]
    for info in running:
        api(ray_head, "POST", f"/api/jobs/{info['submission_id']}/stop", {})
    wait_until(lambda: not any(live(j) for j in jobs_of(ray_head, ws).values()), 60,
               "the workspace's jobs to end")


def no_process_of(run_id: str) -> bool:
    return not processes.run_processes(run_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_agents_are_ray_jobs_with_the_same_environment_and_resources(rws):
    """Each agent is one Ray job whose submission id is its run id, running
    the same wrapper (env, cwd, log, exit record, signal); its resources are
    the job's entrypoint resources; status shows the job."""
    env_a = rws.root / "env-a.json"
    (rws.root / "sub").mkdir()
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd("--env-to", str(env_a), "--write", "out/a.txt=A"))}
outputs = ["out/a.txt"]
resources = {{ cpus = 2, mem = "64M" }}
[agents.b]
command = {json.dumps(rws.agent_cmd("--copy-upstream", "a=../out/b.txt"))}
after = ["a"]
cwd = "sub"
outputs = ["out/b.txt"]
''')
    rws.doit("p:b", check_rc=0)
    rws.doit("wait", "p:b", timeout=120, check_rc=0)
    a, b = rws.status("p", "a"), rws.status("p", "b")
    assert a["state"] == b["state"] == "done"
    assert a["executor"] == "ray" and a["job_id"] == a["run_id"] and a["pid"] is None
    seen = json.loads(env_a.read_text())
    assert seen["ORCHESTRATE_RUN_ID"] == a["run_id"]
    assert (rws.root / "out/b.txt").read_text() == "A"
    ray_a, ray_b = job(rws.head, a["job_id"]), job(rws.head, b["job_id"])
    assert ray_a["status"] == ray_b["status"] == "SUCCEEDED"
    needs = supervisor_resources(rws.head)   # what Ray reserved for each job
    assert needs[a["job_id"]] == {"CPU": 2.0, "memory": float(64 << 20)}
    assert needs[b["job_id"]] == {}
    assert sorted(jobs_of(rws.head, rws)) == sorted([a["run_id"], b["run_id"]])
    assert rws.signal("p", "a").exists() and rws.signal("p", "b").exists()
    status = rws.doit("status", check_rc=0).stdout
    assert f"ray job {a['job_id']}" in status
    assert not list((rws.state / "runs").glob("*.ray.json"))   # the environment left no file


def test_the_agent_runs_inside_the_ray_job(rws):
    """The agent is Ray's job's process: it sees Ray's job config naming its
    own submission id, and works in its cwd."""
    out = rws.root / "env.txt"
    rws.write_pipeline("p", f'''
[agents.a]
command = "echo $ORCHESTRATE_AGENT $(pwd) > {out}; echo \\"$RAY_JOB_CONFIG_JSON_ENV_VAR\\" >> {out}"
cwd = "sub"
''')
    (rws.root / "sub").mkdir()
    rws.doit("p:a", check_rc=0)
    rws.doit("wait", "p:a", timeout=120, check_rc=0)
    first, config = out.read_text().split("\n", 1)
    assert first.split() == ["a", str(rws.root / "sub")]
    assert json.loads(config)["metadata"]["job_submission_id"] == rws.status("p", "a")["run_id"]


def test_a_job_waiting_for_resources_stays_pending_and_a_cancel_means_it_never_runs(rws):
    """Ray, not orchestrate, holds a job its resources do not fit: with the
    head's 4 CPUs taken, a 1-CPU agent stays PENDING (never started); a
    cancel settles it at once, and when Ray starts it later the agent does
    not run."""
    gate = rws.root / "gate"
    rws.write_pipeline("p", f'''
[agents.hog]
command = {json.dumps(rws.agent_cmd("--gate", str(gate)))}
resources = {{ cpus = 4 }}
[agents.small]
command = {json.dumps(rws.agent_cmd())}
resources = {{ cpus = 1 }}
''')
    rws.doit("p:hog", check_rc=0)
    wait_until(lambda: rws.launches("hog"), 60, "the hog to start")
    rws.doit("p:small", check_rc=0)
    small = wait_until(lambda: (rws.status("p", "small") or {}).get("job_id"), 60, "a job id")
    wait_until(lambda: "waiting for resources" in job(rws.head, small)["message"], 60,
               "Ray to say the job waits for CPUs")
    assert job(rws.head, small)["status"] == "PENDING"
    assert rws.state_of("p", "small") == "running"
    rws.doit("cancel", "p:small", timeout=60, check_rc=0)
    assert rws.state_of("p", "small") == "cancelled"
    gate.touch()   # the CPUs are free: Ray starts the stopped job, which runs nothing
    rws.wait_state("p", "hog", "done", timeout=60)
    wait_until(lambda: not live(job(rws.head, small)), 60, "Ray to end the stopped job")
    assert [e["agent"] for e in rws.launches()] == ["hog"]


def test_cancel_and_timeout_stop_the_job_and_leave_no_process(rws):
    """doit cancel and timeout stop the job through Ray (TERM, then KILL
    after kill_grace for an agent that ignores TERM); no process is left.
    (A timeout counts from the submission: 20 s leaves a busy machine's head
    time to start the job, so that the stop finds the agent running.)"""
    rws.write_pipeline("p", f'''
[defaults]
kill_grace = "1s"
[agents.stubborn]
command = {json.dumps(rws.agent_cmd("--sleep", "120", "--ignore-term"))}
[agents.slow]
command = {json.dumps(rws.agent_cmd("--sleep", "120", "--ignore-term"))}
timeout = "20s"
''')
    rws.doit("p:stubborn", "p:slow", check_rc=0)
    wait_until(lambda: len(rws.launches()) == 2, 60, "both agents to start")
    rws.doit("cancel", "p:stubborn", timeout=60, check_rc=0)
    stubborn = rws.status("p", "stubborn")
    assert stubborn["state"] == "cancelled" and stubborn["reason"] == "cancelled by user"
    assert no_process_of(stubborn["run_id"])
    stopped = job(rws.head, stubborn["job_id"])
    assert stopped["status"] == "STOPPED"   # and Ray waited the agent's kill_grace, not its 3 s
    assert stopped["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "1"
    rws.wait_state("p", "slow", "failed", timeout=60)
    slow = rws.status("p", "slow")
    assert slow["reason"].startswith("timeout after 20s")
    wait_until(lambda: no_process_of(slow["run_id"]), 30, "the timed-out job's processes to end")
    assert job(rws.head, slow["job_id"])["status"] == "STOPPED"


def test_a_job_stopped_from_outside_fails_its_agent_with_rays_word(rws):
    """Someone stops the job through Ray's own API: the agent fails with
    Ray's status and message, noticed by the advancer's poll."""
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd("--sleep", "120"))}
''')
    rws.doit("p:a", check_rc=0)
    wait_until(lambda: rws.launches("a"), 60, "the agent to start")
    job_id = rws.status("p", "a")["job_id"]
    api(rws.head, "POST", f"/api/jobs/{job_id}/stop", {})
    rws.wait_state("p", "a", "failed", timeout=60)
    reason = rws.status("p", "a")["reason"]
    assert reason == "exit 143 (SIGTERM): ray: STOPPED Job was intentionally stopped.", reason
    wait_until(lambda: no_process_of(job_id), 30, "the job's processes to end")


def test_a_job_that_fails_before_the_wrapper_fails_with_rays_message(rws):
    """The entrypoint dies before it can become the wrapper (its working
    folder is a file): no exit record, and Ray's FAILED message is the reason."""
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd())}
cwd = "notadir"
''')
    (rws.root / "notadir").write_text("")
    rws.doit("p:a", check_rc=0)
    rws.doit("wait", "p:a", timeout=120, check_rc=1)
    reason = rws.status("p", "a")["reason"]
    assert reason.startswith("ray: FAILED Job entrypoint command failed with exit code 1: "
                             "orchestrate: cannot start p:a: [Errno 20] Not a directory"), reason
    assert rws.launches() == []


def test_kill_9_of_every_orchestrator_then_reattach_by_submission_id(rws):
    """Jobs go on without any orchestrator; the next doit re-attaches by
    submission id and submits nothing again."""
    gate = rws.root / "gate"
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd("--gate", str(gate)))}
[agents.b]
command = {json.dumps(rws.agent_cmd("--gate", str(gate)))}
[agents.c]
command = {json.dumps(rws.agent_cmd())}
after = ["a", "b"]
''')
    rws.doit("p:c", check_rc=0)
    wait_until(lambda: len(rws.launches()) == 2, 60, "a and b to start")
    jobs = {n: rws.status("p", n)["job_id"] for n in "ab"}
    rws.kill_orchestrators()
    wait_until(lambda: not rws.orchestrator_pids(), 10, "orchestrators to be gone")
    assert all(job(rws.head, j)["status"] == "RUNNING" for j in jobs.values())
    status = rws.doit("status", check_rc=0).stdout        # re-attaches, submits nothing
    assert all(f"ray job {j}" in status for j in jobs.values())
    assert len(rws.launches()) == 2
    gate.touch()
    rws.doit("wait", "p:c", timeout=120, check_rc=0)
    assert sorted(e["agent"] for e in rws.launches()) == ["a", "b", "c"]
    assert {n: rws.status("p", n)["job_id"] for n in "ab"} == jobs
    assert sorted(jobs_of(rws.head, rws)) == sorted(rws.status("p", n)["run_id"] for n in "abc")


@pytest.mark.parametrize("point,relaunched", [("launch-spawned:1", False),
                                              ("launch-recorded:1", True)])
def test_crash_between_recorded_and_rays_answer(rws, point, relaunched):
    """Killed after Ray accepted the job but before its id was saved, the job
    is found by its submission id (re-attached, not resubmitted); killed
    before the submission, the run's claim is taken and it is relaunched."""
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd("--sleep", "1"))}
''')
    rws.doit("p:a", env={"ORCHESTRATE_CRASH_AT": point})
    first = rws.status("p", "a")
    assert first["state"] == "launching" and first["job_id"] is None
    rws.doit("wait", "p:a", timeout=120, check_rc=0)
    final = rws.status("p", "a")
    assert final["state"] == "done" and len(rws.launches("a")) == 1
    if relaunched:
        assert final["run_id"] != first["run_id"]
        assert list(jobs_of(rws.head, rws)) == [final["run_id"]]
    else:
        assert final["run_id"] == first["run_id"] == final["job_id"]
        assert list(jobs_of(rws.head, rws)) == [first["run_id"]]


def test_a_second_submission_of_a_run_is_refused_by_ray_and_never_runs_twice(rws):
    """Submitting a run id Ray already holds returns that job: Ray keeps one."""
    from orchestrate.runtime.executors.ray import RayExecutor
    from orchestrate.runtime.launcher import Launcher
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.workspace import load_workspace
    rws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(rws.agent_cmd())}
''')
    workspace = load_workspace(rws.root)
    layout = Layout(rws.root)
    layout.make_dirs(["p"])
    executor = RayExecutor(layout, workspace.ray, Launcher(layout))
    agent = workspace.agents_by_task["p:a"]
    log = layout.log("p", "a")
    handles = [executor.submit(agent, "p.a.1.twice", 1, log, layout.no_upstream_file)
               for _ in range(2)]
    assert handles[0] == handles[1] and handles[0].job_id == "p.a.1.twice"
    assert list(jobs_of(rws.head, rws)) == ["p.a.1.twice"]
    wait_until(lambda: job(rws.head, "p.a.1.twice")["status"] == "SUCCEEDED", 60, "the job")
    assert len(rws.launches("a")) == 1


def test_an_unreachable_address_fails_the_agent_cleanly_and_retries_apply(ws):
    """No head at the address: the agent fails with the reason, retried as
    any failed submission; no traceback, no job file left behind."""
    port = free_port()
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write(f'\n[tool.orchestrate]\nexecutor = "ray"\n'
                     f'[tool.orchestrate.ray]\naddress = "http://127.0.0.1:{port}"\n')
    ws.write_pipeline("p", f'''
[agents.a]
command = {json.dumps(ws.agent_cmd())}
retries = 1
retry_backoff = "100ms"
''')
    proc = ws.doit("p:a")
    assert "Traceback" not in proc.stdout + proc.stderr
    ws.doit("wait", "p:a", timeout=60, check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed" and record["attempt"] == 2, record
    assert record["reason"].startswith(
        f"could not start: ray: cannot reach the Jobs API at http://127.0.0.1:{port} ("), \
        record["reason"]
    assert ws.launches() == [] and not list((ws.state / "runs").glob("*.ray.json"))


def test_ray_address_defaults_to_the_environment(ws):
    """No address key: RAY_ADDRESS is the Jobs API's address."""
    port = free_port()
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write('\n[tool.orchestrate]\nexecutor = "ray"\n')
    ws.write_pipeline("p", f'[agents.a]\ncommand = {json.dumps(ws.agent_cmd())}\n')
    ws.doit("wait", "p:a", env={"RAY_ADDRESS": f"http://127.0.0.1:{port}"}, check_rc=1)
    assert f"cannot reach the Jobs API at http://127.0.0.1:{port} (" in ws.status("p", "a")["reason"]
    ws.doit("retry", "p:a", env={"RAY_ADDRESS": "auto"})   # Ray's own clients' word: not an URL
    ws.doit("wait", "p:a", env={"RAY_ADDRESS": "auto"}, check_rc=1)
    assert ws.status("p", "a")["reason"] == (
        "could not start: ray: the Jobs API's address must be http(s)://HOST:PORT, got 'auto' "
        "(set [tool.orchestrate.ray] address or RAY_ADDRESS)")


@pytest.mark.parametrize("table,message", [
    ('address = "127.0.0.1:8265"',
     "key 'tool.orchestrate.ray.address': expected the Jobs API's URL like "
     "\"http://127.0.0.1:8265\", got '127.0.0.1:8265'"),
    ('poll = "0s"', "key 'tool.orchestrate.ray.poll': expected a duration > 0"),
    ('adress = "http://x:1"',
     "key 'tool.orchestrate.ray.adress': unknown key (known keys: address, poll)"),
])
def test_a_bad_ray_table_is_a_pipeline_error(ws, table, message):
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write(f'\n[tool.orchestrate.ray]\n{table}\n')
    ws.write_pipeline("p", f'[agents.a]\ncommand = {json.dumps(ws.agent_cmd())}\nexecutor = "ray"\n')
    proc = ws.doit("p:a", check_rc=3)
    assert f"pyproject.toml: {message}\n" in proc.stderr and "Traceback" not in proc.stderr
    assert ws.status("p", "a") is None


def test_entrypoint_resources_reasons_and_environment():
    from orchestrate.core.settings import ray_entrypoint_resources
    from orchestrate.runtime.executors.ray import ended_reason, observation
    from orchestrate.runtime.executors.ray_entry import job_environment
    assert job_environment({"PATH": "/ours", "RAY_ADDRESS": "http://head:8265", "A": "1"},
                           {"PATH": "/rays", "RAY_ADDRESS": "10.0.0.5:6379",
                            "CUDA_VISIBLE_DEVICES": "1", "HOME": "/ray"}) == \
        {"PATH": "/ours", "RAY_ADDRESS": "10.0.0.5:6379", "A": "1", "CUDA_VISIBLE_DEVICES": "1"}
    gone = observation("p.a.1.x", {})
    assert not gone.alive and not gone.known
    assert gone.ended_as == "ray: job p.a.1.x is no longer known to Ray"
    assert observation("p.a.1.x", {"p.a.1.x": ("PENDING", "")}).alive
    assert ray_entrypoint_resources((("cpus", 2), ("gpus", 1), ("mem", "4G"), ("time", 60.0))) \
        == {"entrypoint_num_cpus": 2, "entrypoint_num_gpus": 1, "entrypoint_memory": 4 << 30}
    assert ray_entrypoint_resources((("mem", "100"),)) == {"entrypoint_memory": 100 << 20}
    failed = ("Job entrypoint command failed with exit code 127, last available logs "
              "(truncated to 20,000 chars):\nRunning entrypoint for job x: y\n"
              "/bin/sh: 1: /nope/python: not found\n")
    assert ended_reason("FAILED", failed) == ("ray: FAILED Job entrypoint command failed with "
                                              "exit code 127: /bin/sh: 1: /nope/python: not found")


# -- in process: the engine and a polled `ray` executor -------------------------
def test_the_engine_asks_a_ray_executor_every_ray_poll(tmp_path):
    """The `ray` executor is polled at its own table's `poll` (not Slurm's),
    and a run gone without an exit record ends with Ray's word."""
    import subprocess
    import sys
    from orchestrate.core.selection import select
    from orchestrate.runtime.engine import Engine
    from orchestrate.runtime.executors.fake import FakeClock, FakeExecutor
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.workspace import load_workspace
    root = tmp_path / "ws"
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    (root / "pipelines" / "example.toml").unlink()
    (root / "pipelines" / "p.toml").write_text('executor = "ray"\n[agents.a]\ncommand = "true"\n')
    with open(root / "pyproject.toml", "a") as handle:
        handle.write('\n[tool.orchestrate.slurm]\npoll = "60s"\n[tool.orchestrate.ray]\npoll = "5s"\n')
    workspace = load_workspace(root)
    layout = Layout(root)
    clock = FakeClock()
    ray = FakeExecutor(layout, clock, name="ray", polled=True)
    local = FakeExecutor(layout, clock)
    engine = Engine(workspace, liveness_interval=1.0, clock=clock, sleep=clock.sleep,
                    executors={"local": local, "ray": ray})
    agents = select(workspace, ["p:a"])
    engine.launch_all(engine.run_pass(agents))
    began = clock()
    engine.run_pass(agents)
    assert engine.next_wake == began + 5.0     # ray's poll, not slurm's 60 s
    clock.now = began + 5.0
    run_id = engine.records(agents)["p:a"].run_id
    ray.finish(run_id, None, ended_as="ray: FAILED Job entrypoint command failed")
    engine.run_pass(agents)
    assert ray.asked == [began + 5.0]
    record = engine.records(agents)["p:a"]
    assert record.state == "failed" and "ray: FAILED" in record.reason, record.reason


def test_a_pass_without_ray_agents_imports_neither_ray_nor_urllib(ws):
    """The Ray executor costs a workspace without Ray agents nothing: a pass
    that launches and watches a local agent imports no HTTP client (and
    never `ray`: the Jobs API is spoken with urllib, imported on first use)."""
    import subprocess
    import sys
    ws.write_pipeline("p", f'[agents.a]\ncommand = {json.dumps(ws.agent_cmd())}\n')
    script = """
import sys
from pathlib import Path
from orchestrate.core.selection import select
from orchestrate.runtime.engine import Engine
from orchestrate.runtime.workspace import load_workspace
workspace = load_workspace(Path(sys.argv[1]))
engine = Engine(workspace)
agents = select(workspace, ["p:a"])
engine.launch_all(engine.run_pass(agents))
engine.run_pass(agents)
print(sorted(m for m in ("ray", "urllib.request", "http.client") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script, str(ws.root)], capture_output=True,
                         text=True, cwd=ws.root)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
