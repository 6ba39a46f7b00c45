"""Pipeline parsing and validation (pure, no processes)."""
from pathlib import Path

import pytest

from orchestrate.core.spec import PipelineError, find_cycle, parse_duration
from orchestrate.runtime.workspace import load_workspace


def load(tmp_path: Path, **files: str):
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "pipelines" / f"{name}.toml").write_text(text)
    return load_workspace(tmp_path)


def problems(tmp_path: Path, **files: str) -> str:
    with pytest.raises(PipelineError) as info:
        load(tmp_path, **files)
    return "\n".join(info.value.problems)


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200),
                                          ("1h30m", 5400), (45, 45), (1.5, 1.5), ("250ms", 0.25)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "10 minutes", "", -1, True, "5x"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_full_pipeline_parses(tmp_path):
    ws = load(tmp_path, review='''
description = "d"
max_parallel = 2
[defaults]
timeout = "30m"
retries = 1
[agents.research]
command = "python agents/research.py"
inputs = ["notes/*.md"]
outputs = ["build/research.md"]
[agents.plan]
command = ["python", "agents/plan.py"]
after = ["research"]
timeout = 90
[agents.review]
command = "true"
after_any = ["research", "plan"]
wait_for = ["approved"]
env = { MODEL = "sonnet" }
cwd = "."
''')
    pipeline = ws.pipeline("review")
    assert [a.name for a in pipeline.agents] == ["research", "plan", "review"]
    plan = pipeline.agent("plan")
    assert plan.command == ("python", "agents/plan.py")
    assert plan.timeout == 90 and plan.retries == 1
    assert pipeline.agent("research").timeout == 1800
    assert dict(pipeline.agent("review").env) == {"MODEL": "sonnet"}
    assert pipeline.max_parallel == 2
    assert ws.agents_by_task["review:plan"] is plan


def test_unknown_key_names_file_agent_and_key(tmp_path):
    text = problems(tmp_path, p='[agents.a]\ncommand = "x"\ncomand = "y"\n')
    assert "pipelines/p.toml: agent 'a': key 'comand': unknown key" in text


def test_bad_type_says_what_was_expected(tmp_path):
    text = problems(tmp_path, p='[agents.a]\ncommand = 3\n')
    assert "pipelines/p.toml: agent 'a': key 'command': expected a string" in text
    text = problems(tmp_path, p='[agents.a]\ncommand = "x"\nretries = "two"\n')
    assert "key 'retries': expected an integer" in text


def test_bad_duration_is_reported(tmp_path):
    text = problems(tmp_path, p='[agents.a]\ncommand = "x"\ntimeout = "soon"\n')
    assert "agent 'a': key 'timeout': expected a duration" in text


def test_unknown_and_self_dependencies(tmp_path):
    text = problems(tmp_path, p='''
[agents.a]
command = "x"
after = ["a"]
[agents.b]
command = "x"
after_any = ["nope"]
''')
    assert "agent 'a': key 'after': an agent cannot depend on itself" in text
    assert "agent 'b': key 'after_any': unknown agent 'nope'" in text


def test_cycle_is_reported_with_its_path(tmp_path):
    text = problems(tmp_path, p='''
[agents.a]
command = "x"
after = ["c"]
[agents.b]
command = "x"
after = ["a"]
[agents.c]
command = "x"
after_any = ["b"]
''')
    assert "dependency cycle: a -> c -> b -> a" in text


def test_duplicate_agent_is_invalid_toml_naming_the_file(tmp_path):
    text = problems(tmp_path, p='[agents.a]\ncommand = "x"\n[agents.a]\ncommand = "y"\n')
    assert text.startswith("pipelines/p.toml: invalid TOML")


def test_bad_names(tmp_path):
    text = problems(tmp_path, p='[agents."bad name"]\ncommand = "x"\nwait_for = ["-x"]\n')
    assert "agent 'bad name': not a valid agent name" in text
    assert "key 'wait_for': '-x' is not a valid name" in text


def test_missing_command_and_empty_pipeline(tmp_path):
    assert "agent 'a': key 'command': missing" in problems(
        tmp_path, p='[agents.a]\ndescription = "x"\n')
    assert "key 'agents': expected at least one" in problems(tmp_path, p='description = "x"\n')


def test_every_invalid_file_is_reported_at_once(tmp_path):
    text = problems(tmp_path, one='[agents.a]\ncommand = 1\n', two='x = 1\n[agents.b]\ncommand="x"\n')
    assert "pipelines/one.toml" in text and "pipelines/two.toml: key 'x'" in text


def test_unknown_pool_and_workspace_keys(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.orchestrate]\npools = { llm = 2 }\nmaxparallel = 3\n')
    text = problems(tmp_path, p='[agents.a]\ncommand = "x"\npool = "gpu"\n')
    assert "pyproject.toml: key 'tool.orchestrate.maxparallel': unknown key" in text
    assert "agent 'a': key 'pool': unknown pool 'gpu'" in text


def test_preset_agents_parse_and_their_prompt_file_is_an_input(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "a.md").write_text("review")
    ws = load(tmp_path, p='''
[agents.a]
agent = "claude"
prompt_file = "prompts/a.md"
model = "sonnet"
allowed_tools = ["Read"]
permission_mode = "acceptEdits"
[agents.b]
agent = "aider"
prompt = "fix it"
extra_args = ["--no-git"]
''')
    a, b = ws.pipeline("p").agents
    assert a.preset == "claude" and a.inputs == ("prompts/a.md",) and a.command is None
    assert b.prompt == "fix it" and b.extra_args == ("--no-git",)


def test_preset_mistakes_are_reported(tmp_path):
    text = problems(tmp_path, p='''
[agents.a]
agent = "gpt"
prompt = "x"
[agents.b]
agent = "codex"
[agents.c]
agent = "codex"
prompt = "x"
command = "y"
[agents.d]
command = "y"
model = "m"
[agents.e]
agent = "gemini"
prompt = "x"
permission_mode = "plan"
''')
    assert "agent 'a': key 'agent': expected one of claude, codex, gemini, aider" in text
    assert "agent 'b': key 'prompt': a preset agent needs exactly one of prompt or prompt_file" in text
    assert "agent 'c': key 'command': give either command or agent, not both" in text
    assert "agent 'd': key 'model': only applies with agent" in text
    assert "agent 'e': key 'permission_mode': only the claude preset has it" in text


def test_find_cycle():
    assert find_cycle({"a": ("b",), "b": ()}) is None
    assert find_cycle({"a": ("b",), "b": ("a",)}) == ["a", "b", "a"]


@pytest.mark.parametrize("command", ['""', "[]", '"   "'])
def test_an_empty_command_is_one_error_not_also_missing(tmp_path, command):
    text = problems(tmp_path, p=f"[agents.a]\ncommand = {command}\n")
    assert "agent 'a': key 'command'" in text
    assert "missing" not in text and len(text.splitlines()) == 1, text


def test_two_agents_declaring_one_output_is_an_error_naming_both(tmp_path):
    text = problems(tmp_path, p='''
[agents.a]
command = "true"
outputs = ["out/x.txt"]
[agents.b]
command = "true"
outputs = ["./out/x.txt", "out/b.txt"]
''')
    assert text == ("pipelines/p.toml: agent 'b': key 'outputs': './out/x.txt' is also an "
                    "output of agent 'a' (two agents writing one file overwrite each other's "
                    "result)")


def test_an_output_clash_across_pipelines_names_the_other_pipelines_agent(tmp_path):
    text = problems(tmp_path, p='[agents.a]\ncommand = "true"\noutputs = ["out/x.txt"]\n',
                    q='[agents.b]\ncommand = "true"\noutputs = ["out/x.txt"]\n')
    assert "pipelines/q.toml: agent 'b': key 'outputs': 'out/x.txt' is also an output of " \
        "agent 'p:a'" in text


def test_fan_out_instances_with_key_outputs_do_not_clash_a_fixed_one_does(tmp_path):
    fan = '''
[agents.f]
foreach = {{ values = ["a", "b"] }}
command = ["true"]
outputs = [{outputs}]
[agents.g]
foreach = {{ each_of = "f" }}
command = ["true"]
outputs = ["other/{{key}}.txt"]
'''
    ws = load(tmp_path, p=fan.format(outputs='"out/{key}.txt"'))
    assert [a.outputs for a in ws.pipelines[0].agents if a.fanout == "f"] == \
        [("out/a.txt",), ("out/b.txt",)]
    text = problems(tmp_path, p=fan.format(outputs='"out/{key}.txt", "out/all.txt"'))
    assert "agent 'f': key 'outputs': 'out/all.txt' would be written by every instance" in text
