"""Landing the work, with real git: a worktree's set-up, the commit of what an
agent left, `doit diff`, `doit retry --feedback`, and the merge queue."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import wait_until


def git(root, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=check, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(ws):
    (ws.root / "README.md").write_text("main checkout\n")
    ws.make_git_repo(ignore=".orchestrate/\n*.ignored\n")
    return ws


def tree(ws, agent: str, pipeline: str = "p"):
    return ws.state / "worktrees" / pipeline / agent


def pipeline(**agents: dict) -> str:
    """A pipeline file from agent tables (values as TOML via json)."""
    lines = []
    for name, keys in agents.items():
        lines.append(f"[agents.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


# -- set-up --------------------------------------------------------------------
def test_setup_runs_once_per_fresh_worktree_with_its_own_log(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "cat configured.txt > seen.txt", "isolation": "worktree",
        "setup": "echo set up >> configured.txt; echo \"root $ORCHESTRATE_ROOT\"",
        "outputs": ["seen.txt"]}))
    ws.doit("wait", check_rc=0)
    assert (tree(ws, "a") / "seen.txt").read_text() == "set up\n"
    log = ws.state / "logs" / "p" / "a.setup.log"
    assert log.read_text() == f"root {ws.root}\n"
    ws.doit("retry", "p:a", "--feedback", "README.md", check_rc=0)   # a second run there
    ws.wait_state("p", "a", "done")
    ws.wait_idle()
    assert ws.status("p", "a")["launches"] == 2
    assert (tree(ws, "a") / "configured.txt").read_text() == "set up\n"   # not again
    ws.doit("clean", "p:a", check_rc=0)                  # the worktree goes: a fresh one
    ws.doit("wait", check_rc=0)
    assert (tree(ws, "a") / "configured.txt").read_text() == "set up\n"
    assert ws.status("p", "a")["state"] == "done"


def test_a_failing_setup_fails_the_agent_with_its_last_line(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "touch ran.txt", "isolation": "worktree",
        "setup": ["sh", "-c", "echo installing; echo 'npm ERR! no package.json' >&2; exit 3"]}))
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"] == "setup failed: npm ERR! no package.json"
    assert not (tree(ws, "a") / "ran.txt").exists()      # the agent never ran


# -- the commit of what an agent left ----------------------------------------------
def test_what_an_agent_leaves_uncommitted_is_committed_on_its_branch(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "echo new > new.txt; echo changed >> README.md; echo x > junk.ignored",
        "isolation": "worktree"}))
    before = git(ws.root, "status", "--porcelain"), git(ws.root, "rev-parse", "HEAD")
    ws.doit("wait", check_rc=0)
    run_id = ws.status("p", "a")["run_id"]
    log = git(ws.root, "log", "--format=%s", "main..orchestrate/p/a")
    assert log.splitlines() == [f"orchestrate: p:a run {run_id}"]
    files = git(ws.root, "show", "--name-only", "--format=", "orchestrate/p/a").split()
    assert sorted(files) == ["README.md", "new.txt"]     # ignored files stay out
    assert git(tree(ws, "a"), "status", "--porcelain") == ""
    assert (tree(ws, "a") / "junk.ignored").exists()
    assert (git(ws.root, "status", "--porcelain"), git(ws.root, "rev-parse", "HEAD")) == before
    assert (ws.root / "README.md").read_text() == "main checkout\n"


# -- doit diff -------------------------------------------------------------------
def test_diff_shows_the_agents_changes_against_its_base(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(
        a={"command": "echo from a > a.txt", "isolation": "worktree"},
        b={"command": "echo from b > b.txt", "isolation": "worktree", "after": ["a"],
           "base": "a"},
        plain={"command": "true"}))
    assert ws.doit("diff", "p:a", check_rc=0).stdout == "p:a has no branch yet (it has not run)\n"
    ws.doit("wait", check_rc=0)
    (ws.root / "later.txt").write_text("the user goes on\n")   # HEAD moves on: not a's change
    git(ws.root, "add", "later.txt")
    git(ws.root, "commit", "-qm", "later")
    out = ws.doit("diff", "p:a", check_rc=0).stdout
    assert "+++ b/a.txt" in out and "+from a" in out and "later.txt" not in out
    out = ws.doit("diff", "p:b", check_rc=0).stdout    # against a's branch, its base
    assert "+++ b/b.txt" in out and "a.txt" not in out
    stat = ws.doit("diff", "p:a", "--stat", check_rc=0).stdout
    assert "a.txt | 1 +" in stat and "1 file changed" in stat and "+from a" not in stat
    proc = ws.doit("diff", "p:plain", check_rc=3)
    assert 'isolation = "worktree"' in proc.stderr and "Traceback" not in proc.stderr
    proc = ws.doit("diff", "p:nope", check_rc=3)
    assert "'p:nope' is not an agent" in proc.stderr


# -- a person's review goes back to the agent ------------------------------------------
def cli_calls(ws) -> list[dict]:
    path = ws.root / "cli-calls.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_retry_with_feedback_resumes_a_done_agents_session_in_its_worktree(repo, fake_bins):
    ws = repo
    ws.write_pipeline("p", pipeline(a={"agent": "claude", "prompt": "Write the parser.",
                                       "isolation": "worktree"}))
    ws.doit("wait", env=fake_bins, check_rc=0)
    session = ws.status("p", "a")["result"]["session_id"]
    (ws.root / "review.md").write_text("Rename parse() to parse_line().\n")
    out = ws.doit("retry", "p:a", "--feedback", "review.md", env=fake_bins, check_rc=0).stdout
    assert "retrying  p:a  (was done; with your feedback)" in out
    ws.doit("wait", env=fake_bins, check_rc=0)
    first, second = cli_calls(ws)
    assert second["argv"][-2:] == ["--resume", session]     # its own conversation
    assert second["prompt"].strip() == "Rename parse() to parse_line()."
    assert "Write the parser." not in second["prompt"]      # the session holds it
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["launches"] == 2


# -- the merge queue -------------------------------------------------------------
def events(ws, kind: str) -> list[dict]:
    lines = (ws.state / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event", e.get("kind")) == kind]


def user_view(ws) -> tuple[str, str, str]:
    """What the person sees of their own checkout: branch, HEAD, status."""
    return (git(ws.root, "branch", "--show-current"), git(ws.root, "rev-parse", "HEAD"),
            git(ws.root, "status", "--porcelain"))


def test_two_agents_on_different_files_are_both_merged(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(
        a={"command": "echo a > a.txt", "isolation": "worktree", "merge": True,
           "merge_check": "test -f a.txt && echo checked into $ORCHESTRATE_MERGE_INTO"},
        b={"command": "echo b > b.txt", "isolation": "worktree", "merge": True,
           "check": "test -f b.txt"},             # its check checks the merge too
        # downstream: starts once both landed, and sees them on the target branch
        c={"command": "git ls-tree --name-only orchestrate-merged/p > .orchestrate/seen.txt",
           "after": ["a", "b"]}))
    before = user_view(ws)
    out = ws.doit("wait", check_rc=0).stdout
    target = "orchestrate-merged/p"
    assert {"a.txt", "b.txt"} <= set((ws.state / "seen.txt").read_text().split())
    assert "to merge  p:a  (waiting to merge into orchestrate-merged/p)" in out
    assert f"merged    p:a  (into {target} at " in out
    files = git(ws.root, "ls-tree", "--name-only", target).split()
    assert {"a.txt", "b.txt", "README.md"} <= set(files)
    merged = {e["task"]: e for e in events(ws, "merged")}
    assert sorted(merged) == ["p:a", "p:b"]
    for name in ("a", "b"):
        record = ws.status("p", name)
        sha = merged[f"p:{name}"]["sha"]
        assert record["state"] == "done"
        assert record["reason"] == f"merged into {target} at {sha[:12]}"
        assert record["merge"]["state"] == "merged" and record["merge"]["sha"] == sha
        assert ws.signal("p", name).exists()
    table = ws.doit("status", "p:a", check_rc=0).stdout
    assert f"merged into {target} at {merged['p:a']['sha'][:12]}" in table
    shown = json.loads(ws.doit("status", "p:b", "--json", check_rc=0).stdout)["agents"]
    assert shown[-1]["merge"]["sha"] == merged["p:b"]["sha"]
    last = max(merged.values(), key=lambda e: e["ts"])
    assert last["sha"] == git(ws.root, "rev-parse", target).strip()
    assert user_view(ws) == before                       # the user's tree and HEAD untouched
    assert not (ws.root / "a.txt").exists()
    log = (ws.state / "logs" / "p" / "a.merge.log").read_text()
    assert "# merge check: test -f a.txt" in log and f"checked into {target}" in log
    log = (ws.state / "logs" / "p" / "b.merge.log").read_text()
    assert "# merge check: test -f b.txt" in log


RESOLVER = """
if [ -n "$ORCHESTRATE_FEEDBACK" ]; then
  cp "$ORCHESTRATE_FEEDBACK" "$ORCHESTRATE_ROOT/.orchestrate/told-$ORCHESTRATE_AGENT.md"
  git merge -q orchestrate-merged/p > /dev/null 2>&1
  printf 'line from a\\nline from b\\n' > shared.txt
else
  printf 'line from %s\\n' "$ORCHESTRATE_AGENT" > shared.txt
fi
"""


def test_a_conflict_goes_back_to_the_agent_which_resolves_it(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(
        a={"command": RESOLVER, "isolation": "worktree", "merge": True},
        b={"command": RESOLVER, "isolation": "worktree", "merge": True, "after": ["a"]}))
    before = user_view(ws)
    out = ws.doit("wait", check_rc=0).stdout
    target = "orchestrate-merged/p"
    assert f"conflict  p:b  (merging into {target}: shared.txt)" in out
    assert git(ws.root, "show", f"{target}:shared.txt") == "line from a\nline from b\n"
    conflict = events(ws, "merge_conflict")
    assert [(e["task"], e["files"], e["attempt"]) for e in conflict] == [
        ("p:b", ["shared.txt"], 1)]
    told = (ws.state / "told-b.md").read_text()
    assert "Merge 1 of 2 sent back: conflict" in told and "- shared.txt" in told
    assert f"git merge {target}" in told
    record = ws.status("p", "b")
    assert record["state"] == "done" and record["merge"]["attempts"] == 1
    assert record["reason"].startswith(f"merged into {target} at ")
    launches = [e["task"] for e in events(ws, "launch")]
    assert launches == ["p:a", "p:b", "p:b"]        # b relaunched once, a never again
    # b started only once a had landed: done means merged
    order = [(e["event"], e["task"]) for e in map(json.loads, (
        ws.state / "events.jsonl").read_text().splitlines()) if e.get("task")]
    assert order.index(("merged", "p:a")) < order.index(("launch", "p:b"))
    assert user_view(ws) == before
    ws.doit("report", "-o", "report.html", check_rc=0)       # the report shows the merges
    page = (ws.root / "report.html").read_text()
    merges = page[page.index('<section id="merges">'):]
    row = merges[merges.index('<tr data-task="p:b">'):]
    assert row.startswith(f'<tr data-task="p:b"><td>p:b</td><td>{target}</td><td>merged</td>')
    assert '<td class="num">1</td>' in row[:row.index("</tr>")]   # sent back once
    (ws.root / "report.html").unlink()


def test_a_failing_merge_check_is_sent_back_then_fixed(repo):
    ws = repo
    fixer = ('if [ -n "$ORCHESTRATE_FEEDBACK" ]; then echo ok > a.txt; '
             'cp "$ORCHESTRATE_FEEDBACK" "$ORCHESTRATE_ROOT/.orchestrate/told.md"; '
             'else echo broken > a.txt; fi')
    ws.write_pipeline("p", pipeline(a={
        "command": fixer, "isolation": "worktree", "merge": True, "merge_into": "feature",
        "merge_check": "echo checking a.txt; grep -qx ok a.txt || { echo 'a.txt is not ok'; exit 1; }"}))
    out = ws.doit("wait", check_rc=0).stdout
    assert ("rejected  p:a  (merged into feature, the merge check failed: a.txt is not ok)"
            in out)
    assert git(ws.root, "show", "feature:a.txt") == "ok\n"
    failed = events(ws, "merge_check_failed")
    assert [(e["task"], e["last_line"]) for e in failed] == [("p:a", "a.txt is not ok")]
    told = (ws.state / "told.md").read_text()
    assert "the merge check failed" in told and "a.txt is not ok" in told
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["reason"].startswith("merged into feature at ")
    assert len(events(ws, "launch")) == 2


def test_merge_retries_spent_fail_the_agent_saying_why(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "echo broken > a.txt", "isolation": "worktree", "merge": True,
        "merge_retries": 1, "merge_check": "echo still broken; exit 1"}))
    before = git(ws.root, "branch", "--list", "orchestrate-merged/p")
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"] == "merge check failed: still broken"
    assert len(events(ws, "launch")) == 2 and not ws.signal("p", "a").exists()
    assert git(ws.root, "branch", "--list", "orchestrate-merged/p") == before == ""


def test_a_merge_into_the_branch_checked_out_in_the_users_tree_is_refused(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "echo a > a.txt", "isolation": "worktree", "merge": True,
        "merge_into": "main"}))
    before = user_view(ws)
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"].startswith(
        f"merge_into main is checked out in your working tree ({ws.root})")
    assert user_view(ws) == before and not ws.signal("p", "a").exists()


def test_landing_keys_need_a_worktree_and_a_branch_name(ws):
    ws.write_pipeline("p", pipeline(
        a={"command": "true", "merge": True},
        b={"command": "true", "isolation": "worktree", "merge_into": "no good"},
        c={"command": "true", "isolation": "worktree", "merge": "yes"}))
    proc = ws.doit(check_rc=3)
    assert "Traceback" not in proc.stderr
    assert ("pipelines/p.toml: agent 'a': key 'merge': only applies with "
            'isolation = "worktree"') in proc.stderr
    assert ("pipelines/p.toml: agent 'b': key 'merge_into': 'no good' is not a valid git "
            "branch name") in proc.stderr
    assert "agent 'c': key 'merge': expected true or false, got 'yes'" in proc.stderr
    assert not list((ws.state / "status").rglob("*.json"))   # nothing launched


# -- crash safety ------------------------------------------------------------------
def merge_runner_pids(ws) -> list[int]:
    """The detached merge runners of this workspace (`runtime/merger.py`)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.startswith(b"orchestrate-merge:") for a in argv) and \
                    f"ORCHESTRATE_ROOT={ws.root}".encode() in env:
                found.append(int(entry.name))
    return found


def kill_every_orchestrator_process(ws) -> None:
    """kill -9 of every orchestrator process: callers, advancers, merge runners."""
    ws.kill_orchestrators()
    for pid in merge_runner_pids(ws):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def two_merging_agents(ws, name: str, check: str = "sleep 0.3; ls") -> None:
    ws.write_pipeline(name, pipeline(**{f"a{i}": {
        "command": f"echo {i} > a{i}.txt", "isolation": "worktree", "merge": True,
        "merge_check": check} for i in range(2)}))


def landed_exactly_once(ws, name: str, callers: int = 1) -> None:
    """`doit wait` (`callers` of them at once) brings every branch in, each
    merged once, the target moved only by whole merges (its first-parent
    history: one merge commit each)."""
    with ThreadPoolExecutor(callers) as pool:
        procs = list(pool.map(lambda _: ws.doit("wait", name, timeout=90), range(callers)))
    assert all(p.returncode == 0 for p in procs), [(p.stdout, p.stderr) for p in procs]
    target = f"orchestrate-merged/{name}"
    merges = git(ws.root, "log", "--first-parent", "--format=%s", target).splitlines()
    assert sorted(m for m in merges if m.startswith("orchestrate: merge ")) == [
        f"orchestrate: merge {name}:a{i} into {target}" for i in range(2)], merges
    assert {"a0.txt", "a1.txt"} <= set(git(ws.root, "ls-tree", "--name-only", target).split())
    merged = [e["task"] for e in events(ws, "merged") if e["task"].startswith(f"{name}:")]
    assert sorted(merged) == [f"{name}:a0", f"{name}:a1"], merged
    assert all(ws.state_of(name, f"a{i}") == "done" for i in range(2))
    assert git(ws.root, "status", "--porcelain", "--untracked-files=no") == ""


def test_a_crash_after_the_branch_moved_finishes_that_merge_once(repo):
    """Killed between moving merge_into and saving the agent's record: the
    next pass finds the branch at the merged commit and only finishes."""
    ws = repo
    two_merging_agents(ws, "moved", check="true")
    ws.doit("wait", "moved", env={"ORCHESTRATE_CRASH_AT": "merge-advanced:1"}, timeout=90)
    kill_every_orchestrator_process(ws)
    ws.wait_idle()
    target = "orchestrate-merged/moved"
    assert git(ws.root, "log", "--first-parent", "--format=%s", target).count(
        "orchestrate: merge ") == 1                  # moved by the crashed pass...
    assert events(ws, "merged") == []                # ...which never saved it
    landed_exactly_once(ws, "moved")


def test_a_crash_after_the_merge_is_recorded_redoes_it_once(repo):
    ws = repo
    two_merging_agents(ws, "recorded", check="true")
    ws.doit("wait", "recorded", env={"ORCHESTRATE_CRASH_AT": "merge-recorded:1"}, timeout=90)
    kill_every_orchestrator_process(ws)
    ws.wait_idle()
    assert json.loads((ws.state / "merges" / "current.json").read_text())["task"] in (
        "recorded:a0", "recorded:a1")                # recorded, never started
    assert not merge_runner_pids(ws)
    assert git(ws.root, "branch", "--list", "orchestrate-merged/recorded") == ""
    landed_exactly_once(ws, "recorded")


def test_kill_9_of_everything_during_a_merge_check_redoes_the_merge(repo):
    """Seeded moments while a merge runner works (its merge, its check):
    kill -9 of every orchestrator process, the runner included."""
    ws = repo
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "20261202")))
    for trial in range(2):
        name = f"kill{trial}"
        two_merging_agents(ws, name)
        proc = subprocess.Popen([sys.executable, "-m", "doit", name], cwd=ws.root,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: merge_runner_pids(ws), 60, "a merge to be under way")
        time.sleep(rng.uniform(0.0, 0.4))           # a seeded moment, not a synchronisation
        kill_every_orchestrator_process(ws)
        proc.wait(10)
        landed_exactly_once(ws, name, callers=3)   # two doit calls never merge twice
        wait_until(lambda: not merge_runner_pids(ws), 10, "merge runners to exit")


def test_a_target_moved_by_someone_else_during_the_merge_gets_the_merge_redone(repo):
    """Someone commits to merge_into while its merge is checked: the branch is
    not overwritten (compare-and-swap); the merge is redone on the new commit."""
    ws = repo
    git(ws.root, "branch", "feature")
    outside = ('git -C "$ORCHESTRATE_ROOT" update-ref refs/heads/feature "$(git -C '
               '"$ORCHESTRATE_ROOT" commit-tree -p feature -m "someone else" "feature^{tree}")"')
    check = (f'if [ ! -e "$ORCHESTRATE_ROOT/.orchestrate/moved" ]; then '
             f'touch "$ORCHESTRATE_ROOT/.orchestrate/moved"; {outside}; fi')
    ws.write_pipeline("p", pipeline(a={
        "command": "echo a > a.txt", "isolation": "worktree", "merge": True,
        "merge_into": "feature", "merge_check": check}))
    ws.doit("wait", check_rc=0)
    history = git(ws.root, "log", "--first-parent", "--format=%s", "feature").splitlines()
    assert history == ["orchestrate: merge p:a into feature", "someone else", "initial"]
    assert len(events(ws, "merged")) == 1


# -- the pure parts --------------------------------------------------------------
def test_a_merge_sent_back_relaunches_in_its_session_then_fails_for_good():
    from orchestrate.core import landing, merging, transitions as t
    from orchestrate.core.checks import carried
    from orchestrate.core.records import RunState, StatusRecord
    from orchestrate.core.spec import Agent
    agent = Agent("p", "a", command="true", isolation="worktree", merge=True, merge_retries=1)
    done = StatusRecord(state=RunState.RUNNING, pipeline="p", agent="a", task="p:a", attempt=1,
                        run_id="r1", result={"session_id": "s-1"})
    record = landing.queued(done, agent, '{"signal": 1}\n', "2026-12-02T00:00:00Z", 5.0)
    assert landing.merge_pending(record) and record.reason == \
        "waiting to merge into orchestrate-merged/p"
    conflict = {"outcome": "conflict", "files": ["a.py", "b.py"]}
    again, effects = merging.sent_back(record, agent, "orchestrate/p/a", conflict, 6.0)
    assert again.state == RunState.WAITING and again.retry_at == 6.0 and again.attempt == 0
    assert again.reason == "merge 1 of 1 sent back: merge conflict in a.py, b.py"
    assert again.resume_session == "s-1" and again.relaunch == "merge"
    kinds = [e.kind for e in effects if isinstance(e, t.Event)]
    assert kinds == ["merge_conflict"]
    feedback = next(e.text for e in effects if isinstance(e, t.WriteFeedback))
    assert "- a.py\n- b.py" in feedback and "git merge orchestrate-merged/p" in feedback
    kept = carried(again)            # the relaunch resumes the session, counts the merge
    assert kept["resume_session"] == "s-1" and kept["merge"] == {"attempts": 1}
    relaunched = landing.queued(StatusRecord(state=RunState.RUNNING, pipeline="p", agent="a",
                                             task="p:a", run_id="r2", **kept),
                                agent, "x\n", "2026-12-02T00:00:01Z", 7.0)
    failed, effects = merging.sent_back(relaunched, agent, "orchestrate/p/a", conflict, 8.0)
    assert failed.state == RunState.FAILED and failed.reason == "merge conflict in a.py, b.py"
    assert [e.kind for e in effects if isinstance(e, t.Event)] == ["merge_conflict", "fail"]
    landed, effects = merging.landed(relaunched, agent, "f" * 40, 9.0)
    assert landed.state == RunState.DONE and landed.reason == \
        f"merged into orchestrate-merged/p at {'f' * 12}"
    assert t.WriteSignal("x\n") in effects and "signal" not in landed.merge


NO_IDENTITY = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "user.useConfigOnly",
               "GIT_CONFIG_VALUE_0": "true"}   # git may not guess a name: it has none


def test_without_a_git_identity_orchestrate_commits_and_merges_as_itself(repo):
    ws = repo
    git(ws.root, "config", "--unset", "user.name")
    git(ws.root, "config", "--unset", "user.email")
    ws.write_pipeline("p", pipeline(a={"command": "echo a > a.txt", "isolation": "worktree",
                                       "merge": True}))
    ws.doit("wait", env=NO_IDENTITY, check_rc=0)
    # the merge and its second parent (`log -2` orders commits of the same second anyhow)
    authors = [git(ws.root, "log", "--format=%an <%ae> %s", "-1", ref)
               for ref in ("orchestrate-merged/p", "orchestrate-merged/p^2")]
    assert [a.strip() for a in authors] == [
        "orchestrate <orchestrate@localhost> orchestrate: merge p:a into orchestrate-merged/p",
        f"orchestrate <orchestrate@localhost> orchestrate: p:a run {ws.status('p', 'a')['run_id']}"]


def test_a_target_checked_out_in_another_worktree_is_refused(repo):
    ws = repo
    elsewhere = ws.root.parent / "elsewhere"
    git(ws.root, "worktree", "add", "-q", "-b", "release", str(elsewhere))
    ws.write_pipeline("p", pipeline(a={"command": "echo a > a.txt", "isolation": "worktree",
                                       "merge": True, "merge_into": "release"}))
    ws.doit("wait", check_rc=1)
    assert ws.status("p", "a")["reason"].startswith(
        f"merge_into release is checked out in the worktree {elsewhere}")
    assert git(elsewhere, "status", "--porcelain") == "" and not (elsewhere / "a.txt").exists()


def test_a_commit_that_fails_fails_the_run_with_gits_words(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={"command": "echo a > a.txt", "isolation": "worktree"}))
    ws.doit("wait", env={"GIT_AUTHOR_DATE": "not a date"}, check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"] == "auto-commit failed: fatal: invalid date format: not a date"
    log = (ws.root / record["log"]).read_text()
    assert "orchestrate: auto-commit failed (exit 128)" in log


def test_a_cancel_during_its_merge_check_stops_the_check_and_leaves_the_target(repo):
    ws = repo
    ws.write_pipeline("p", pipeline(a={
        "command": "echo a > a.txt", "isolation": "worktree", "merge": True,
        "merge_check": 'touch "$ORCHESTRATE_ROOT/.orchestrate/checking"; sleep 300'}))
    ws.doit(check_rc=0)
    wait_until(lambda: (ws.state / "checking").exists(), 60, "the merge check to run")
    ws.doit("cancel", "p:a", check_rc=0)
    assert ws.state_of("p", "a") == "cancelled"
    wait_until(lambda: not merge_runner_pids(ws) and not ws.agent_pids(), 30,
               "the runner and its check to be gone")
    assert git(ws.root, "branch", "--list", "orchestrate-merged/p") == ""
    ws.wait_idle()


def test_merges_go_one_at_a_time_in_the_order_agents_became_done(repo):
    """a is being merged (its check held); then c and then b become done: they
    land after a, c before b, whatever their declaration order."""
    ws = repo
    gate = 'while [ ! -e "$ORCHESTRATE_ROOT/.orchestrate/{0}" ]; do sleep 0.02; done; '
    check = ('touch "$ORCHESTRATE_ROOT/.orchestrate/checking-$ORCHESTRATE_AGENT"; '
             + gate.format("release"))
    ws.write_pipeline("p", pipeline(**{name: {
        "command": (gate.format(f"go-{name}") if name != "a" else "") + f"echo {name} > {name}.txt",
        "isolation": "worktree", "merge": True, "merge_check": check} for name in "abc"}))
    ws.doit(check_rc=0)
    wait_until(lambda: (ws.state / "checking-a").exists(), 60, "a's merge check")
    for name in "cb":
        (ws.state / f"go-{name}").touch()
        wait_until(lambda: (ws.status("p", name) or {}).get("merge", {}).get("state") == "queued",
                   60, f"{name} in the queue")
    assert not (ws.state / "checking-b").exists() and not (ws.state / "checking-c").exists()
    (ws.state / "release").touch()
    ws.doit("wait", check_rc=0)
    assert [e["task"] for e in events(ws, "merged")] == ["p:a", "p:c", "p:b"]


def test_a_git_failure_in_a_merge_fails_the_agent_without_a_merge_event():
    from orchestrate.core import landing, merging, transitions as t
    from orchestrate.core.records import RunState, StatusRecord
    from orchestrate.core.spec import Agent
    agent = Agent("p", "a", command="true", isolation="worktree", merge=True)
    record = landing.queued(StatusRecord(state=RunState.RUNNING, pipeline="p", agent="a",
                                         task="p:a", run_id="r1"), agent, "", "", 1.0)
    failed, effects = merging.sent_back(record, agent, "orchestrate/p/a",
                                        {"outcome": "error", "detail": "git merge: disk full"},
                                        2.0)
    assert failed.state == RunState.FAILED and failed.reason == "merge failed: git merge: disk full"
    assert [e.kind for e in effects if isinstance(e, t.Event)] == ["fail"]
