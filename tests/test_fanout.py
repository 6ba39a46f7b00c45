"""Fan-out: one declaration over many items, static and planned at run time.

Real doit, real agent processes (the ledgered fake agent), real files.
"""
import json
import sys
from pathlib import Path

import pytest

from conftest import FAKE_AGENT, wait_until
from orchestrate.runtime.fanout import expand_loaded
from orchestrate.core.foreach import Item, ListProblem, assign_keys, parse_list, slug, substitute
from orchestrate.core.spec import Problems, parse_pipeline


def argv(ws, *args: str) -> str:
    """A TOML argv list running the fake agent."""
    return json.dumps([sys.executable, str(FAKE_AGENT), str(ws.ledger), *args])


def counts(ws) -> dict[str, int]:
    result: dict[str, int] = {}
    for entry in ws.launches():
        result[entry["agent"]] = result.get(entry["agent"], 0) + 1
    return result


# -- keys (pure) ----------------------------------------------------------
def test_keys_are_slugs_cut_and_hashed_as_the_contract_says():
    assert slug("src/a_b.py") == ("src-a_b-py", False)
    assert slug("--a  b--") == ("a-b", False)
    long_key = assign_keys([("x" * 60, "x" * 60)])[0]
    assert len(long_key) <= 40 and long_key.startswith("x" * 31 + "-")
    a, b = assign_keys([("a b", "a b"), ("a/b", "a/b")])
    assert a != b and a.startswith("a-b-") and b.startswith("a-b-")
    assert assign_keys([("!!!", "!!!")])[0].isalnum()


def test_json_elements_take_their_key_from_key_id_or_name_else_their_text():
    items = parse_list('[{"id": 7, "t": "x"}, {"name": "Zed", "key": "k1"}, {"a": 1}, "s"]', 10)
    assert [i.key for i in items] == ["7", "k1", "a-1", "s"]
    assert items[2].text == '{"a":1}'
    assert dict(items[0].fields) == {"id": "7", "t": "x"}


@pytest.mark.parametrize("text, problem", [
    ('{"a": 1}', "expected a JSON array"),
    ('[1, 2]', "element 1: expected a string or a flat object"),
    ('[{"a": [1]}]', "field 'a' is nested"),
    ('["a", "a"]', "the same key"),
    ('["a", "b", "c"]', "3 items, more than max_items (2)"),
    ('[oops', "not valid JSON"),
])
def test_invalid_lists_say_what_is_wrong(text, problem):
    with pytest.raises(ListProblem, match=None) as err:
        parse_list(text, 2)
    assert problem in str(err.value)


def test_substitution_is_one_pass_and_expansion_names_every_instance_in_the_fan_in():
    item = Item("{key} $(x)", "k", (("title", "{item}"),))
    assert substitute("a {item} b {item.title} {key} {other}", item) == \
        "a {key} $(x) b {item} k {other}"
    problems = Problems()
    pipeline = parse_pipeline("p", "pipelines/p.toml", {"agents": {
        "plan": {"command": "true"},
        "w": {"foreach": {"json": "l.json", "from": "plan"}, "command": ["echo", "{item}"]},
        "v": {"foreach": {"values": ["a", "b"]}, "command": ["echo", "{item}"]},
        "fix": {"foreach": {"each_of": "v"}, "command": ["true"]},
        "all": {"command": "true", "after": ["v", "w"]}}}, problems)
    pipeline = expand_loaded(Path("/nonexistent"), pipeline, problems, records={})
    agents = {a.name: a for a in pipeline.agents}
    assert not problems.lines
    assert set(agents) == {"plan", "w", "v.a", "v.b", "fix.a", "fix.b", "all"}
    assert agents["w"].gate and agents["w"].awaits == ("plan",)
    assert agents["all"].after == ("v.a", "v.b") and agents["all"].awaits == ("w",)
    assert agents["fix.b"].after == ("v.b",)
    assert agents["v.a"].command == ("echo", "a")
    assert dict(agents["v.b"].env)["ORCHESTRATE_KEY"] == "b"


# -- validation: exit 3 naming file, agent and key --------------------------
@pytest.mark.parametrize("table, key, words", [
    ('foreach = "x"\ncommand = "true"', "foreach", "expected a table"),
    ('foreach = { glob = "*", values = ["a"] }\ncommand = "true"', "foreach", "one of"),
    ('foreach = { json = "p.json" }\ncommand = "true"', "foreach", "needs from"),
    ('foreach = { json = "p.json", from = "nobody" }\ncommand = "true"', "foreach.from",
     "unknown agent 'nobody'"),
    ('foreach = { each_of = "nobody" }\ncommand = "true"', "foreach.each_of",
     "unknown agent 'nobody'"),
    ('foreach = { each_of = "first" }\ncommand = "true"', "foreach.each_of",
     "'first' is not a fan-out"),
    ('foreach = { values = ["a"], colour = 1 }\ncommand = "true"', "foreach", "unknown key"),
    ('foreach = { values = ["a"], max_items = 0 }\ncommand = "true"', "foreach", "max_items"),
    ('foreach = { values = ["a"] }\ncommand = "echo {item}"', "command", "$ORCHESTRATE_ITEM"),
    ('foreach = { values = ["a"] }\ncommand = ["echo"]\ncwd = "{key}"', "cwd", "not allowed"),
    ('command = ["echo", "{item}"]', "command", "only works in an agent with foreach"),
    ('foreach = { values = ["a", "b"], max_items = 1 }\ncommand = ["true"]', "foreach",
     "more than max_items (1)"),
    ('foreach = { values = ["a"] }\ncommand = ["echo", "{item.title}"]', "foreach",
     "no field 'title'"),
    ('foreach = { values = ["../../x"] }\ncommand = ["true"]\noutputs = ["out/{item}"]',
     "foreach", "outside the workspace"),
])
def test_a_bad_foreach_is_exit_3_naming_file_agent_and_key(ws, table, key, words):
    ws.write_pipeline("p", f'[agents.first]\ncommand = "true"\n[agents.second]\n{table}\n')
    proc = ws.doit(check_rc=3)
    assert "pipelines/p.toml: agent 'second': key '" + key + "'" in proc.stderr, proc.stderr
    assert words in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not ws.launches()


def test_from_a_fan_out_and_a_cycle_through_foreach_are_errors(ws):
    ws.write_pipeline("p", '''
[agents.a]
foreach = { values = ["x"] }
command = ["true"]
[agents.b]
foreach = { json = "l.json", from = "a" }
command = ["true"]
[agents.c]
command = "true"
after = ["d"]
[agents.d]
foreach = { json = "l.json", from = "c" }
command = ["true"]
''')
    proc = ws.doit(check_rc=3)
    assert "agent 'b': key 'foreach.from': 'a' is a fan-out" in proc.stderr
    assert "dependency cycle" in proc.stderr


# -- static fan-outs --------------------------------------------------------
def glob_pipeline(ws) -> None:
    src = ws.root / "src"
    src.mkdir()
    for name in ("a_b.py", "c.py"):
        (src / name).write_text(name)
    ws.write_pipeline("p", f'''
[agents.review]
foreach = {{ glob = "src/*.py" }}
command = {argv(ws, "--copy", "{item}=build/review/{key}.md", "--env-to", "build/env/{key}.json")}
outputs = ["build/review/{{key}}.md"]
description = "review {{item}}"
env = {{ WHICH = "{{key}}" }}
[agents.summary]
command = {json.dumps(ws.agent_cmd("--write", "build/summary.md=ok"))}
after = ["review"]
''')


def test_a_glob_fans_out_to_one_instance_per_file_and_the_fan_in_waits_for_all(ws):
    glob_pipeline(ws)
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"review.src-a_b-py": 1, "review.src-c-py": 1, "summary": 1}
    env = json.loads((ws.root / "build/env/src-a_b-py.json").read_text())
    assert env["ORCHESTRATE_ITEM"] == "src/a_b.py"
    assert env["ORCHESTRATE_KEY"] == "src-a_b-py"
    assert env["ORCHESTRATE_AGENT"] == "review.src-a_b-py"
    assert (ws.root / "build/review/src-c-py.md").read_text() == "c.py"
    summary = [e for e in ws.launches("summary")][0]
    review_ends = [e["t"] for e in ws.launches() if e["agent"].startswith("review.")]
    assert summary["t"] > max(review_ends)
    listed = ws.doit("list", "--all", check_rc=0).stdout
    assert "p:review.src-a_b-py" in listed and "review src/a_b.py" in listed
    # the matched file is an input of its instance: only that one and the fan-in re-run
    (ws.root / "src/c.py").write_text("changed")
    info = ws.doit("info", "p:review.src-c-py").stdout
    assert "input src/c.py changed" in info
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"review.src-a_b-py": 1, "review.src-c-py": 2, "summary": 2}
    # a new file: a new instance, and the fan-in is stale (its set of instances changed)
    (ws.root / "src/d.py").write_text("d")
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"review.src-a_b-py": 1, "review.src-c-py": 2, "review.src-d-py": 1,
                          "summary": 3}


def test_instances_are_selected_by_name_pattern_and_fan_out_name(ws):
    glob_pipeline(ws)
    ws.doit("wait", "p:review.*", check_rc=0)
    assert set(counts(ws)) == {"review.src-a_b-py", "review.src-c-py"}
    status = json.loads(ws.doit("status", "p:review", "--json", check_rc=0).stdout)
    assert {a["task"] for a in status["agents"]} == {"p:review.src-a_b-py", "p:review.src-c-py"}
    assert ws.doit("logs", "p:review.*", check_rc=0).stdout.count("==> p:review.") == 2
    ws.doit("forget", "p:review.*", check_rc=0)
    assert ws.status("p", "review.src-c-py") is None
    ws.doit("wait", "p:review.src-c-py", check_rc=0)
    assert counts(ws)["review.src-c-py"] == 2
    ws.doit("clean", "p:review.src-c-py", check_rc=0)
    assert not (ws.root / "build/review/src-c-py.md").exists()
    assert (ws.root / "build/review/src-a_b-py.md").exists()
    assert not ws.signal("p", "review.src-c-py").exists()


def test_an_item_is_data_never_code(ws):
    evil = ["$(touch pwned)", "`touch pwned`", "x; touch pwned", "{key}"]
    ws.write_pipeline("p", f'''
[agents.echo]
foreach = {{ values = {json.dumps(evil)} }}
command = {argv(ws, "--write", "out/{key}.txt={item}")}
[agents.shell]
foreach = {{ values = {json.dumps(evil)} }}
command = {json.dumps(ws.agent_cmd("--write", "sh/$ORCHESTRATE_KEY.txt=x") + ' && printf %s "$ORCHESTRATE_ITEM" > sh/$ORCHESTRATE_KEY.item')}
''')
    (ws.root / "sh").mkdir()
    ws.doit("wait", check_rc=0)
    written = sorted(p.read_text() for p in (ws.root / "out").iterdir())
    assert written == sorted(evil)          # each value arrived whole, as one argv element
    assert sorted(p.read_text() for p in (ws.root / "sh").glob("*.item")) == sorted(evil)
    assert not list(ws.root.rglob("pwned"))


def test_an_empty_static_fan_out_is_done_at_once_and_its_fan_in_runs(ws):
    ws.write_pipeline("p", f'''
[agents.review]
foreach = {{ glob = "nothing/*.py" }}
command = ["true"]
[agents.summary]
command = {json.dumps(ws.agent_cmd())}
after = ["review"]
''')
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"summary": 1}


def test_each_of_chains_per_item_with_early_cutoff(ws):
    (ws.root / "in").mkdir()
    for v in ("fr", "de"):
        (ws.root / "in" / f"{v}.txt").write_text(v)
    ws.write_pipeline("p", f'''
[agents.tr]
foreach = {{ values = ["fr", "de"] }}
command = {argv(ws, "--copy", "in/{item}.txt=out/tr-{key}.txt")}
inputs = ["in/{{item}}.txt", "in/{{item}}.note"]
outputs = ["out/tr-{{key}}.txt"]
[agents.fix]
foreach = {{ each_of = "tr" }}
command = {argv(ws, "--copy", "out/tr-{key}.txt=out/fix-{key}.txt")}
outputs = ["out/fix-{{key}}.txt"]
[agents.any]
command = {json.dumps(ws.agent_cmd())}
after_any = ["fix"]
''')
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"tr.fr": 1, "tr.de": 1, "fix.fr": 1, "fix.de": 1, "any": 1}
    fix_fr = ws.status("p", "fix.fr")
    assert list(fix_fr["upstream"]) == ["tr.fr"]       # instance k depends on instance k only
    used = ws.status("p", "any")["upstream_used"]    # after_any: whichever was done first
    assert used in ("fix.fr", "fix.de")
    (ws.root / "in/de.txt").write_text("DE")
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"tr.fr": 1, "tr.de": 2, "fix.fr": 1, "fix.de": 2,
                          "any": 2 if used == "fix.de" else 1}
    (ws.root / "in/de.txt").touch()     # same content: nothing re-runs
    ws.doit("wait", check_rc=0)
    assert counts(ws)["tr.de"] == 2
    # early cutoff per instance: tr.de re-runs (its note changed) with the same output,
    # so fix.de stays up to date
    (ws.root / "in/de.note").write_text("a note")
    ws.doit("wait", check_rc=0)
    assert counts(ws)["tr.de"] == 3 and counts(ws)["fix.de"] == 2


# -- dynamic lists ------------------------------------------------------------
def planned(ws, extra: str = "", max_items: str = "") -> None:
    (ws.root / "in").mkdir(exist_ok=True)
    ws.write_pipeline("p", f'''
[agents.plan]
command = {json.dumps(ws.agent_cmd("--gate", str(ws.root / "go"), "--copy", "in/plan.json=build/plan.json"))}
inputs = ["in/plan.json"]
outputs = ["build/plan.json"]
[agents.work]
foreach = {{ json = "build/plan.json", from = "plan"{max_items} }}
command = {argv(ws, "--write", "out/{key}.txt={item.title}", "--env-to", "env/{key}.json")}
outputs = ["out/{{key}}.txt"]
[agents.gather]
command = {json.dumps(ws.agent_cmd("--write", "out/all.txt=all"))}
after = ["work"]
{extra}''')


def plan_list(ws, items) -> None:
    (ws.root / "in/plan.json").write_text(json.dumps(items))


def launch_reasons(ws, task: str) -> list[str]:
    events = [json.loads(line) for line in (ws.state / "events.jsonl").read_text().splitlines()]
    return [e["reason"] for e in events if e["event"] == "launch" and e["task"] == task]


def test_a_planners_list_grows_shrinks_and_breaks(ws):
    planned(ws)
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "b", "title": "$(touch pwned)"}])
    ws.doit(check_rc=0)
    ws.wait_state("p", "plan", "running")
    rows = json.loads(ws.doit("status", "--json", check_rc=0).stdout)["agents"]
    work = next(r for r in rows if r["task"] == "p:work")
    assert (work["state"], work["reason"]) == ("waiting", "waiting on plan (fan-out)")
    (ws.root / "go").touch()
    # nobody calls doit: the advancer reads the list and runs the instances, then gather
    wait_until(lambda: ws.signal("p", "gather").exists(), what="gather's signal")
    ws.wait_idle()
    assert counts(ws) == {"plan": 1, "work.a": 1, "work.b": 1, "gather": 1}
    assert (ws.root / "out/b.txt").read_text() == "$(touch pwned)"
    assert json.loads((ws.root / "env/a.json").read_text())["ORCHESTRATE_ITEM"] == \
        '{"id":"a","title":"A"}'
    # grows: only the new item runs, and the fan-in (its set of instances changed)
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "b", "title": "$(touch pwned)"},
                   {"id": "c", "title": "C"}])
    ws.doit("wait", check_rc=0)
    assert launch_reasons(ws, "p:gather")[-1] == "new upstream work.c"
    assert counts(ws) == {"plan": 2, "work.a": 1, "work.b": 1, "work.c": 1, "gather": 2}
    # shrinks: b is retired (record says removed, output moved aside, so that a
    # fan-in globbing out/ finds the listed items' results only); gather runs again
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "c", "title": "C"}])
    ws.doit("wait", check_rc=0)
    assert launch_reasons(ws, "p:gather")[-1] == "upstream work.b removed"   # not "a new result"
    assert counts(ws) == {"plan": 3, "work.a": 1, "work.b": 1, "work.c": 1, "gather": 3}
    assert ws.status("p", "work.b")["state"] == "removed"
    assert sorted(p.name for p in (ws.root / "out").glob("?.txt")) == ["a.txt", "c.txt"]
    assert (ws.state / "removed/p/work.b/out/b.txt").read_text() == "$(touch pwned)"
    assert "p:work.b" not in ws.doit("list", "--all").stdout
    # breaks: the fan-out row fails naming file and problem; earlier instances stay done
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "d"}, ["nested"]])
    proc = ws.doit("wait")
    assert proc.returncode == 1
    status = {r["task"]: r for r in json.loads(ws.doit("status", "--json").stdout)["agents"]}
    assert status["p:work"]["state"] == "failed"
    assert "build/plan.json: element 3" in status["p:work"]["reason"]
    assert status["p:work.a"]["state"] == "done" and status["p:work.c"]["state"] == "done"
    assert status["p:gather"]["state"] == "waiting"
    assert counts(ws) == {"plan": 4, "work.a": 1, "work.b": 1, "work.c": 1, "gather": 3}
    # a placeholder an item cannot fill is an invalid list too
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "e"}])
    ws.doit("wait", check_rc=1)
    status = {r["task"]: r for r in json.loads(ws.doit("status", "--json").stdout)["agents"]}
    assert "has no field 'title'" in status["p:work"]["reason"]
    assert "p:work.e" not in status
    # fixed: runs on
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "e", "title": "E"}])
    ws.doit("wait", check_rc=0)
    assert counts(ws)["work.e"] == 1 and counts(ws)["work.a"] == 1
    assert not list(ws.root.rglob("pwned"))
    # an instance whose output is deleted is stale, as any agent
    (ws.root / "out/e.txt").unlink()
    assert "stale: output missing: out/e.txt" in ws.doit("info", "p:work.e").stdout
    ws.doit("wait", check_rc=0)
    assert counts(ws)["work.e"] == 2 and (ws.root / "out/e.txt").read_text() == "E"


def test_an_empty_planned_list_is_done_at_once_and_its_fan_in_runs(ws):
    planned(ws)
    plan_list(ws, [])
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"plan": 1, "gather": 1}
    status = {r["task"]: r for r in json.loads(ws.doit("status", "--json").stdout)["agents"]}
    assert status["p:work"]["state"] == "done"


def test_max_items_guards_against_a_runaway_planner(ws):
    planned(ws, max_items=", max_items = 2")
    plan_list(ws, [str(i) for i in range(3)])
    (ws.root / "go").touch()
    proc = ws.doit("wait", check_rc=1)
    assert "3 items, more than max_items (2)" in proc.stdout
    assert set(counts(ws)) == {"plan"}


def test_dynamic_instances_do_not_consume_the_planners_signal(ws):
    """plan re-runs with a different output (the list's order): instances
    whose item did not change stay up to date."""
    planned(ws)
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)
    plan_list(ws, [{"id": "b", "title": "B"}, {"id": "a", "title": "A"}])
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"plan": 2, "work.a": 1, "work.b": 1, "gather": 1}


def test_retry_and_cancel_work_on_instances(ws):
    ws.write_pipeline("p", f'''
[agents.w]
foreach = {{ values = ["0", "3"] }}
command = {argv(ws, "--exit", "{item}")}
[agents.slow]
foreach = {{ values = ["x"] }}
command = {argv(ws, "--sleep", "60")}
''')
    proc = ws.doit("wait", "p:w", check_rc=1)
    assert "doit retry p:w.3" in proc.stdout
    ws.doit("retry", "p:w.*")
    wait_until(lambda: counts(ws).get("w.3") == 2, what="w.3 relaunched")
    ws.doit("p:slow.*", check_rc=0)
    ws.wait_state("p", "slow.x", "running")
    ws.doit("cancel", "p:slow", check_rc=0)
    assert ws.state_of("p", "slow.x") == "cancelled"
    ws.wait_idle()


def test_killed_right_after_the_expansion_is_recorded_nothing_runs_twice(ws):
    planned(ws)
    plan_list(ws, [{"id": "a", "title": "A"}, {"id": "b", "title": "B"}])
    (ws.root / "go").touch()
    ws.doit(check_rc=0, env={"ORCHESTRATE_CRASH_AT": "fanout-recorded:1"})
    record = ws.state / "fanout/p/work.json"
    wait_until(record.exists, what="the expansion record")
    wait_until(lambda: not ws.orchestrator_pids(), what="the killed advancer to be gone")
    assert ws.status("p", "work") is None           # killed before the row was written
    assert not ws.launches("work.a")
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"plan": 1, "work.a": 1, "work.b": 1, "gather": 1}


def test_graph_draws_a_fan_out_as_one_node_and_the_report_lists_its_instances(ws):
    glob_pipeline(ws)
    ws.doit("wait", check_rc=0)
    dot = ws.doit("graph", check_rc=0).stdout
    assert '"p:review" [label="p:review ×2"' in dot
    assert '"p:review" -> "p:summary"' in dot and "src-c-py" not in dot
    expanded = ws.doit("graph", "--expand", "--format", "mermaid", check_rc=0).stdout
    assert "p:review.src-a_b-py" in expanded and "p:review.src-c-py" in expanded
    path = ws.doit("report", check_rc=0).stdout.strip()
    html = open(path).read()
    html = html[html.index('<section id="agents"'):]      # the agents' table
    group = html.index('data-task="p:review"')
    assert "fan-out: 2 instances" in html
    assert group < html.index('data-task="p:review.src-a_b-py"') < html.index(
        'data-task="p:summary"')
    assert html.count('class="instance"') == 2


def test_cleaning_a_planned_fan_outs_row_reads_its_list_again_and_keeps_instance_logs(ws):
    planned(ws)
    plan_list(ws, [{"id": "3", "title": "three"}])      # a key of digits only: work.3
    (ws.root / "go").touch()
    ws.doit("wait", check_rc=0)
    log = ws.state / "logs/p/work.3.log"
    assert log.exists()
    ws.doit("clean", "p:work", check_rc=0)
    assert log.exists() and ws.status("p", "work") is None
    assert not (ws.state / "fanout/p/work.json").exists()
    ws.doit("wait", check_rc=0)
    assert ws.state_of("p", "work") == "done"
    assert counts(ws) == {"plan": 1, "work.3": 1, "gather": 1}


def test_retry_reads_a_broken_list_again(ws):
    planned(ws)
    plan_list(ws, {"not": "a list"})
    (ws.root / "go").touch()
    proc = ws.doit("wait", check_rc=1)
    assert "failed    p:work  (invalid list build/plan.json: expected a JSON array" in proc.stdout
    assert "-> doit retry p:work" in proc.stdout
    assert ws.doit("list", "--all").stdout.count("p:work") == 1     # no instance is known
    # the user repairs the planner's output by hand, then retries the fan-out's row
    (ws.root / "build/plan.json").write_text(json.dumps([{"id": "x", "title": "X"}]))
    ws.doit("retry", "p:work")
    ws.doit("wait", check_rc=0)
    assert counts(ws) == {"plan": 1, "work.x": 1, "gather": 1}


def test_one_count_everywhere_and_a_planned_rows_state_follows_its_instances(ws):
    """A planned fan-out's row is not an agent: status, the report and `doit`
    count the same agents; while its instances run the row says running."""
    (ws.root / "in").mkdir()
    plan_list(ws, ["a", "b"])
    ws.write_pipeline("p", f'''
[agents.plan]
command = {json.dumps(ws.agent_cmd("--copy", "in/plan.json=build/plan.json"))}
inputs = ["in/plan.json"]
outputs = ["build/plan.json"]
[agents.work]
foreach = {{ json = "build/plan.json", from = "plan" }}
command = {argv(ws, "--gate", str(ws.root / "go"))}
''')
    ws.doit(check_rc=0)
    wait_until(lambda: ws.state_of("p", "work.a") == ws.state_of("p", "work.b") == "running",
               what="both instances running")

    def table() -> tuple[dict[str, str], str]:
        lines = ws.doit("status", check_rc=0).stdout.splitlines()
        rows = {line.split()[0]: line.split()[1] for line in lines[1:] if line.startswith("p:")}
        return rows, next(line for line in lines if line[:1].isdigit())

    rows, summary = table()
    assert rows["p:work"] == "running"                   # not "done" while they run
    assert summary == "1 done, 2 running"                # three agents; the row is not one
    report = (ws.root / ws.doit("report", check_rc=0).stdout.strip()).read_text()
    assert "<dt>agents</dt><dd>3</dd>" in report
    (ws.root / "go").touch()
    waited = ws.doit("wait", check_rc=0).stdout.splitlines()[-1]   # "1 up to date, 2 done"
    assert sum(int(part.split()[0]) for part in waited.split(", ")) == 3, waited
    rows, summary = table()
    assert rows["p:work"] == "done" and summary == "3 done"
