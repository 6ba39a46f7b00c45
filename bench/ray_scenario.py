"""The ray scenario: N agents as Ray jobs on tests/ray_cluster.py's one-node head.

Figures: submissions per second (one POST /api/jobs/ per agent, in the
advancer), the advancer's CPU per live job (one GET /api/jobs/ per poll for
all of them), the time from a job's end (its exit record) to its
downstream's submission, and how long `doit cancel` of all N takes.

Each agent asks for 1 CPU of the head's 8, so Ray runs 8 at a time and holds
the rest PENDING: a running Ray job costs a supervisor actor (a Python
worker, ~100 MB), and 200 at once do not fit a 2-core test machine that six
other people share. PENDING jobs are as much work for orchestrate (submitted,
listed, stopped) as running ones.
"""
from __future__ import annotations

import importlib.util
import json
import time
from datetime import datetime
from pathlib import Path

from .harness import advancer_pids, cpu_of, doit, events, pipeline, workspace


def _ray_cluster():
    path = Path(__file__).resolve().parent.parent / "tests" / "ray_cluster.py"
    spec = importlib.util.spec_from_file_location("ray_cluster", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _launches(root: Path) -> dict[str, float]:
    path = root / ".orchestrate" / "events.jsonl"
    return {e["task"]: _stamp(e["ts"]) for e in (events(root) if path.exists() else [])
            if e["event"] == "launch"}


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def _ray_table(root: Path, address: str, poll: str) -> None:
    with open(root / "pyproject.toml", "a") as handle:
        handle.write(f'\n[tool.orchestrate]\nexecutor = "ray"\n[tool.orchestrate.ray]\n'
                     f'address = "{address}"\npoll = "{poll}"\n')


def _raw_submit_rate(head, count: int) -> float:
    """POST /api/jobs/ alone, one after the other: the ceiling of any
    submitter. The jobs ask for a resource no node has, so Ray keeps them
    PENDING and starts nothing (the head is stopped after the run)."""
    import urllib.request
    started = time.perf_counter()
    for i in range(count):
        body = json.dumps({"entrypoint": "true", "submission_id": f"raw{i}",
                           "entrypoint_resources": {"nowhere": 1}}).encode()
        request = urllib.request.Request(f"{head.address}/api/jobs/", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=60).read()
    return count / (time.perf_counter() - started)


def _many(head, n: int, seconds: float) -> tuple[float, float, float]:
    """(submitted per second, advancer CPU % of a core per live job, cancel seconds)."""
    text = "".join(f'[agents.a{i}]\ncommand = "sleep 600"\nresources = {{ cpus = 1 }}\n'
                   for i in range(n))
    with workspace({"bench": text}) as root:
        _ray_table(root, head.address, "2s")
        doit(root)   # returns before its advancer has submitted them all
        stamps = sorted(_wait(lambda: len(s := _launches(root)) >= n and s, 600,
                              "every submission").values())
        rate = (len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-6)
        pid = _wait(lambda: advancer_pids(root), 30, "the advancer")[0]
        time.sleep(1.0)
        before = cpu_of(pid)
        time.sleep(seconds)
        cpu = (cpu_of(pid) - before) / seconds * 100 / n
        began = time.perf_counter()
        doit(root, "cancel")
        return rate, cpu, time.perf_counter() - began


def _end_to_downstream(head, links: int, poll: str) -> list[float]:
    """Seconds from a chain link's exit record to its successor's submission."""
    agents = {"c0": {"command": "true"}}
    for i in range(1, links):
        agents[f"c{i}"] = {"command": "true", "after": [f"c{i - 1}"]}
    with workspace({"bench": pipeline(agents)}) as root:
        _ray_table(root, head.address, poll)
        doit(root, "wait", "--timeout", "600")
        records = {name: json.loads((root / ".orchestrate" / "status" / "bench" /
                                     f"{name}.json").read_text()) for name in agents}
        launched = _launches(root)
        return [launched[f"bench:c{i}"] - _stamp(records[f"c{i - 1}"]["ended_at"])
                for i in range(1, links)]


def ray_scenario(sizes) -> list:
    from .scenarios import SMOKE, Row
    if sizes == SMOKE:   # a head's start and its jobs' start-up take minutes on 2 busy cores
        print("ray scenario: not part of --smoke (run: python -m bench --only ray)", flush=True)
        return []
    module = _ray_cluster()
    n = sizes.throughput_agents
    rates, cpus, cancels, gaps, fast_gaps, raw = [], [], [], [], [], []
    for run in range(sizes.runs):
        # a fresh head each run: the jobs a cancel left PENDING are started
        # (and end at once) by Ray later, which would load the next run
        head = module.RayHead(cpus=8)
        try:
            head.start()
        except module.HeadUnavailable as err:
            print(f"ray scenario skipped: {err}", flush=True)
            return []
        try:
            if run == 0:
                links = max(3, sizes.chain_length // 10)
                gaps += _end_to_downstream(head, links, "2s")
                fast_gaps += _end_to_downstream(head, links, "200ms")
            rate, cpu, cancel = _many(head, n, max(2.0, sizes.idle_seconds))
            raw.append(_raw_submit_rate(head, 50))
            rates.append(rate)
            cpus.append(cpu)
            cancels.append(cancel)
        finally:
            head.stop()
    name = f"ray: {n} agents on the one-node test head"
    return [Row(name, "submitted per second", rates, ">= 10", "/s",
                note=f"one POST /api/jobs/ each; 8 run, the rest PENDING in Ray; a raw POST "
                     f"loop: {min(raw):.1f}-{max(raw):.1f}/s",
                extra={"raw_post_per_s": raw}),
            Row(name, "advancer CPU % of a core per live job", cpus, "<= 0.01", "%",
                note="poll 2s: one GET /api/jobs/ for all jobs"),
            Row(name, "doit cancel of all, seconds", cancels, "<= 20", "s",
                note="a stop POST per job, 8 threads; PENDING ones claimed"),
            Row("ray: a chain of jobs", "job end to downstream submission, poll 2s", gaps,
                "<= 3", "s", note=f"median of {len(gaps)} links; settled at Ray's next poll"),
            Row("ray: a chain of jobs", "job end to downstream submission, poll 200ms",
                fast_gaps, "<= 1.5", "s", note=f"median of {len(fast_gaps)} links")]
