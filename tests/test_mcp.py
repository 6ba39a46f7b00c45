"""The MCP server, driven as an MCP host drives it: the SDK's own stdio client
(`ClientSession` over `stdio_client`) starts `python -m orchestrate mcp DIR`
and calls its tools; real doit, real agent processes, real files."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Workspace, group_alive, wait_until

from orchestrate.runtime.state import Layout

try:
    import anyio  # installed with mcp
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
except ImportError:
    if os.environ.get("CI") == "true":   # CI installs the extra: missing is a failure
        raise
    pytest.skip("needs the mcp extra: pip install -e '.[test,mcp]'", allow_module_level=True)

TOOLS = {"list", "run", "status", "wait", "logs", "signal", "cancel", "retry", "plan"}


@contextlib.asynccontextmanager
async def connect(root: Path, errlog, params: StdioServerParameters | None = None):
    """A session with a fresh server on `root`, started with a bare
    environment (no PATH), as MCP hosts start servers."""
    params = params or StdioServerParameters(
        command=sys.executable, args=["-m", "orchestrate", "mcp", str(root)],
        env={"PATH": ""}, cwd="/")
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments) -> dict:
    """A successful call's JSON; structured content and text agree."""
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content == json.loads(result.content[0].text)
    return result.structured_content


async def error(session: ClientSession, tool: str, **arguments) -> str:
    result = await session.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return result.content[0].text


def states(result: dict) -> dict[str, str]:
    return {a["task"]: a["state"] for a in result["agents"]}


def cli_message(ws, *args: str) -> str:
    """What the command line prints for this mistake, after doit's "ERROR: "."""
    proc = ws.doit(*args, check_rc=3)
    return proc.stderr.strip().removeprefix("ERROR: ")


def server_pids(root: Path) -> list[int]:
    """Processes running `-m orchestrate mcp ROOT` for this test's workspace."""
    wanted = [b"-m", b"orchestrate", b"mcp", str(root).encode()]
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:5] == wanted:
                found.append(int(entry.name))
    return found


@pytest.fixture
def errlog(tmp_path):
    with open(tmp_path / "server-stderr.txt", "w+") as handle:
        yield handle
    text = (tmp_path / "server-stderr.txt").read_text()
    assert "Traceback" not in text, text


def two_step(ws, gate: Path) -> None:
    """a (held until `gate` exists) -> b; c waits for the external signal go."""
    ws.write_pipeline("p", f'''
description = "two steps and a signal"
[agents.a]
command = {json.dumps(ws.agent_cmd("--gate", str(gate), "--write", "out/a.txt=a"))}
outputs = ["out/a.txt"]
[agents.b]
command = {json.dumps(ws.agent_cmd("--write", "out/b.txt=b"))}
after = ["a"]
outputs = ["out/b.txt"]
[agents.c]
command = {json.dumps(ws.agent_cmd())}
wait_for = ["go"]
''')


def test_tools_have_descriptions_and_schemas_with_defaults_and_limits(ws, errlog):
    async def body():
        async with connect(ws.root, errlog) as session:
            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and tool.input_schema["type"] == "object"
            timeout = tools["wait"].input_schema["properties"]["timeout"]
            assert (timeout["type"], timeout["default"], timeout["minimum"]) == ("number", 30, 0)
            assert "300" in timeout["description"]
            tail = tools["logs"].input_schema["properties"]["tail"]
            assert (tail["type"], tail["default"], tail["minimum"]) == ("integer", 100, 1)
            assert tools["logs"].input_schema["required"] == ["task"]
            assert tools["signal"].input_schema["required"] == ["name"]
            tasks = tools["run"].input_schema["properties"]["tasks"]
            assert {"type": "array", "items": {"type": "string"}} in tasks["anyOf"]
    anyio.run(body)


def test_every_tool_drives_a_pipeline(ws, errlog):
    gate = ws.root / "release-a"
    two_step(ws, gate)

    async def body():
        async with connect(ws.root, errlog) as session:
            listed = await call(session, "list")
            assert listed == {"pipelines": [{"name": "p", "description": "two steps and a signal",
                                             "agents": ["p:a", "p:b", "p:c"]}]}
            assert states(await call(session, "status")) == {
                "p:a": "pending", "p:b": "waiting", "p:c": "waiting"}

            ran = await call(session, "run")     # returns while a is held by its gate
            assert states(ran)["p:a"] == "running" and states(ran)["p:b"] == "waiting"
            assert not gate.exists()

            began = time.monotonic()
            waited = await call(session, "wait", timeout=1)
            elapsed = time.monotonic() - began
            assert waited["finished"] is False and states(waited)["p:a"] == "running"
            assert elapsed < 1 + 2, elapsed   # bounded by its timeout, not by the agent

            log = await call(session, "logs", task="p:a")
            assert log["task"] == "p:a" and log["log"].startswith("started a run p.a.")
            assert (await call(session, "signal", name="go")) == {"signal": "go", "created": True}
            assert (await call(session, "signal", name="go"))["created"] is False

            gate.touch()
            done = await call(session, "wait", tasks=["p"], timeout=60)
            assert done["finished"] is True
            assert set(states(done).values()) == {"done"}
            assert (ws.root / "out" / "b.txt").read_text() == "b"
            tail = await call(session, "logs", task="p:a", tail=1)
            assert tail["log"] == "finished a with exit 0\n"
            status = await call(session, "status", tasks=["p:b"])
            assert states(status) == {"p:a": "done", "p:b": "done"}   # b and its upstream
            assert status["agents"][1]["exit_code"] == 0

            again = await call(session, "run")
            assert set(states(again).values()) == {"done"}
            assert await call(session, "cancel") == {"agents": []}
    anyio.run(body)
    assert sorted(e["agent"] for e in ws.launches()) == ["a", "b", "c"]


def test_cancel_stops_the_agent_and_returns_its_record(ws, errlog):
    two_step(ws, ws.root / "never")

    async def body():
        async with connect(ws.root, errlog) as session:
            await call(session, "run", tasks=["p:a"])
            pid = ws.status("p", "a")["pid"]
            cancelled = await call(session, "cancel", tasks=["p:a"])
            assert [(a["task"], a["state"]) for a in cancelled["agents"]] == [("p:a", "cancelled")]
            assert cancelled["agents"][0]["reason"] == "cancelled by user"
            assert not group_alive(pid)      # cancel returned once no process was left
            assert states(await call(session, "status", tasks=["p:a"])) == {"p:a": "cancelled"}
    anyio.run(body)


def test_wait_is_bounded_and_caps_its_timeout(ws, errlog):
    two_step(ws, ws.root / "never")

    async def body():
        async with connect(ws.root, errlog) as session:
            began = time.monotonic()
            now = await call(session, "wait", tasks=["p:a"], timeout=0)
            assert now["finished"] is False and "p:a" in states(now)
            assert time.monotonic() - began < 2
            ws.wait_state("p", "a", "running")
            (ws.root / "never").touch()
            # above the cap is no error (taken as 300); it returns when a is done
            done = await call(session, "wait", tasks=["p:a"], timeout=100000)
            assert done == {"finished": True, "agents": done["agents"]}
            assert states(done) == {"p:a": "done"}
    anyio.run(body)


def test_wait_returns_in_time_while_another_process_holds_the_scheduling_lock(ws, errlog):
    """Its launch and passes block on the lock; the call still returns at its
    timeout, and the launch goes on once the lock is free."""
    two_step(ws, ws.root / "never")
    ws.state.mkdir(exist_ok=True)
    lock = os.open(Layout(ws.root).lock_path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)

    async def body():
        async with connect(ws.root, errlog) as session:
            try:
                began = time.monotonic()
                waited = await call(session, "wait", tasks=["p:a"], timeout=1)
                elapsed = time.monotonic() - began
            finally:
                os.close(lock)
            assert waited["finished"] is False and states(waited) == {"p:a": "pending"}
            assert elapsed < 1 + 2, elapsed
            ws.wait_state("p", "a", "running")
            assert states(await call(session, "status", tasks=["p:a"])) == {"p:a": "running"}
    anyio.run(body)


def test_mistakes_are_tool_errors_with_the_command_lines_message(ws, errlog):
    two_step(ws, ws.root / "never")
    good = (ws.root / "pipelines" / "p.toml").read_text()

    async def body():
        async with connect(ws.root, errlog) as session:
            text = await error(session, "status", tasks=["nope"])
            assert cli_message(ws, "status", "nope") in text
            text = await error(session, "logs", task="nope")
            assert cli_message(ws, "logs", "nope") in text
            text = await error(session, "signal", name="no way")
            assert cli_message(ws, "signal", "no way") in text
            assert "tasks" in await error(session, "run", tasks="p")        # not a list
            assert "timeout" in await error(session, "wait", timeout="soon")
            assert "tail" in await error(session, "logs", task="p:a", tail=-5)
            assert "timeout" in await error(session, "wait", timeout=-1)

            (ws.root / "pipelines" / "p.toml").write_text(good + "bogus = 1\n")
            expected = cli_message(ws, "run")              # what `doit` prints: launching refuses
            assert expected.startswith("invalid pipeline:\npipelines/p.toml")
            for tool in ("run", "wait", "retry"):
                assert expected in await error(session, tool)
            assert ws.launches() == []          # nothing launched from an invalid pipeline

            (ws.root / "pipelines" / "p.toml").write_text(good)   # fixed: no restart needed
            assert "p:a" in states(await call(session, "status"))
            (ws.root / "pipelines" / "q.toml").write_text('[agents.x]\ncommand = "true"\n')
            assert [p["name"] for p in (await call(session, "list"))["pipelines"]] == ["p", "q"]
    anyio.run(body)


def test_looking_and_cancelling_answer_for_the_valid_pipelines_with_a_warning(ws, errlog):
    """As the command line: `doit status` warns about an invalid file and
    answers for the others; so do status, list, logs and cancel."""
    two_step(ws, ws.root / "never")
    ws.write_pipeline("bad", '[agents.x]\ncommand = "true"\nbogus = 1\n')
    cli = ws.doit("status", "--json", check_rc=0)
    warning = cli.stderr.splitlines()

    async def body():
        async with connect(ws.root, errlog) as session:
            status = await call(session, "status")
            assert set(states(status)) == set(states(json.loads(cli.stdout)))
            assert status["warnings"] == warning
            assert any("pipelines/bad.toml: agent 'x': key 'bogus'" in w for w in warning)
            listed = await call(session, "list")
            assert [p["name"] for p in listed["pipelines"]] == ["p"]
            assert listed["warnings"] == warning
            assert (await call(session, "logs", task="p:a"))["task"] == "p:a"
            assert await call(session, "cancel") == {"agents": []}   # the stop button stays
    anyio.run(body)


def test_retry_relaunches_a_failed_agent_and_gives_feedback(ws, errlog):
    # the server runs with no PATH: agents name their interpreter
    flaky = [sys.executable, "-c", "import os, sys; sys.exit(not os.path.exists('fixed'))"]
    told = [sys.executable, "-c", "import os; feedback = os.environ.get('ORCHESTRATE_FEEDBACK'); "
            "open('told.txt', 'w').write(open(feedback).read() if feedback else '')"]
    ws.write_pipeline("p", f'''
[agents.flaky]
command = {json.dumps(flaky)}
[agents.told]
command = {json.dumps(told)}
outputs = ["told.txt"]
''')

    async def body():
        async with connect(ws.root, errlog) as session:
            waited = await call(session, "wait", timeout=60)
            assert states(waited) == {"p:flaky": "failed", "p:told": "done"}
            (ws.root / "fixed").touch()
            retried = await call(session, "retry", tasks=["p:flaky"])
            assert [a["task"] for a in retried["agents"]] == ["p:flaky"]
            assert states(await call(session, "wait", timeout=60))["p:flaky"] == "done"
            told = await call(session, "retry", tasks=["p:told"], feedback="say more\n")
            assert states(told) == {"p:told": states(told)["p:told"]}
            assert states(await call(session, "wait", timeout=60))["p:told"] == "done"
            assert (ws.root / "told.txt").read_text() == "say more\n"
            assert "feedback needs the agents" in await error(session, "retry", feedback="x")
    anyio.run(body)


def test_agents_outlive_a_client_that_closed(ws, errlog):
    """The host closes the session: the SDK ends the server and kills its
    process group; agents and the advancer live in sessions of their own."""
    gate = ws.root / "release-a"
    two_step(ws, gate)

    async def body():
        async with connect(ws.root, errlog) as session:
            await call(session, "run", tasks=["p:b"])
    anyio.run(body)
    assert not server_pids(ws.root)
    assert ws.state_of("p", "a") == "running" and group_alive(ws.status("p", "a")["pid"])
    gate.touch()
    wait_until(lambda: ws.signal("p", "b").exists(), what="b done")


def test_agents_outlive_a_server_killed_with_sigkill(ws, errlog):
    gate = ws.root / "release-a"
    two_step(ws, gate)

    seen = {}

    async def first_server():
        async with connect(ws.root, errlog) as session:
            seen["ran"] = states(await call(session, "run", tasks=["p:b"]))
            [pid] = server_pids(ws.root)
            os.kill(pid, signal.SIGKILL)
            seen["killed"] = pid
            wait_until(lambda: not server_pids(ws.root), what="the server gone")
    with contextlib.suppress(Exception):     # the client sees its server vanish
        anyio.run(first_server)
    assert seen == {"ran": {"p:a": "running", "p:b": "waiting"}, "killed": seen["killed"]}
    assert ws.state_of("p", "a") == "running"
    gate.touch()                 # a finishes, the pipeline advances without any server
    wait_until(lambda: ws.signal("p", "b").exists(), what="b done")

    async def second_server():
        async with connect(ws.root, errlog) as session:
            assert states(await call(session, "status", tasks=["p:b"])) == {
                "p:a": "done", "p:b": "done"}
    anyio.run(second_server)
    assert sorted(e["agent"] for e in ws.launches()) == ["a", "b"]


def test_the_next_wait_goes_on_where_a_killed_advancer_stopped(ws, errlog):
    gate = ws.root / "release-a"
    two_step(ws, gate)

    async def body():
        async with connect(ws.root, errlog) as session:
            await call(session, "run", tasks=["p:b"])
            for pid in wait_until(ws.advancer_pids, what="the advancer"):
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not ws.advancer_pids(), what="the advancer gone")
            gate.touch()          # a ends with nobody to settle it or launch b
            wait_until(lambda: (ws.root / "out" / "a.txt").exists(), what="a's output")
            done = await call(session, "wait", tasks=["p:b"], timeout=60)
            assert done["finished"] is True
            assert states(done) == {"p:a": "done", "p:b": "done"}
    anyio.run(body)
    assert sorted(e["agent"] for e in ws.launches()) == ["a", "b"]


def test_two_servers_on_one_workspace_launch_each_agent_once(ws, errlog):
    ws.write_pipeline("p", "\n".join(
        f'[agents.a{i}]\ncommand = {json.dumps(ws.agent_cmd("--sleep", "0.2"))}\n'
        + (f'after = ["a{i - 1}"]\n' if i % 3 else "") for i in range(9)))

    async def one(tool: str, results: list):
        async with connect(ws.root, errlog) as session:
            await call(session, tool, timeout=120) if tool == "wait" else await call(session, tool)
            results.append(await call(session, "wait", timeout=120))

    async def body():
        results: list = []
        async with anyio.create_task_group() as group:
            group.start_soon(one, "run", results)
            group.start_soon(one, "wait", results)
        return results
    results = anyio.run(body)
    assert [r["finished"] for r in results] == [True, True]
    assert all(set(states(r).values()) == {"done"} for r in results)
    counts = {}
    for entry in ws.launches():
        counts[entry["agent"]] = counts.get(entry["agent"], 0) + 1
    assert counts == {f"a{i}": 1 for i in range(9)}


def test_stdout_carries_only_protocol(ws):
    """Raw JSON-RPC over the pipes, no SDK in between: every line the server
    writes is a JSON-RPC message, although `run` starts doit and agents."""
    two_step(ws, ws.root / "never")
    (ws.root / "never").touch()
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "wait", "arguments": {"tasks": ["p:b"], "timeout": 60}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "logs", "arguments": {"task": "p:a"}}},
    ]
    proc = subprocess.Popen([sys.executable, "-m", "orchestrate", "mcp", str(ws.root)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        replies = []
        for message in messages:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" in message:
                replies.append(json.loads(proc.stdout.readline()))
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert [r["id"] for r in replies] == [1, 2, 3] and rest == ""
    assert replies[1]["result"]["structuredContent"]["finished"] is True
    assert "started a" in replies[2]["result"]["structuredContent"]["log"]


def test_a_stray_print_in_a_tool_goes_to_stderr_not_the_wire(ws):
    noisy = ("import sys; from pathlib import Path; from orchestrate.cli import mcp_tools, mcp_server\n"
             "original = mcp_tools.Toolbox.list\n"
             "def noisy(self):\n    print('stray print'); return original(self)\n"
             "mcp_tools.Toolbox.list = noisy\n"
             "mcp_server.serve(Path(sys.argv[1]))\n")
    proc = subprocess.Popen([sys.executable, "-c", noisy, str(ws.root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for message in [
                {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"}}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "list", "arguments": {}}}]:
            proc.stdin.write(json.dumps(message) + "\n")
            proc.stdin.flush()
            if "id" in message:
                reply = json.loads(proc.stdout.readline())
        assert reply["id"] == 2 and reply["result"]["structuredContent"] == {"pipelines": []}
        proc.stdin.close()
        assert proc.stdout.read() == "" and proc.wait(timeout=30) == 0
        assert "stray print" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_server_refuses_a_missing_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "mcp", str(tmp_path / "none")],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3 and "no such folder" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("folder", ["mcp", "orchestrate"])
def test_a_folder_that_shadows_a_package_is_named_not_taken_for_a_missing_extra(
        tmp_path, folder):
    # a clone named orchestrate (no __init__.py at its top), or a package named mcp,
    # in the current folder: python -m imports it in place of the installed one
    (tmp_path / folder).mkdir()
    if folder == "mcp":
        (tmp_path / folder / "__init__.py").write_text("")
    proc = subprocess.run([sys.executable, "-m", "orchestrate", "mcp"], cwd=tmp_path,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 3
    assert f"{tmp_path / folder} shadows the installed {folder} package" in proc.stderr
    assert "mcp extra" not in proc.stderr and "Traceback" not in proc.stderr


def test_the_server_init_registered_runs_the_example_pipeline(tmp_path, errlog):
    """Started from the `.mcp.json` entry init wrote, as Claude Code starts it."""
    root = (tmp_path / "new").resolve()
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    entry = json.loads((root / ".mcp.json").read_text())["mcpServers"]["orchestrate"]
    params = StdioServerParameters(command=entry["command"], args=entry["args"], cwd="/")

    async def body():
        async with connect(root, errlog, params) as session:
            listed = await call(session, "list")
            assert listed["pipelines"][0]["agents"] == [
                "example:list", "example:count", "example:types", "example:report"]
            done = await call(session, "wait", timeout=120)
            assert done["finished"] is True and set(states(done).values()) == {"done"}
    try:
        anyio.run(body)
        assert (root / "reports" / "report.txt").read_text().startswith("files: ")
    finally:
        Workspace(root).kill_everything()


def test_the_tool_timing_bench_runs():
    """`python -m bench.mcp` (README figures), one round, so it cannot rot."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "bench.mcp", "--repeat", "1"], cwd=repo,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    for label in ("start + initialize", "list", "run (launches)", "wait (until done)", "logs",
                  "signal", "cancel (nothing running)"):
        assert f"\n{label} " in proc.stdout, proc.stdout


def test_the_plan_tool_answers_as_doit_plan_json_and_changes_nothing(ws, errlog):
    ws.write_pipeline("p", f'[agents.a]\ncommand = {json.dumps(ws.agent_cmd())}\n')
    expected = json.loads(ws.doit("plan", "--json", check_rc=0).stdout)
    listing = sorted(str(p.relative_to(ws.root)) for p in ws.state.rglob("*"))

    async def body():
        async with connect(ws.root, errlog) as session:
            assert await call(session, "plan") == expected
            assert await call(session, "plan", tasks=["p:a"]) == expected
            result = await session.call_tool("plan", {"tasks": ["p:nope"]})
            assert result.is_error and "no pipeline or agent matches" in result.content[0].text
    anyio.run(body)
    assert [a["task"] for a in expected["agents"]] == ["p:a"]
    assert sorted(str(p.relative_to(ws.root)) for p in ws.state.rglob("*")) == listing
    assert ws.launches() == []
