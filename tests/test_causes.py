"""Reasons that carry their cause (issue 10, point 4): real doit, real shells."""
import json

from orchestrate.core.causes import exit_cause, suggestion


def test_exit_127_names_the_command_the_shell_could_not_find(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "echo starting; no-such-program --now"\n')
    proc = ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["reason"].startswith("command not found: no-such-program")
    assert "command not found: no-such-program" in proc.stdout


def test_shell_messages_of_dash_and_bash_are_both_understood():
    assert exit_cause(127, b"sh: 1: no-such-program: not found\n") == \
        "command not found: no-such-program"
    assert exit_cause(127, b"bash: line 1: frobnicate: command not found\n") == \
        "command not found: frobnicate"
    assert exit_cause(127, b"nothing useful\n") is None
    assert exit_cause(1, b"sh: 1: x: not found\n") is None


def test_missing_working_directory_is_named(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\ncwd = "not-made-yet"\n')
    ws.doit("wait", check_rc=1)
    reason = ws.status("p", "a")["reason"]
    assert reason == ("could not start: working directory not-made-yet does not exist "
                      "(key 'cwd')"), reason


def test_missing_executable_of_an_argv_command_is_named(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = ["/nowhere/tool", "--x"]\n')
    ws.doit("wait", check_rc=1)
    reason = ws.status("p", "a")["reason"]
    assert "/nowhere/tool" in reason and ("not found" in reason), reason


def test_missing_prompt_file_is_a_validation_error(ws):
    ws.write_pipeline("p", '[agents.a]\nagent = "claude"\nprompt_file = "prompts/nope.md"\n')
    proc = ws.doit(check_rc=3)
    assert ("pipelines/p.toml: agent 'a': key 'prompt_file': 'prompts/nope.md' does not exist"
            in proc.stdout + proc.stderr)
    assert ws.status("p", "a") is None and "Traceback" not in proc.stderr


def test_prompt_file_made_by_an_upstream_agent_is_fine(ws):
    ws.write_pipeline("p", '''
[agents.write]
command = "mkdir -p prompts && echo review > prompts/gen.md"
outputs = ["prompts/gen.md"]
[agents.a]
agent = "claude"
prompt_file = "prompts/gen.md"
after = ["write"]
''')
    # `doit list` exits 0 even on an invalid pipeline (it leaves it out, with
    # a warning): the pipeline must be listed, and nothing warned about
    proc = ws.doit("list", "--all", "--quiet", check_rc=0)
    assert sorted(proc.stdout.split()) == ["p", "p:a", "p:write"], proc.stdout
    assert proc.stderr == ""
    assert "prompt_file" not in ws.doit("status", check_rc=0).stdout


def test_unknown_key_suggests_the_key_meant(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\ntimout = "5s"\n')
    proc = ws.doit(check_rc=3)
    text = proc.stdout + proc.stderr
    assert "pipelines/p.toml: agent 'a': key 'timout': unknown key (did you mean 'timeout'?)" in text
    assert "known keys" not in text and "allowed_tools" not in text
    assert "did you mean" not in suggestion("zzzzzz", ["timeout", "retries"])


def test_a_zero_time_limit_is_an_error(ws):
    for key in ("timeout", "stall_timeout"):
        ws.write_pipeline("p", f'[agents.a]\ncommand = "true"\n{key} = {json.dumps("0s")}\n')
        proc = ws.doit(check_rc=3)
        assert (f"agent 'a': key '{key}': 0 is no time at all: omit the key for no limit"
                in proc.stdout + proc.stderr)
    assert ws.status("p", "a") is None
