"""`doit plan` (issue 25): what `doit` would launch and why, with a forecast
from the history, against the budgets; it launches and changes nothing.
Real doit, the fake CLIs (tests/fake_cli.py: claude costs $0.0123 a run)."""
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from orchestrate.core.forecast import PastRun, forecast, past_runs, spend_by_preset
from test_presets import calls, preset_toml

CLAUDE_RUN = 0.0123    # what the fake claude reports


def tree(root) -> dict:
    """Every file and folder under `root`, with its bytes' digest and mtime."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            digest = "" if name in dirs else hashlib.sha256(open(path, "rb").read()).hexdigest()
            found[os.path.relpath(path, root)] = (digest, stat.st_mtime_ns, stat.st_size)
    return found


def ran_once(ws, fake_bins, budget: float | None = None):
    """a (claude) ran once; then its prompt changed, and b (claude, never
    run) and c (a command) wait on it."""
    head = f"budget_usd = {budget}\n" if budget is not None else ""
    ws.write_pipeline("p", head + preset_toml("a", "claude", "first"))
    ws.doit("wait", check_rc=0, env=fake_bins)
    ws.write_pipeline("p", head + preset_toml("a", "claude", "second")
                      + preset_toml("b", "claude", "next", after=["a"])
                      + '[agents.c]\ncommand = "true"\nafter = ["b"]\n')


def test_plan_launches_and_changes_nothing(ws, fake_bins):
    ran_once(ws, fake_bins)
    ws.write_pipeline("q", preset_toml("x", "codex", "never run"))   # no state of its own yet
    before = tree(ws.state)
    text = ws.doit("plan", check_rc=0, env=fake_bins).stdout
    data = json.loads(ws.doit("plan", "--json", check_rc=0, env=fake_bins).stdout)
    assert tree(ws.state) == before
    assert len(calls(ws)) == 1                                   # nothing launched
    assert [(a["task"], a["action"]) for a in data["agents"]] == [
        ("p:a", "launch"), ("p:b", "waits"), ("p:c", "waits"), ("q:x", "launch")]
    [a, b, c, x] = data["agents"]
    assert x["reason"] == "never run"
    stale = "command, env, cwd or outputs changed"
    assert a["reason"] == stale                                  # as doit info says it
    assert f"stale: {stale}" in ws.doit("info", "p:a", env=fake_bins).stdout
    assert b["reason"] == "waiting on a"
    assert f"p:a  launch: {stale}  [claude]  " in text


def test_the_forecast_follows_the_history(ws, fake_bins):
    ran_once(ws, fake_bins)
    data = json.loads(ws.doit("plan", "--json", check_rc=0).stdout)
    a, b, c = (agent["forecast"] for agent in data["agents"])
    assert (a["cost_usd"], a["basis"]) == (CLAUDE_RUN, "its last 1 run")
    assert a["duration_s"] is not None and a["duration_s"] > 0
    assert (b["cost_usd"], b["basis"]) == (CLAUDE_RUN, "1 run of claude")
    assert c == {"duration_s": None, "cost_usd": None, "basis": "unknown"}
    assert data["total"] == {"agents": 3, "cost_usd": 2 * CLAUDE_RUN,
                             "duration_s": data["total"]["duration_s"], "unknown": 1}
    text = ws.doit("plan", check_rc=0).stdout
    assert "p:c  waits: waiting on b  [command]  forecast unknown" in text
    assert "$0.02 (1 unknown)" in text


@pytest.mark.parametrize("budget, rc", [(0.04, 0), (0.03, 1)])
def test_the_exit_code_follows_the_budget(ws, fake_bins, budget, rc):
    """$0.0123 spent; two claude runs of $0.0123 forecast: $0.0246 of what is left."""
    ran_once(ws, fake_bins, budget=budget)
    out = ws.doit("plan", check_rc=rc).stdout
    left = budget - CLAUDE_RUN
    line = f"pipeline p: forecast $0.02, ${left:.2f} of ${budget:.2f} left"
    assert line + (": exceeds what is left" if rc else "") in out.splitlines()
    data = json.loads(ws.doit("plan", "--json", check_rc=rc).stdout)
    assert data["exceeds_budget"] is bool(rc)
    assert data["budgets"][0]["left_usd"] == pytest.approx(left)


def test_the_workspace_budget_applies_too(ws, fake_bins):
    pyproject = ws.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.orchestrate]\nbudget_usd = 0.015\n")
    ran_once(ws, fake_bins)
    out = ws.doit("plan", check_rc=1).stdout
    assert "workspace: forecast $0.02, $0.00 of $0.01 left: exceeds what is left" in out


def test_an_invalid_pipeline_or_task_is_refused(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\n')
    assert "no pipeline or agent matches 'p:nope'" in ws.doit("plan", "p:nope", check_rc=3).stderr
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\nretries = "x"\n')
    proc = ws.doit("plan", check_rc=3)
    assert "key 'retries'" in proc.stderr and "Traceback" not in proc.stderr


# -- pure: the forecast's rules ----------------------------------------------
def run(task, ok=True, duration=10.0, cost=1.0, preset="claude", model=None, ended=100.0):
    return PastRun(task, ok, ended, duration, preset, model, cost)


def test_the_median_of_the_last_five_successful_runs():
    runs = [run("p:a", duration=1000, cost=100)] * 3 + [
        run("p:a", duration=d, cost=c) for d, c in ((10, 1), (20, 2), (30, 3), (40, 4))
    ] + [run("p:a", ok=False, duration=5000, cost=500), run("p:a", duration=50, cost=5)]
    guess = forecast("p:a", "claude", None, runs)
    assert (guess.duration_s, guess.cost_usd, guess.basis) == (30, 3, "its last 5 runs")


def test_without_its_own_runs_the_same_preset_and_model():
    runs = [run("p:x", model="opus", cost=9), run("p:y", model="sonnet", cost=2),
            run("p:z", preset="codex", model="sonnet", cost=7)]
    guess = forecast("p:a", "claude", "sonnet", runs)
    assert (guess.cost_usd, guess.basis) == (2, "1 run of claude (sonnet)")
    assert forecast("p:a", "gemini", None, runs).basis == "unknown"
    assert forecast("p:a", None, None, runs).basis == "unknown"


def test_past_runs_take_an_old_end_events_duration_from_its_launch():
    events = [{"ts": "2026-01-01T10:00:00.000Z", "event": "launch", "task": "p:a", "run_id": "r"},
              {"ts": "2026-01-01T10:01:30.000Z", "event": "finish", "task": "p:a", "run_id": "r"}]
    [past] = past_runs(events)
    assert (past.ok, past.duration_s, past.cost_usd) == (True, 90.0, None)


def test_spend_by_preset_counts_only_the_window():
    runs = [run("p:a", cost=1, ended=10_000), run("p:b", cost=2, ended=10_000 - 1800),
            run("p:c", cost=4, ended=10_000 - 7200, preset="codex")]
    assert spend_by_preset(runs, 10_000, 1) == {"claude": 3}
    assert spend_by_preset(runs, 10_000, 5) == {"claude": 3, "codex": 4}


def test_status_shows_spend_per_preset_for_the_last_hour_and_five(ws, fake_bins):
    """Two claude runs and a codex run now; a gemini run three hours ago
    (its end event, as the engine writes it)."""
    ws.write_pipeline("p", preset_toml("a", "claude", "one") + preset_toml("b", "claude", "two")
                      + preset_toml("c", "codex", "three"))
    ws.doit("wait", check_rc=0, env=fake_bins)
    old = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 3 * 3600))
    with open(ws.state / "events.jsonl", "a") as handle:
        handle.write(json.dumps({"ts": old, "event": "finish", "task": "q:x", "run_id": "r",
                                 "preset": "gemini", "model": None, "cost_usd": 0.5,
                                 "duration_s": 60}) + "\n")
    out = ws.doit("status", check_rc=0).stdout
    assert "claude: $0.0246 in the last hour, $0.0246 in the last 5 hours" in out
    assert "gemini: $0.0000 in the last hour, $0.5000 in the last 5 hours" in out
    assert "codex: $0.0000 in the last hour" in out     # the fake codex reports no cost
    data = json.loads(ws.doit("status", "--json", check_rc=0).stdout)
    assert data["presets"]["claude"] == {"last_hour_usd": 0.0246, "last_5h_usd": 0.0246}
    assert data["presets"]["gemini"] == {"last_hour_usd": 0.0, "last_5h_usd": 0.5}


def test_the_readmes_recipe_is_a_valid_pipeline_that_plan_answers(ws, fake_bins):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    recipe = readme.split("### Recipe: claude first, codex while claude is limited")[1]
    toml = recipe.split("```toml\n")[1].split("```")[0]
    (ws.root / "prompts").mkdir()
    for name in ("research", "implement"):
        (ws.root / "prompts" / f"{name}.md").write_text(f"{name} please")
    ws.write_pipeline("review", toml)
    out = ws.doit("plan", "review", check_rc=0, env=fake_bins).stdout
    assert "review:research  launch: never run  [claude (sonnet)]  forecast unknown" in out
    assert "pipeline review: forecast $0.00, $5.00 of $5.00 left" in out


def test_plan_names_the_fallback_preset_while_claude_is_limited(ws):
    ws.write_pipeline("p", preset_toml("a", "claude", "one", fallback=["codex"])
                      + preset_toml("b", "claude", "two", after=["a"], fallback=["codex"])
                      + preset_toml("c", "claude", "three", after=["a"]))
    (ws.state / "ratelimits").mkdir(parents=True)
    (ws.state / "ratelimits" / "claude.json").write_text(json.dumps(
        {"until": time.time() + 3600, "by": "q:x", "reset_known": True}))
    data = json.loads(ws.doit("plan", "--json", check_rc=0).stdout)
    rows = {a["task"]: (a["action"], a["preset"]) for a in data["agents"]}
    assert rows == {"p:a": ("launch", "codex"), "p:b": ("waits", "codex"),
                    "p:c": ("waits", "claude")}
    assert data["agents"][0]["via"].startswith("via codex: claude rate limited until ")


def test_a_best_of_agent_is_forecast_n_times_its_cost(ws, fake_bins):
    """Every candidate runs and counts toward budgets: best_of = 3 is three
    runs' cost, each candidate forecast from the agent's own runs."""
    ws.make_git_repo()
    ws.write_pipeline("p", "budget_usd = 0.046\n" + preset_toml("a", "claude", "first"))
    ws.doit("wait", check_rc=0, env=fake_bins)
    ws.write_pipeline("p", "budget_usd = 0.046\n" + preset_toml(
        "a", "claude", "second", isolation="worktree", best_of=3)
        + '[agents.c]\ncommand = "true"\nafter = ["a"]\n')
    data = json.loads(ws.doit("plan", "--json", check_rc=1, env=fake_bins).stdout)
    planned = {a["task"]: a for a in data["agents"]}
    assert list(planned) == ["p:a@1", "p:a@2", "p:a@3", "p:a", "p:c"]
    for name in ("p:a@1", "p:a@2", "p:a@3"):
        assert planned[name]["action"] == "launch"
        assert planned[name]["forecast"]["cost_usd"] == CLAUDE_RUN
        assert planned[name]["forecast"]["basis"] == "1 run of p:a"
    row = planned["p:a"]["forecast"]
    assert (row["cost_usd"], row["basis"]) == (pytest.approx(3 * CLAUDE_RUN), "3 candidates")
    assert data["total"]["agents"] == 4                           # the row is not a run of its own
    assert data["total"]["cost_usd"] == pytest.approx(3 * CLAUDE_RUN)
    [budget] = data["budgets"]                                    # $0.0123 spent, $0.0337 left
    assert budget["forecast_usd"] == pytest.approx(3 * CLAUDE_RUN) and budget["exceeded"]
    text = ws.doit("plan", check_rc=1, env=fake_bins).stdout
    assert "p:a  waits: waiting on candidates (0 of 3 passed)  [claude]  ~" in text
    assert "$0.04 (3 candidates)" in text
    assert "pipeline p: forecast $0.04, $0.03 of $0.05 left: exceeds what is left" in text
