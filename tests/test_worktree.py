"""isolation = "worktree", with real git."""
import json
import subprocess

import pytest


def git(ws, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ws.root), *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def repo(ws):
    git(ws, "init", "-q", "-b", "main")
    git(ws, "config", "user.email", "t@example.invalid")
    git(ws, "config", "user.name", "test")
    (ws.root / "README.md").write_text("main checkout\n")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "initial")
    return ws


def writer(text: str) -> str:
    return (f"printf {text} > shared.txt && git add shared.txt && "
            f"(git diff --cached --quiet || git commit -qm {text}) && "
            f"test \"$PWD\" = \"$ORCHESTRATE_WORKDIR\"")


PIPELINE = f'''
[agents.a]
command = {json.dumps(writer('a'))}
isolation = "worktree"
outputs = ["shared.txt"]
[agents.b]
command = {json.dumps(writer('b'))}
isolation = "worktree"
outputs = ["shared.txt"]
[agents.c]
command = "cat shared.txt > seen.txt; cat \\"$ORCHESTRATE_UPSTREAM\\" > upstream.json"
isolation = "worktree"
after = ["a"]
base = "a"
outputs = ["seen.txt"]
'''


def test_parallel_agents_get_their_own_worktree_and_branch(repo):
    ws = repo
    garbage = ws.state / "worktrees" / "p" / "a"
    garbage.mkdir(parents=True)
    (garbage / "junk").write_text("left by a crash")       # not a worktree: replaced
    ws.write_pipeline("p", PIPELINE)
    ws.doit("wait", check_rc=0)
    trees = ws.state / "worktrees" / "p"
    assert (trees / "a" / "shared.txt").read_text() == "a"
    assert (trees / "b" / "shared.txt").read_text() == "b"
    assert not (trees / "a" / "junk").exists()
    assert not (ws.root / "shared.txt").exists()           # main checkout untouched
    assert (trees / "c" / "seen.txt").read_text() == "a"    # c started from a's branch
    branches = git(ws, "branch", "--format=%(refname:short)").split()
    assert {"orchestrate/p/a", "orchestrate/p/b", "orchestrate/p/c", "main"} <= set(branches)
    upstream = json.loads((trees / "c" / "upstream.json").read_text())
    assert upstream["a"]["outputs"] == [str(trees / "a" / "shared.txt")]
    assert "shared.txt" in json.loads(ws.signal("p", "a").read_text())["outputs"]


def test_an_existing_worktree_is_reused_and_clean_removes_it(repo):
    ws = repo
    ws.write_pipeline("p", PIPELINE)
    ws.doit("wait", "p:a", check_rc=0)
    tree = ws.state / "worktrees" / "p" / "a"
    (tree / "notes.txt").write_text("kept across runs")
    ws.doit("forget", "p:a", check_rc=0)
    ws.doit("wait", "p:a", check_rc=0)          # re-run: same worktree, same branch
    assert (tree / "notes.txt").read_text() == "kept across runs"
    ws.doit("clean", "p:a", check_rc=0)
    assert not tree.exists()
    assert "orchestrate/p/a" not in git(ws, "branch", "--format=%(refname:short)").split()
    assert str(tree) not in git(ws, "worktree", "list")


def test_worktree_outside_a_git_repository_fails_clearly(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\nisolation = "worktree"\n')
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert 'could not start: isolation = "worktree" needs a git repository' in record["reason"]
    assert not (ws.state / "worktrees" / "p" / "a").exists()


def test_an_output_deleted_from_its_worktree_makes_that_agent_stale(repo):
    ws = repo
    ws.write_pipeline("p", '''
[agents.a]
command = "printf a > out.txt"
isolation = "worktree"
outputs = ["out.txt"]
''')
    ws.doit("wait", check_rc=0)
    # the output lives in the agent's worktree: none in the main checkout is fine
    assert not (ws.root / "out.txt").exists()
    assert "status     : up-to-date" in ws.doit("info", "p:a", check_rc=0).stdout
    (ws.state / "worktrees" / "p" / "a" / "out.txt").unlink()
    assert "stale: output missing: out.txt" in ws.doit("info", "p:a", check_rc=1).stdout
    ws.doit("wait", check_rc=0)
    assert (ws.state / "worktrees" / "p" / "a" / "out.txt").read_text() == "a"
    assert ws.state_of("p", "a") == "done"
