"""Landing the work, with real git: a worktree's set-up, the commit of what an
agent left, `doit diff`, `doit retry --feedback`, and the merge queue."""
import json
import subprocess

import pytest


def git(root, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=check, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(ws):
    git(ws.root, "init", "-q", "-b", "main")
    git(ws.root, "config", "user.email", "t@example.invalid")
    git(ws.root, "config", "user.name", "test")
    (ws.root / "README.md").write_text("main checkout\n")
    (ws.root / ".gitignore").write_text(".orchestrate/\n*.ignored\n")
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "initial")
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
        "setup": "echo installing; echo 'npm ERR! no package.json' >&2; exit 3"}))
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
           "merge_check": "test -f a.txt && echo checked $(ls *.txt | tr '\\n' ' ')"},
        b={"command": "echo b > b.txt", "isolation": "worktree", "merge": True,
           "merge_check": "test -f b.txt"}))
    before = user_view(ws)
    ws.doit("wait", check_rc=0)
    target = "orchestrate-merged/p"
    files = git(ws.root, "ls-tree", "--name-only", target).split()
    assert {"a.txt", "b.txt", "README.md"} <= set(files)
    for name in ("a", "b"):
        record = ws.status("p", name)
        assert record["state"] == "done"
        sha = git(ws.root, "rev-parse", target)[:12]
        assert record["reason"].startswith(f"merged into {target} at ")
        assert ws.signal("p", name).exists()
    merged = events(ws, "merged")
    assert sorted(e["task"] for e in merged) == ["p:a", "p:b"]
    assert merged[-1]["sha"] == git(ws.root, "rev-parse", target).strip()
    assert user_view(ws) == before                       # the user's tree and HEAD untouched
    assert not (ws.root / "a.txt").exists()
    log = (ws.state / "logs" / "p" / "a.merge.log").read_text()
    assert "# merge check: test -f a.txt" in log
