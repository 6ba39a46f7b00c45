"""best_of = N: candidates in parallel, one winner; real git worktrees, real
doit, fake agents (plain commands that behave as each test's plan says)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import wait_until
from orchestrate.core.spec import PipelineError
from orchestrate.runtime.workspace import load_workspace

# A candidate: reads its plan (by its label, the part after '@'), says so in
# the ledger, waits if told to (until `release` exists: a slow candidate),
# writes out.txt in its worktree and exits.
CANDIDATE = textwrap.dedent("""\
    import json, os, pathlib, sys, time
    root = pathlib.Path(os.environ["ORCHESTRATE_ROOT"])
    name = os.environ["ORCHESTRATE_AGENT"]
    plan = json.loads((root / "plan.json").read_text()).get(name.rpartition("@")[2], {})
    with open(root / "ledger.txt", "a") as ledger:
        ledger.write(f"{name} {os.getpid()}\\n")
    while plan.get("slow") and not (root / "release").exists():
        time.sleep(0.05)
    pathlib.Path("out.txt").write_text(plan.get("text", name) + "\\n")
    sys.exit(plan.get("exit", 0))
    """)
# The check: passes, fails, or fails the first time only (per worktree).
CHECK = textwrap.dedent("""\
    import json, os, pathlib, sys
    root = pathlib.Path(os.environ["ORCHESTRATE_ROOT"])
    label = pathlib.Path.cwd().name.rpartition("@")[2]
    verdict = json.loads((root / "plan.json").read_text()).get(label, {}).get("check", "pass")
    if verdict == "fail_once" and not pathlib.Path(".checked").exists():
        pathlib.Path(".checked").write_text("")
        print("tests failed: 1 failed"); sys.exit(1)
    if verdict == "fail":
        print("tests failed: 3 failed"); sys.exit(1)
    print("tests passed")
    """)
# The judge: keeps what it was given, talks a little, names `winner.txt`'s task last.
JUDGE = textwrap.dedent("""\
    import json, os, pathlib, shutil, time
    root = pathlib.Path(os.environ["ORCHESTRATE_ROOT"])
    shutil.copy(os.environ["ORCHESTRATE_CANDIDATES"], root / "judged.json")
    with open(root / "judge_ledger.txt", "a") as ledger:
        ledger.write("judged\\n")
    (root / "judge.pid").write_text(str(os.getpid()))
    while (root / "hold_judge").exists():   # a slow judge, until the test lets it answer
        time.sleep(0.05)
    print("comparing candidates...")
    print((root / "winner.txt").read_text().strip())
    """)


def git(ws, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ws.root), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(ws):
    (ws.root / "cand.py").write_text(CANDIDATE)
    (ws.root / "check.py").write_text(CHECK)
    (ws.root / "judge.py").write_text(JUDGE)
    (ws.root / ".gitignore").write_text(".orchestrate/\nledger.txt\n")
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.email", "t@example.invalid")
    git(ws, "config", "user.name", "test")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "initial")
    return ws


REPO = Path(__file__).resolve().parent.parent


def pipeline(ws, plan: dict, best_of: int = 3, judge: bool | str = False, extra: str = ""
             ) -> None:
    (ws.root / "plan.json").write_text(json.dumps(plan))
    py = json.dumps(sys.executable)
    script = judge if isinstance(judge, str) else "judge.py"
    ws.write_pipeline("p", f'''
[agents.a]
command = [{py}, "{ws.root}/cand.py"]
isolation = "worktree"
outputs = ["out.txt"]
best_of = {best_of}
check = [{py}, "{ws.root}/check.py"]
check_retries = 1
{f'judge = [{py}, "{script}"]' if judge else ""}
{extra}
[agents.b]
command = "cat \\"$ORCHESTRATE_UPSTREAM\\" > upstream.json"
after = ["a"]
outputs = ["upstream.json"]
''')


def launches(ws) -> dict[str, int]:
    counts: dict[str, int] = {}
    path = ws.root / "ledger.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        name = line.split()[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def branches(ws) -> set[str]:
    return set(git(ws, "branch", "--format=%(refname:short)").split())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_the_first_good_candidate_wins_and_the_slow_ones_are_cancelled(repo):
    ws = repo
    pipeline(ws, {"1": {"slow": True}, "2": {}, "3": {"slow": True}})
    ws.doit("wait", check_rc=0)
    row = ws.status("p", "a")
    assert row["state"] == "done"
    assert row["reason"] == "winner p:a@2 of 3, first to pass"
    assert row["winner"] == "p:a@2"
    for loser in ("a@1", "a@3"):
        record = ws.status("p", loser)
        assert record["state"] == "cancelled", record
        assert record["reason"] == "cancelled: p:a@2 won (first to pass)"
        assert record["candidate_of"] == "p:a"
        assert not (ws.state / "worktrees" / "p" / loser).exists()   # worktree removed ...
    assert {"orchestrate/p/a@1", "orchestrate/p/a@3", "orchestrate/p/a"} <= branches(ws)
    pids = [int(line.split()[1]) for line in (ws.root / "ledger.txt").read_text().splitlines()]
    assert not any(alive(pid) for pid in pids)                         # ... nothing left running
    assert not ws.agent_pids()
    tree = ws.state / "worktrees" / "p" / "a"                          # the winner's, now a's
    assert (tree / "out.txt").read_text() == "a@2\n"
    assert git(ws, "-C", str(tree), "branch", "--show-current").strip() == "orchestrate/p/a"
    assert not (ws.state / "worktrees" / "p" / "a@2").exists()
    upstream = json.loads((ws.root / "upstream.json").read_text())
    assert list(upstream) == ["a"]                                     # downstream sees only p:a
    assert upstream["a"]["outputs"] == [str(tree / "out.txt")]
    assert launches(ws) == {"a@1": 1, "a@2": 1, "a@3": 1}
    ws.doit("wait", check_rc=0)                                        # nothing runs again
    assert launches(ws) == {"a@1": 1, "a@2": 1, "a@3": 1}
    ws.doit("clean", "p:b", "p:a", "p:a@1", check_rc=0)             # a loser's branch goes
    assert "orchestrate/p/a@1" not in branches(ws) and "orchestrate/p/a@3" in branches(ws)
    assert not tree.exists() and not (ws.state / "bestof" / "p" / "a.json").exists()


def test_a_judge_picks_among_three_good_candidates_and_downstream_reads_the_winner(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("p:a@3\n")
    pipeline(ws, {"1": {"text": "one"}, "2": {"text": "two"}, "3": {"text": "three"}},
             judge=True)
    ws.doit("wait", check_rc=0)
    row = ws.status("p", "a")
    assert (row["state"], row["reason"]) == ("done", "winner p:a@3 of 3, chosen by judge")
    for name in ("a@1", "a@2", "a@3"):                  # every candidate ran to its end
        assert ws.status("p", name)["state"] == "done"
    judged = json.loads((ws.root / "judged.json").read_text())
    assert sorted(c["task"] for c in judged) == ["p:a@1", "p:a@2", "p:a@3"]
    first = judged[0]
    assert set(first) == {"task", "worktree", "branch", "diff_stat", "cost_usd", "tokens",
                          "result"}
    assert first["branch"] == "orchestrate/p/" + first["task"].split(":")[1]
    assert "out.txt" in first["diff_stat"]
    assert (ws.root / "judge_ledger.txt").read_text() == "judged\n"
    tree = ws.state / "worktrees" / "p" / "a"
    assert (tree / "out.txt").read_text() == "three\n"
    upstream = json.loads((ws.root / "upstream.json").read_text())
    assert open(upstream["a"]["outputs"][0]).read() == "three\n"
    assert not (ws.state / "worktrees" / "p" / "a@1").exists()
    assert "comparing candidates..." in ws.doit("logs", "p:a", check_rc=0).stdout


def test_no_good_candidate_fails_the_agent(repo):
    ws = repo
    pipeline(ws, {"1": {"check": "fail"}, "2": {"exit": 3}, "3": {"check": "fail"}})
    proc = ws.doit("wait", check_rc=1)
    row = ws.status("p", "a")
    assert (row["state"], row["reason"]) == ("failed", "no candidate passed")
    assert not ws.signal("p", "a").exists()
    assert ws.status("p", "b") is None                  # downstream never ran
    for name in ("a@1", "a@2", "a@3"):                   # no winner: every worktree kept
        assert (ws.state / "worktrees" / "p" / name).is_dir()
    assert "no candidate passed" in proc.stdout


def test_a_failing_check_sends_only_that_candidate_back(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("a@2\n")
    pipeline(ws, {"1": {}, "2": {"check": "fail_once", "slow": True}, "3": {}}, judge=True)
    ws.doit(check_rc=0)
    ws.wait_state("p", "a@1", "done")
    ws.wait_state("p", "a@3", "done")
    (ws.root / "release").touch()   # a@2 ends last, and is sent back: the others have ended
    ws.doit("wait", check_rc=0)
    assert launches(ws) == {"a@1": 1, "a@2": 2, "a@3": 1}
    events = [json.loads(line) for line in (ws.state / "events.jsonl").read_text().splitlines()]
    assert [e["task"] for e in events if e["event"] == "check_failed"] == ["p:a@2"]
    assert sorted(e["task"] for e in events if e["event"] == "check_passed") == \
        ["p:a@1", "p:a@2", "p:a@3"]
    assert ws.status("p", "a")["reason"] == "winner p:a@2 of 3, chosen by judge"
    assert (ws.root / "judge_ledger.txt").read_text() == "judged\n"   # once, when all had ended


def test_the_shipped_judge_prefers_the_smallest_diff_that_passes(repo):
    ws = repo
    pipeline(ws, {"1": {"text": "a\nb\nc\nd"}, "2": {"text": "small"}, "3": {"text": "a\nb"},
                  "4": {"text": "", "check": "fail"}},          # smaller still, but fails
             best_of=4, judge=str(REPO / "agents" / "judge_smallest_diff.py"))
    ws.doit("wait", check_rc=0)
    assert ws.status("p", "a")["reason"] == "winner p:a@2 of 4, chosen by judge"
    log = ws.doit("logs", "p:a", check_rc=0).stdout
    assert "p:a@1: 4 lines changed" in log and "p:a@4" not in log


def test_one_candidate_per_preset_and_every_candidates_cost_counts(repo, fake_bins):
    """The claude candidate costs $0.0123 (its fake CLI says so), the codex
    winner nothing: the budget is spent all the same, so b is held."""
    ws = repo
    ws.write_pipeline("p", """
budget_usd = 0.01
[agents.a]
best_of = ["claude", "codex", "gemini"]
isolation = "worktree"
prompt = "Make the tests pass."
judge = "echo p:a@codex"
[agents.b]
agent = "claude"
prompt = "Review."
after = ["a"]
""")
    proc = ws.doit("wait", check_rc=1, env=fake_bins)
    calls = [json.loads(line) for line in (ws.root / "cli-calls.jsonl").read_text().splitlines()]
    assert sorted((c["agent"], c["preset"]) for c in calls) == [
        ("a@claude", "claude"), ("a@codex", "codex"), ("a@gemini", "gemini")]
    assert all("Make the tests pass." in c["prompt"] for c in calls)
    assert ws.status("p", "a")["reason"] == "winner p:a@codex of 3, chosen by judge"
    assert ws.status("p", "a@claude")["spent_usd"] == 0.0123
    assert ws.state_of("p", "b") is None
    assert "budget reached: $0.01 of $0.01 (pipeline)" in proc.stdout


@pytest.mark.parametrize("judge, reason", [
    ("echo thinking; echo nobody", "judge named no good candidate: 'nobody' (expected one of"),
    ("echo tests are flaky; exit 2", "judge failed: exit 2: tests are flaky"),
    ("echo $$ > judge.pid; sleep 60", "judge failed: timed out: (no output)"),
])
def test_a_judge_that_fails_or_names_nobody_fails_the_agent(repo, judge, reason):
    """`timeout` limits the judge as it limits each candidate's attempt (the
    candidates need less than 6 s even on a loaded machine)."""
    ws = repo
    pipeline(ws, {}, best_of=2, extra=f'timeout = "6s"\njudge = {json.dumps(judge)}')
    ws.doit("wait", check_rc=1)
    row = ws.status("p", "a")
    assert row["state"] == "failed" and row["reason"].startswith(reason), row["reason"]
    if (ws.root / "judge.pid").exists():                 # stopped at the agent's timeout
        assert not alive(int((ws.root / "judge.pid").read_text()))


def test_the_judge_runs_detached_and_a_cancel_stops_it(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("p:a@1\n")
    (ws.root / "hold_judge").touch()
    pipeline(ws, {"1": {}, "2": {}, "3": {}}, judge=True)
    ws.doit(check_rc=0)
    judge_pid = ws.root / "judge.pid"
    wait_until(judge_pid.exists, what="the judge to start")
    assert ws.status("p", "a")["state"] == "waiting"
    table = ws.doit("status", check_rc=0).stdout      # returns while the judge runs
    assert "judging 3 candidates that passed" in table
    ws.doit("cancel", "p:a", check_rc=0)
    assert not alive(int(judge_pid.read_text()))         # stopped with the cancel
    assert ws.status("p", "a")["state"] == "cancelled"
    assert not ws.signal("p", "a").exists()


def test_killed_while_the_judge_runs_its_answer_is_used_once(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("p:a@3\n")
    (ws.root / "hold_judge").touch()
    pipeline(ws, {"1": {}, "2": {}, "3": {}}, judge=True)
    ws.doit(check_rc=0)
    wait_until((ws.root / "judge.pid").exists, what="the judge to start")
    ws.kill_orchestrators()
    wait_until(lambda: not ws.orchestrator_pids(), what="every orchestrator gone")
    assert alive(int((ws.root / "judge.pid").read_text()))   # the judge outlives them
    (ws.root / "hold_judge").unlink()
    ws.doit("wait", check_rc=0)
    assert ws.status("p", "a")["reason"] == "winner p:a@3 of 3, chosen by judge"
    assert (ws.root / "judge_ledger.txt").read_text() == "judged\n"
    assert launches(ws) == {"a@1": 1, "a@2": 1, "a@3": 1}


def test_retry_of_the_agent_asks_its_judge_again(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("nobody\n")
    pipeline(ws, {"1": {}, "2": {}}, best_of=2, judge=True)
    ws.doit("wait", check_rc=1)
    assert ws.status("p", "a")["reason"].startswith("judge named no good candidate: 'nobody'")
    (ws.root / "winner.txt").write_text("a@2\n")
    ws.doit("retry", "p:a", check_rc=0)
    ws.doit("wait", check_rc=0)
    assert ws.status("p", "a")["reason"] == "winner p:a@2 of 2, chosen by judge"
    assert (ws.root / "judge_ledger.txt").read_text() == "judged\njudged\n"
    assert launches(ws) == {"a@1": 1, "a@2": 1}          # the candidates stay as they were


def test_killed_between_the_judges_answer_and_the_winners_signal(repo):
    ws = repo
    (ws.root / "winner.txt").write_text("p:a@1\n")
    pipeline(ws, {"1": {}, "2": {}, "3": {}}, judge=True)
    ws.doit(check_rc=0, env={"ORCHESTRATE_CRASH_AT": "bestof-chosen:1"})
    choice = ws.state / "bestof" / "p" / "a.json"
    wait_until(choice.exists, what="the judge's answer to be recorded")
    wait_until(lambda: not ws.orchestrator_pids(), what="the killed advancer to be gone")
    assert json.loads(choice.read_text())["winner"] == "a@1"
    assert not ws.signal("p", "a").exists()            # killed before acting on it
    (ws.root / "winner.txt").write_text("p:a@2\n")       # a second judge would say otherwise
    ws.doit("wait", check_rc=0)
    assert ws.status("p", "a")["reason"] == "winner p:a@1 of 3, chosen by judge"
    assert (ws.root / "judge_ledger.txt").read_text() == "judged\n"   # asked once
    assert launches(ws) == {"a@1": 1, "a@2": 1, "a@3": 1}             # nothing relaunched
    assert (ws.state / "worktrees" / "p" / "a" / "out.txt").read_text() == "a@1\n"


def test_selection_names_the_agent_with_its_candidates_or_one_candidate(repo):
    ws = repo
    pipeline(ws, {"1": {}, "2": {"slow": True}, "3": {"slow": True}})
    ws.doit("wait", "p:a", check_rc=0)
    tasks = {r["task"] for r in json.loads(ws.doit("status", "p:a", "--json",
                                                   check_rc=0).stdout)["agents"]}
    assert tasks == {"p:a", "p:a@1", "p:a@2", "p:a@3"}
    one = json.loads(ws.doit("status", "p:a@2", "--json", check_rc=0).stdout)["agents"]
    assert [r["task"] for r in one] == ["p:a@2"]
    ws.doit("logs", "p:a@1", check_rc=0)
    path = ws.doit("report", check_rc=0).stdout.strip()
    html = open(path).read()
    for task in ("p:a@1", "p:a@2", "p:a@3"):
        assert f'data-task="{task}"' in html
    assert "winner p:a@1 of 3" in html
    table = html[html.index('<section id="agents"'):]
    assert table.index('data-task="p:a"') < table.index('data-task="p:a@1"')   # listed under it
    assert table.count("(winner)") == 1
    assert 'data-task="p:a@1"><td class="instance" style="padding-left:24px">p:a@1 <span ' \
        'class="winner">(winner)</span>' in table
    ws.doit("forget", "p:a", check_rc=0)                 # forgets the candidates too
    assert [ws.status("p", n) for n in ("a", "a@1", "a@2", "a@3")] == [None] * 4


def test_cancel_of_the_agent_reaches_its_candidates_and_retry_holds_a_new_contest(repo):
    ws = repo
    pipeline(ws, {"1": {"slow": True}, "2": {"slow": True}, "3": {"slow": True}})
    ws.doit(check_rc=0)
    wait_until(lambda: launches(ws) == {"a@1": 1, "a@2": 1, "a@3": 1}, what="3 candidates")
    ws.doit("cancel", "p:a", check_rc=0)
    assert [ws.state_of("p", n) for n in ("a", "a@1", "a@2", "a@3")] == ["cancelled"] * 4
    wait_until(lambda: not ws.agent_pids(), what="no candidate left running")
    (ws.root / "release").touch()
    ws.doit("retry", "p:a", check_rc=0)
    ws.doit("wait", check_rc=0)
    assert ws.status("p", "a")["state"] == "done"
    assert ws.status("p", "a")["reason"].endswith("of 3, first to pass")
    assert launches(ws) == {"a@1": 2, "a@2": 2, "a@3": 2}


@pytest.mark.parametrize("table, expected", [
    ('best_of = 3', "key 'best_of': needs isolation = \"worktree\""),
    ('best_of = 1\nisolation = "worktree"', "key 'best_of': expected an integer from 2 to 16"),
    ('best_of = 17\nisolation = "worktree"', "got 17"),
    ('best_of = ["claude", "cursor"]\nisolation = "worktree"', "unknown preset 'cursor'"),
    ('judge = "python judge.py"', "key 'judge': only applies with best_of"),
    ('best_of = ["claude", "claude"]\nisolation = "worktree"', "lists a preset twice"),
    ('best_of = ["claude", "codex"]\nisolation = "worktree"',
     "a list of presets needs prompt or prompt_file instead of command"),
])
def test_bad_best_of_is_one_clear_line(ws, table, expected):
    ws.write_pipeline("p", f'[agents.a]\ncommand = "true"\n{table}\n')
    with pytest.raises(PipelineError) as caught:
        load_workspace(ws.root)
    assert any(line.startswith("pipelines/p.toml: agent 'a': ") and expected in line
               for line in caught.value.problems), caught.value.problems
    proc = ws.doit(check_rc=3)
    assert expected in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_a_preset_list_makes_one_candidate_per_preset(ws):
    ws.write_pipeline("p", '[agents.a]\nbest_of = ["claude", "codex", "gemini"]\n'
                           'isolation = "worktree"\nprompt = "fix it"\nmodel = "opus"\n')
    agents = {a.name: a for a in load_workspace(ws.root).pipeline("p").agents}
    assert [agents[f"a@{p}"].preset for p in ("claude", "codex", "gemini")] == \
        ["claude", "codex", "gemini"]
    assert agents["a@claude"].model == "opus" and agents["a@codex"].model is None
    assert agents["a"].candidates == ("a@claude", "a@codex", "a@gemini")
    assert all(agents[f"a@{p}"].prompt == "fix it" for p in ("claude", "codex", "gemini"))


# -- the pure parts -------------------------------------------------------------
def _record(name: str, state: str, ended_at: str = "", run_id: str = "r"):
    from orchestrate.core.records import RunState, StatusRecord
    return StatusRecord(state=RunState(state), pipeline="p", agent=name, ended_at=ended_at,
                        run_id=run_id)


def _contest(ws, judge: bool):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\nisolation = "worktree"\nbest_of = 3\n'
                      + ('judge = "true"\n' if judge else ""))
    return load_workspace(ws.root).pipeline("p").agent("a")


def test_the_outcome_of_a_contest_from_its_candidates_records(ws):
    from orchestrate.core.bestof import outcome
    first = _contest(ws, judge=False)
    running = {"a@1": _record("a@1", "running"), "a@2": _record("a@2", "done", "T2"),
               "a@3": _record("a@3", "done", "T1")}
    assert outcome(first, running).winner == "a@3"             # the first to pass, at once
    judged = _contest(ws, judge=True)
    assert outcome(judged, running) is None                    # a judge waits for every end
    retrying = {**running, "a@1": _record("a@1", "waiting")}   # a check's relaunch to come
    assert outcome(judged, retrying) is None
    ended = {**running, "a@1": _record("a@1", "failed")}
    assert outcome(judged, ended).good == ("a@3", "a@2") and outcome(judged, ended).needs_judge
    one = {**ended, "a@2": _record("a@2", "failed")}
    assert (outcome(judged, one).winner, outcome(judged, one).how) == ("a@3",
                                                                       "the only one to pass")
    none = {n: _record(n, "failed") for n in running}
    assert outcome(judged, none).reason == "no candidate passed"


def test_a_judge_may_name_the_winner_by_task_name_or_label(ws):
    from orchestrate.core.bestof import named_candidate
    agent = _contest(ws, judge=True)
    good = ("a@1", "a@3")
    assert [named_candidate(agent, text, good) for text in
            ("p:a@3", "a@3", " 3 ", "p:a@2", "a@2", "q:a@3", "")] == \
        ["a@3", "a@3", "a@3", None, None, None, None]


def test_a_loser_is_no_dead_end_for_hooks(ws):
    from orchestrate.core.scheduler import Decision
    from orchestrate.runtime.hooks import standing
    agent = _contest(ws, judge=False)
    assert standing(Decision(agent, "cancelled", "cancelled: p:a@1 won", lost=True), {}, 0) \
        == "done"
    assert standing(Decision(agent, "cancelled", "cancelled by user"), {}, 0) == "stuck"


def _events(ws, kind: str) -> list[dict]:
    lines = (ws.state / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == kind]


def test_with_merge_the_winner_lands_and_downstream_starts_after_the_merge(repo):
    ws = repo
    pipeline(ws, {"1": {"slow": True}, "2": {"text": "two"}}, best_of=2,
             extra='merge = true\nmerge_into = "landed"')
    ws.doit("wait", check_rc=0)
    row = ws.status("p", "a")
    merged = _events(ws, "merged")
    assert [e["task"] for e in merged] == ["p:a"]                  # the winner's branch, once
    sha = merged[0]["sha"]
    assert row["state"] == "done" and row["winner"] == "p:a@2"
    assert row["reason"] == f"merged into landed at {sha[:12]}"
    assert row["run_id"] == ws.status("p", "a@2")["run_id"]        # its merge: that attempt's
    assert git(ws, "rev-parse", "landed").strip() == sha
    assert git(ws, "show", "landed:out.txt") == "two\n"            # the winner's change landed
    assert not any(e["task"].startswith("p:a@") for e in merged)   # no candidate merged itself
    started_b = [e for e in _events(ws, "launch") if e["task"] == "p:b"]
    assert len(started_b) == 1 and started_b[0]["ts"] >= merged[0]["ts"]   # after the merge
    assert git(ws, "rev-parse", "HEAD").strip() == git(ws, "rev-parse", "main").strip()


def test_a_winner_whose_merge_conflicts_fails_the_agent_and_downstream_waits(repo):
    ws = repo
    git(ws, "checkout", "-qb", "landed")
    (ws.root / "out.txt").write_text("already here\n")
    git(ws, "add", "out.txt")
    git(ws, "commit", "-qm", "other work")
    git(ws, "checkout", "-q", "main")
    before = git(ws, "rev-parse", "landed").strip()
    pipeline(ws, {"1": {"slow": True}, "2": {"text": "two"}}, best_of=2,
             extra='merge = true\nmerge_into = "landed"\nmerge_retries = 1')
    ws.doit("wait", check_rc=1)
    row = ws.status("p", "a")
    assert row["state"] == "failed", row
    assert row["reason"] == ("merge conflict in out.txt (a best_of winner is not sent back; "
                             "its branch orchestrate/p/a is kept)")
    assert git(ws, "rev-parse", "landed").strip() == before       # the target as it was
    assert ws.status("p", "b") is None or ws.status("p", "b")["state"] != "done"
    assert not _events(ws, "merged")
    assert launches(ws) == {"a@1": 1, "a@2": 1}                    # nothing relaunched
