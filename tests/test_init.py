"""`python -m orchestrate init` on a user's project, and the example pipeline."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import Workspace

USER_PYPROJECT = '''# my project, my formatting
[project]
name    = "mine"      # aligned on purpose
version = "1.0"

[tool.black]
line-length = 100
'''


def init(directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrate", "init", str(directory)],
                          capture_output=True, text=True, check=True)


def test_init_appends_config_keeps_user_bytes_and_is_idempotent(tmp_path):
    (tmp_path / "pyproject.toml").write_text(USER_PYPROJECT)
    (tmp_path / "dodo.py").write_text("# the user's own dodo\n")
    init(tmp_path)
    text = (tmp_path / "pyproject.toml").read_text()
    assert text.startswith(USER_PYPROJECT)
    assert '[tool.doit.plugins.command]\nrun = "orchestrate.commands:Run"' in text
    assert (tmp_path / "dodo.py").read_text() == "# the user's own dodo\n"
    assert (tmp_path / "pipelines" / "example.toml").exists()
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = init(tmp_path)
    assert "kept" in second.stdout
    assert snapshot == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}


def test_init_on_invalid_pyproject_changes_nothing(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "init", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "invalid TOML" in proc.stderr
    assert (tmp_path / "pyproject.toml").read_text() == "[project\n"


def test_example_pipeline_of_a_new_workspace_runs_to_the_end(tmp_path):
    init(tmp_path / "new")
    ws = Workspace((tmp_path / "new").resolve())
    try:
        ws.doit("wait", check_rc=0)
        report = (ws.root / "reports" / "report.txt").read_text()
        assert report.startswith("files: ")
        assert ws.doit("list", check_rc=0).stdout.startswith("example")
    finally:
        ws.kill_everything()


def test_this_repositorys_survey_pipeline_runs(tmp_path):
    """The quick start's pipeline, run on a copy of this repository."""
    repo = Path(__file__).resolve().parent.parent
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("orchestrate", "agents", "pipelines", "prompts"):
        shutil.copytree(repo / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dodo.py", "pyproject.toml"):
        shutil.copy(repo / name, copy / name)
    ws = Workspace(copy)
    try:
        ws.doit("wait", "survey", check_rc=0)
        summary = (copy / "reports" / "summary.md").read_text()
        assert summary.startswith("# Code survey") and "Longest functions" in summary
        events = (copy / ".orchestrate" / "events.jsonl").read_text()
        assert '"event": "check_passed"' in events and "all three surveys present" in events
    finally:
        ws.kill_everything()


def test_the_fan_out_example_plans_describes_each_module_and_gathers(tmp_path):
    """pipelines/modules.toml: planner -> one worker per module -> gather, offline;
    then one changed module re-runs its own worker and the gather only."""
    repo = Path(__file__).resolve().parent.parent
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("orchestrate", "agents", "pipelines", "prompts"):
        shutil.copytree(repo / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dodo.py", "pyproject.toml"):
        shutil.copy(repo / name, copy / name)
    ws = Workspace(copy)
    try:
        ws.doit("wait", "modules", check_rc=0)
        modules = sorted("-".join(p.relative_to(copy / "orchestrate").with_suffix("").parts)
                         for p in (copy / "orchestrate").rglob("*.py")
                         if p.name != "__init__.py")
        report = (copy / "reports" / "modules.md").read_text()
        assert report.startswith(f"# Modules ({len(modules)})")
        assert "## orchestrate/core/foreach.py" in report
        status = json.loads(ws.doit("status", "modules:describe.*", "--json").stdout)
        assert sorted(a["agent"] for a in status["agents"] if a["agent"].startswith(
            "describe.")) == sorted(f"describe.{m}" for m in modules)
        engine_md = copy / "reports" / "modules" / "runtime-engine.md"
        before = {p.name: p.stat().st_mtime_ns for p in (copy / "reports/modules").iterdir()}
        with open(copy / "orchestrate" / "runtime" / "engine.py", "a") as handle:
            handle.write("\n\ndef added():\n    pass\n")
        ws.doit("wait", "modules", check_rc=0)
        after = {p.name: p.stat().st_mtime_ns for p in (copy / "reports/modules").iterdir()}
        assert [n for n in after if after[n] != before[n]] == ["runtime-engine.md"]
        assert engine_md.read_text() != ""
    finally:
        ws.kill_everything()


def test_the_claude_example_runs_through_the_preset(tmp_path, fake_bins):
    """pipelines/review.toml, with the fake claude standing in for the real one."""
    repo = Path(__file__).resolve().parent.parent
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("pipelines", "prompts"):
        shutil.copytree(repo / name, copy / name)
    for name in ("dodo.py", "pyproject.toml"):
        shutil.copy(repo / name, copy / name)
    ws = Workspace(copy)
    try:
        ws.doit("wait", "review", check_rc=0, env=fake_bins)
        record = ws.status("review", "review")
        assert record["result"]["final_message"].startswith("echo: You are reviewing")
    finally:
        ws.kill_everything()


def mcp_entry(directory: Path) -> dict:
    return {"type": "stdio", "command": sys.executable,
            "args": ["-m", "orchestrate", "mcp", str(directory.resolve())]}


def test_init_registers_the_mcp_server_in_a_new_mcp_json(tmp_path):
    proc = init(tmp_path / "new")
    assert ".mcp.json" in proc.stdout
    config = json.loads((tmp_path / "new" / ".mcp.json").read_text())
    assert config == {"mcpServers": {"orchestrate": mcp_entry(tmp_path / "new")}}
    assert Path(config["mcpServers"]["orchestrate"]["command"]).is_absolute()


def test_init_merges_into_the_users_mcp_json_and_keeps_their_servers(tmp_path):
    users = {"mcpServers": {"github": {"command": "npx", "args": ["-y", "gh-mcp"]}},
             "note": "mine"}
    (tmp_path / ".mcp.json").write_text(json.dumps(users))
    init(tmp_path)
    config = json.loads((tmp_path / ".mcp.json").read_text())
    assert config["note"] == "mine"
    assert config["mcpServers"] == {**users["mcpServers"], "orchestrate": mcp_entry(tmp_path)}
    before = (tmp_path / ".mcp.json").read_bytes()
    assert "kept" in init(tmp_path).stdout
    assert (tmp_path / ".mcp.json").read_bytes() == before


def test_init_keeps_the_users_own_orchestrate_entry(tmp_path):
    text = '{"mcpServers": {"orchestrate": {"command": "/opt/py", "args": ["x"]}}}'
    (tmp_path / ".mcp.json").write_text(text)
    init(tmp_path)
    assert (tmp_path / ".mcp.json").read_text() == text


def test_init_on_invalid_mcp_json_changes_nothing(tmp_path):
    for text in ("{not json", '["a list"]', '{"mcpServers": []}'):
        (tmp_path / ".mcp.json").write_text(text)
        proc = subprocess.run([sys.executable, "-m", "orchestrate", "init", str(tmp_path)],
                              capture_output=True, text=True)
        assert proc.returncode == 3, proc
        assert ".mcp.json" in proc.stderr and "nothing changed" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert [p.name for p in tmp_path.iterdir()] == [".mcp.json"]
        assert (tmp_path / ".mcp.json").read_text() == text


def test_init_on_invalid_pyproject_creates_no_file_at_all(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project\n")
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "init", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "nothing changed" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]


def test_init_adds_dep_file_to_an_existing_doit_table(tmp_path):
    text = '[project]\nname = "mine"\n\n[tool.doit]\nverbosity = 2   # mine\n'
    (tmp_path / "pyproject.toml").write_text(text)
    init(tmp_path)
    import tomllib
    updated = (tmp_path / "pyproject.toml").read_text()
    assert "verbosity = 2   # mine" in updated
    config = tomllib.loads(updated)["tool"]["doit"]
    assert config["dep_file"] == ".orchestrate/doit.sqlite" and config["backend"] == "sqlite3"
    assert config["plugins"]["command"]["run"] == "orchestrate.commands:Run"
    ws = Workspace(tmp_path.resolve())
    try:
        ws.doit("wait", check_rc=0)
        assert not list(tmp_path.glob(".doit.db*"))     # doit's database is in .orchestrate/
        assert (tmp_path / ".orchestrate" / "doit.sqlite").exists()
    finally:
        ws.kill_everything()


def test_init_refuses_a_doit_table_it_cannot_extend_and_changes_nothing(tmp_path):
    text = '[tool]\ndoit = { verbosity = 2 }\n'
    (tmp_path / "pyproject.toml").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "init", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and "dep_file" in proc.stderr and "nothing changed" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyproject.toml"]
    assert (tmp_path / "pyproject.toml").read_text() == text


def test_example_pipeline_does_not_count_git_files(tmp_path):
    init(tmp_path / "new")
    root = (tmp_path / "new").resolve()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    ws = Workspace(root)
    try:
        ws.doit("wait", check_rc=0)
        listed = (root / "reports" / "files.txt").read_text()
        assert "./.git/" not in listed and "./dodo.py" in listed
    finally:
        ws.kill_everything()


def test_init_registers_commands_added_since_an_older_init(tmp_path):
    old = ('[tool.doit]\ndep_file = ".orchestrate/doit.sqlite"\nbackend = "sqlite3"\n\n'
           '[tool.doit.plugins.command]\nrun = "orchestrate.commands:Run"\n'
           'forget = "orchestrate.commands:Forget"\ninfo = "orchestrate.commands:Info"\n')
    (tmp_path / "pyproject.toml").write_text(old)
    init(tmp_path)
    import tomllib
    text = (tmp_path / "pyproject.toml").read_text()
    commands = tomllib.loads(text)["tool"]["doit"]["plugins"]["command"]
    assert commands["ignore"] == "orchestrate.doit_commands:Ignore"
    assert commands["help"] == "orchestrate.doit_commands:Help"
    assert tomllib.loads(text)["tool"]["doit"]["commands"]["list"]["sort"] == "definition"
    snapshot = text
    init(tmp_path)
    assert (tmp_path / "pyproject.toml").read_text() == snapshot


def test_init_says_created_for_a_new_gitignore_and_updated_for_the_users(tmp_path):
    fresh, theirs = tmp_path / "fresh", tmp_path / "theirs"
    theirs.mkdir()
    (theirs / ".gitignore").write_text("*.pyc\n")
    assert f"created  {fresh / '.gitignore'} (ignore .orchestrate/)" in init(fresh).stdout
    assert f"updated  {theirs / '.gitignore'} (ignore .orchestrate/)" in init(theirs).stdout
    assert (theirs / ".gitignore").read_text() == "*.pyc\n.orchestrate/\n"


def test_init_registers_orchestrates_clean_as_this_repository_does(tmp_path):
    """init and this repository's pyproject.toml keep the same plugin commands."""
    import tomllib
    from orchestrate.cli.scaffold import PLUGINS
    init(tmp_path)
    theirs = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    ours = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert theirs["tool"]["doit"]["plugins"]["command"]["clean"] == \
        "orchestrate.doit_commands:Clean"
    assert ours["tool"]["doit"]["plugins"]["command"] == PLUGINS
