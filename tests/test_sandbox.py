"""`sandbox = true`: the escape suite and the sandbox's contract, with real
bubblewrap, real doit and real processes.

Every probe (tests/sandbox_probe.py) is an agent that tries one way out and
reports; each runs twice, in a sandboxed workspace and in a plain one. The
sandboxed run must be blocked, and the plain run must escape: a probe that
cannot escape even without a sandbox proves nothing. The allowed things
(outputs, cwd, TMPDIR, inputs, a commit in a worktree, a request to an
allowed host) work in both.

Without bubblewrap these tests skip with the install line; under CI=true
they fail instead.
"""
from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Workspace, wait_until

PROBE = Path(__file__).with_name("sandbox_probe.py")
INSTALL = "apt-get install bubblewrap"
MARK = "# written by a sandbox probe"


def needs_bubblewrap() -> None:
    """Skip (fail under CI=true) when bwrap is missing or cannot make namespaces."""
    found = shutil.which("bwrap")
    problem = None if found else "bwrap not found"
    if found:
        trial = subprocess.run([found, "--ro-bind", "/", "/", "--unshare-net", "--unshare-pid",
                                "true"], capture_output=True, text=True)
        problem = trial.stderr.strip() if trial.returncode else None
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the sandbox tests need bubblewrap ({problem}): {INSTALL}")
        pytest.skip(f"the sandbox tests need bubblewrap ({problem}): {INSTALL}")


@pytest.fixture
def bubblewrap():
    needs_bubblewrap()


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def http_server() -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class UnixListener:
    """A host Unix socket (as docker's or ssh-agent's) that records what reaches it."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="orchestrate-probe-", dir="/tmp"))
        self.path = self.folder / "host.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(4)
        self.received = b""
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                self.received += conn.recv(100)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class World:
    """One workspace with every probe run in it, and what lies around it."""
    mode: str
    ws: Workspace
    home: Path
    outside: Path
    token: str
    etc_file: Path
    unix: UnixListener
    allowed: http.server.ThreadingHTTPServer
    forbidden: http.server.ThreadingHTTPServer
    sleepers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def sandboxed(self) -> bool:
        return self.mode == "sandboxed"

    def log(self, probe: str) -> str:
        path = self.ws.state / "logs" / "probes" / f"{probe}.log"
        return path.read_text() if path.exists() else ""

    def said_ok(self, probe: str) -> bool:
        return any(line.endswith(" ok") for line in self.log(probe).splitlines())

    def shows_token(self, probe: str) -> bool:
        return self.token in self.log(probe)


def plant_home(home: Path, token: str) -> None:
    """The user's secrets, as a person's home holds them."""
    for rel in (".ssh/id_rsa", ".aws/credentials", ".netrc", ".git-credentials",
                ".config/gcloud/credentials.db"):
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"secret {token}\n")


def make_world(base: Path, mode: str) -> World:
    token = secrets.token_hex(8)
    outside = base / "outside"
    outside.mkdir()
    (outside / "target.txt").write_text("untouched\n")
    root = base / "ws"
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    (root / "pipelines" / "example.toml").unlink()
    (root / "notes").mkdir()
    # in the workspace: the checkout may lie in a folder the sandbox hides
    shutil.copy(PROBE, root / PROBE.name)
    (root / "notes" / "input.txt").write_text(f"input {token}\n")
    git = ["git", "-C", str(root), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    # The user's home inside the workspace, which is readable and writable
    # there: only the private home hides it (a home under /tmp would be
    # hidden by the sandbox's own /tmp already, and prove less).
    home = root / "user-home"
    home.mkdir()
    plant_home(home, token)
    with open(root / ".git" / "info" / "exclude", "a") as handle:
        handle.write("user-home/\n")
    world = World(mode, Workspace(root.resolve()), home, outside, token,
                  Path(f"/etc/orchestrate-probe-{token}"), UnixListener(), http_server(),
                  http_server())
    for name in ("signal", "proc"):
        world.sleepers[name] = subprocess.Popen(
            ["sleep", "600"], env={"PROBE_SECRET": token, "PATH": os.environ["PATH"]},
            start_new_session=True)
    return world


def probe_agents(world: World) -> dict[str, tuple[list[str], dict]]:
    """name -> (probe argv, extra agent keys)."""
    ws, home = world.ws.root, world.home
    forbidden_port = world.forbidden.server_address[1]
    allowed_port = world.allowed.server_address[1]
    return {
        "write_outside": (["create", str(world.outside / "new.txt")], {}),
        "write_home": (["create", str(home / "planted.txt")], {}),
        "write_etc": (["create", str(world.etc_file)], {}),
        "write_pipelines": (["append", str(ws / "pipelines" / "probes.toml")], {}),
        "write_dodo": (["append", str(ws / "dodo.py")], {}),
        "write_pyproject": (["append", str(ws / "pyproject.toml")], {}),
        "write_git_hooks": (["create", str(ws / ".git" / "hooks" / "probe-hook")], {}),
        "write_git_config": (["append", str(ws / ".git" / "config")], {}),
        "forge_signal": (["create", str(ws / ".orchestrate" / "signals" / "forged.signal")], {}),
        "forge_exit": (["create", str(ws / ".orchestrate" / "runs" / "forged.exit")], {}),
        # a status file of its own name would be read as an agent's record: a .tmp
        "forge_status": (["create", str(ws / ".orchestrate" / "status" / "probes"
                                        / "forged.json.tmp")], {}),
        "symlink_escape": (["symlink", str(world.outside / "target.txt")], {}),
        "read_ssh": (["read", str(home / ".ssh" / "id_rsa")], {}),
        "read_aws": (["read", str(home / ".aws" / "credentials")], {}),
        "read_netrc": (["read", str(home / ".netrc")], {}),
        "read_git_credentials": (["read", str(home / ".git-credentials")], {}),
        "read_gcloud": (["read", str(home / ".config/gcloud/credentials.db")], {}),
        "signal_outside": (["signal", str(world.sleepers["signal"].pid)], {}),
        "read_proc_outside": (["proc", str(world.sleepers["proc"].pid)], {}),
        "host_unix_socket": (["unix", str(world.unix.path)], {}),
        "direct_tcp": (["tcp", str(forbidden_port)], {}),
        "proxied_forbidden": (["http", f"http://127.0.0.1:{forbidden_port}/"], {}),
        "new_privileges": (["nnp"], {}),
        "ssh_agent": (["env", "SSH_AUTH_SOCK"], {}),
        # allowed
        "output": (["create", "build/probe-out.txt"], {"outputs": ["build/probe-out.txt"]}),
        "cwd": (["create", "probe-cwd.txt"], {}),
        "tmpdir": (["tmpdir"], {}),
        "inputs": (["read", "notes/input.txt"], {"inputs": ["notes/input.txt"]}),
        "commit": (["commit"], {"isolation": "worktree"}),
        "allowed_host": (["http", f"http://127.0.0.1:{allowed_port}/"], {}),
    }


def probes_pipeline(world: World) -> str:
    lines = []
    if world.sandboxed:
        port = world.allowed.server_address[1]
        lines += ["[defaults]", f'sandbox = {{ network = ["127.0.0.1:{port}"] }}', ""]
    for name, (argv, keys) in probe_agents(world).items():
        lines.append(f"[agents.{name}]")
        probe = str(world.ws.root / PROBE.name)
        lines.append(f"command = {json.dumps([sys.executable, probe, *argv])}")
        lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
        lines.append("")
    return "\n".join(lines)


def doit_env(world: World) -> dict[str, str]:
    env = {"HOME": str(world.home), "SSH_AUTH_SOCK": str(world.unix.path)}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        env[name] = ""
    return env


@pytest.fixture(scope="module", params=["sandboxed", "plain"])
def world(request, tmp_path_factory):
    """Both workspaces' probes run at once by one `doit wait` each."""
    needs_bubblewrap()
    world = make_world(tmp_path_factory.mktemp(request.param), request.param)
    try:
        world.ws.write_pipeline("probes", probes_pipeline(world))
        env = {k: v for k, v in doit_env(world).items() if v}
        proc = subprocess.run([sys.executable, "-m", "doit", "wait", "--timeout", "240"],
                              cwd=world.ws.root, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL,
                              env={**{k: v for k, v in os.environ.items()
                                      if k.lower() not in ("http_proxy", "https_proxy",
                                                           "all_proxy", "no_proxy")}, **env})
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        yield world
    finally:
        world.ws.kill_everything()
        for sleeper in world.sleepers.values():
            sleeper.kill()
            sleeper.wait()
        world.unix.close()
        world.allowed.shutdown()
        world.forbidden.shutdown()
        world.etc_file.unlink(missing_ok=True)


def marked(path: Path) -> bool:
    return path.exists() and MARK in path.read_text()


FORBIDDEN = {
    "write_outside": lambda w: (w.outside / "new.txt").exists(),
    "write_home": lambda w: (w.home / "planted.txt").exists(),
    "write_etc": lambda w: w.etc_file.exists(),
    "write_pipelines": lambda w: marked(w.ws.root / "pipelines" / "probes.toml"),
    "write_dodo": lambda w: marked(w.ws.root / "dodo.py"),
    "write_pyproject": lambda w: marked(w.ws.root / "pyproject.toml"),
    "write_git_hooks": lambda w: (w.ws.root / ".git" / "hooks" / "probe-hook").exists(),
    "write_git_config": lambda w: marked(w.ws.root / ".git" / "config"),
    "forge_signal": lambda w: (w.ws.state / "signals" / "forged.signal").exists(),
    "forge_exit": lambda w: (w.ws.state / "runs" / "forged.exit").exists(),
    "forge_status": lambda w: (w.ws.state / "status" / "probes" / "forged.json.tmp").exists(),
    "symlink_escape": lambda w: "symlink" in (w.outside / "target.txt").read_text(),
    "read_ssh": lambda w: w.shows_token("read_ssh"),
    "read_aws": lambda w: w.shows_token("read_aws"),
    "read_netrc": lambda w: w.shows_token("read_netrc"),
    "read_git_credentials": lambda w: w.shows_token("read_git_credentials"),
    "read_gcloud": lambda w: w.shows_token("read_gcloud"),
    "signal_outside": lambda w: w.sleepers["signal"].poll() is not None,
    "read_proc_outside": lambda w: w.shows_token("read_proc_outside"),
    "host_unix_socket": lambda w: b"sandbox probe" in w.unix.received,
    "direct_tcp": lambda w: w.said_ok("direct_tcp"),
    "proxied_forbidden": lambda w: w.said_ok("proxied_forbidden"),
    "new_privileges": lambda w: w.said_ok("new_privileges"),
    "ssh_agent": lambda w: w.said_ok("ssh_agent"),
}

ALLOWED = {
    "output": lambda w: (w.ws.root / "build" / "probe-out.txt").exists(),
    "cwd": lambda w: (w.ws.root / "probe-cwd.txt").exists(),
    "tmpdir": lambda w: w.said_ok("tmpdir"),
    "inputs": lambda w: w.shows_token("inputs"),
    "commit": lambda w: w.said_ok("commit") and "probe commit" in subprocess.run(
        ["git", "-C", str(w.ws.root), "log", "--format=%s", "orchestrate/probes/commit"],
        capture_output=True, text=True).stdout,
    "allowed_host": lambda w: w.said_ok("allowed_host") and "hello" in w.log("allowed_host"),
}


def _host_has_no_new_privs() -> bool:
    status = Path("/proc/self/status").read_text()
    return "NoNewPrivs:\t1" in status


@pytest.mark.parametrize("probe", sorted(FORBIDDEN))
def test_a_forbidden_thing_is_blocked_only_in_the_sandbox(world, probe):
    if probe == "new_privileges" and not world.sandboxed and _host_has_no_new_privs():
        pytest.skip("this test process already runs with no_new_privs: nothing to escape")
    escaped = FORBIDDEN[probe](world)
    assert world.ws.state_of("probes", probe) == "done", world.log(probe)
    assert escaped is (not world.sandboxed), (world.mode, world.log(probe))


@pytest.mark.parametrize("probe", sorted(ALLOWED))
def test_an_allowed_thing_works_in_both(world, probe):
    assert ALLOWED[probe](world), (world.mode, world.log(probe))


def test_a_refused_connection_is_one_line_in_the_log(world):
    port = world.forbidden.server_address[1]
    lines = [line for line in world.log("proxied_forbidden").splitlines()
             if line.startswith("sandbox: blocked")]
    assert lines == ([f"sandbox: blocked 127.0.0.1:{port}"] if world.sandboxed else [])


# -- the key, the policy and `doit info` (no bubblewrap needed) --------------
def load(root: Path, pipeline: str, pyproject: str = ""):
    from orchestrate.runtime.workspace import load_workspace
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "pipelines" / "p.toml").write_text(pipeline)
    if pyproject:
        (root / "pyproject.toml").write_text(pyproject)
    return load_workspace(root)


def problems(root: Path, pipeline: str, pyproject: str = "") -> str:
    from orchestrate.core.spec import PipelineError
    with pytest.raises(PipelineError) as caught:
        load(root, pipeline, pyproject)
    return str(caught.value)


@pytest.mark.parametrize("value, said", [
    ('{ netwrok = ["a.com"] }', "unknown key 'netwrok' (did you mean 'network'?)"),
    ('{ network = ["a.com:http"] }', "network: 'a.com:http': bad port"),
    ('{ network = ["a.com:70000"] }', "network: 'a.com:70000': bad port"),
    ('{ network = ["bad host"] }', "network: 'bad host': bad host"),
    ('{ write = ["/etc"] }', "write: '/etc' is outside the workspace"),
    ('{ write = ["../elsewhere"] }', "write: '../elsewhere' is outside the workspace"),
    ('{ write = ["pipelines/x"] }', "write: 'pipelines/x' is always read-only"),
    ('"yes"', "expected true, false or a table"),
])
def test_a_bad_sandbox_value_names_file_agent_and_key(tmp_path, value, said):
    text = problems(tmp_path, f'[agents.a]\ncommand = "true"\nsandbox = {value}\n')
    assert f"pipelines/p.toml: agent 'a': key 'sandbox': {said}" in text


def test_a_bad_workspace_default_names_pyproject(tmp_path):
    text = problems(tmp_path, '[agents.a]\ncommand = "true"\n',
                    '[tool.orchestrate]\nsandbox = { write = ["/tmp"] }\n')
    assert "pyproject.toml: key 'tool.orchestrate.sandbox': write: '/tmp' is outside" in text


def test_the_workspace_default_defaults_and_the_agent_key_in_that_order(tmp_path):
    from orchestrate.core.sandbox import Sandbox
    pipeline = """[defaults]
sandbox = { write = ["cache"] }
[agents.from_defaults]
command = "true"
[agents.off]
command = "true"
sandbox = false
[agents.own]
command = "true"
sandbox = { network = ["127.0.0.1:8080"] }
"""
    workspace = load(tmp_path, pipeline, "[tool.orchestrate]\nsandbox = true\n")
    agents = workspace.pipeline("p")
    assert agents.agent("from_defaults").sandbox == Sandbox(write=("cache",))
    assert agents.agent("off").sandbox is None
    assert agents.agent("own").sandbox == Sandbox(network=("127.0.0.1:8080",))
    (tmp_path / "pipelines" / "p.toml").write_text('[agents.a]\ncommand = "true"\n')
    assert load(tmp_path, '[agents.a]\ncommand = "true"\n').pipeline("p").agent(
        "a").sandbox == Sandbox()


def test_a_preset_allows_its_api_host_and_its_base_url_host():
    from orchestrate.core.sandbox import Sandbox, host_allowed, policy
    rules = policy(Sandbox(network=("pypi.org:443",)), "p", "a", ".", ("out/x.md",), "claude",
                   {"ANTHROPIC_BASE_URL": "http://127.0.0.1:8080/v1"}, isolated=False)
    assert rules.hosts == ("api.anthropic.com", "127.0.0.1", "pypi.org:443")
    assert rules.writable == (".", "out")
    assert host_allowed("api.anthropic.com", 443, rules.hosts)
    assert host_allowed("127.0.0.1", 8080, rules.hosts)
    assert not host_allowed("pypi.org", 80, rules.hosts)
    assert not host_allowed("evil.example.com", 443, rules.hosts)
    plain = policy(Sandbox(), "p", "a", "sub", (), None, {"ANTHROPIC_BASE_URL": "http://x"},
                   isolated=True)
    assert plain.hosts == ()
    assert plain.writable == (".orchestrate/worktrees/p/a/sub",)


@pytest.mark.parametrize("host, port, allowed", [
    ("api.example.com", 443, True), ("API.Example.com", 8443, True),
    ("x.cdn.example.org", 443, True), ("cdn.example.org", 443, False),
    ("evil-cdn.example.org", 443, False), ("127.0.0.1", 8080, True), ("127.0.0.1", 8081, False),
    ("::1", 8080, True), ("::1", 80, False), ("example.com", 443, False)])
def test_network_entries_allow_hosts_ports_and_names_under_a_domain(host, port, allowed):
    from orchestrate.core.sandbox import check_sandbox, host_allowed
    entries = check_sandbox({"network": ["api.example.com", "*.cdn.example.org",
                                         "127.0.0.1:8080", "[::1]:8080"]}).network
    assert host_allowed(host, port, entries) is allowed


def test_info_shows_the_policy(ws):
    ws.write_pipeline("p", """[agents.a]
agent = "codex"
prompt = "hi"
outputs = ["build/a.md"]
env = { OPENAI_BASE_URL = "http://127.0.0.1:9999/v1" }
sandbox = { network = ["pypi.org"], write = ["cache"] }
[agents.b]
command = "true"
""")
    shown = ws.doit("info", "p:a").stdout
    assert "sandbox    : writable: ., build, cache, its TMPDIR, its run's files" in shown
    assert "always pipelines, dodo.py, pyproject.toml, .mcp.json, .git/hooks" in shown
    assert "home: private (.orchestrate/sandbox/home/p/a), with ~/.codex" in shown
    assert "network: api.openai.com, 127.0.0.1, pypi.org (through orchestrate's proxy)" in shown
    assert "sandbox    : none" in ws.doit("info", "p:b").stdout


# -- running: no bubblewrap, the check, kill -9, cancel ------------------------
def test_without_bubblewrap_the_agent_fails_before_running(ws, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    marker = ws.root / "ran.txt"
    ws.write_pipeline("p", f"""[agents.a]
command = "touch {marker}"
sandbox = true
env = {{ PATH = "{empty}" }}
""")
    ws.doit("wait", check_rc=1)
    record = ws.status("p", "a")
    assert record["state"] == "failed"
    assert record["reason"] == ("could not start: the sandbox needs bubblewrap "
                                "(apt-get install bubblewrap)")
    assert not marker.exists()


def test_the_check_runs_in_the_sandbox_too(ws, bubblewrap):
    ws.write_pipeline("p", """[agents.a]
command = "echo made > made.txt"
sandbox = true
check = "cat made.txt && (echo probe-mark >> dodo.py && echo dodo-written || echo dodo-refused)"
""")
    ws.doit("wait", check_rc=0)
    said = (ws.state / "logs" / "p" / "a.check.log").read_text().splitlines()[1:]
    assert "made" in said and "dodo-refused" in said, said
    assert "dodo-written" not in said and "probe-mark" not in (ws.root / "dodo.py").read_text()


def _go_and_fetch(ws, port: int) -> str:
    """An agent that waits for `go`, then asks an allowed host through the proxy."""
    script = (f"import os, time, urllib.request\n"
              f"while not os.path.exists('go'): time.sleep(0.05)\n"
              f"print(urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=10).read())\n")
    (ws.root / "fetch.py").write_text(script)
    return f"""[agents.a]
command = ["{sys.executable}", "fetch.py"]
sandbox = {{ network = ["127.0.0.1:{port}"] }}
timeout = "2m"
"""


def test_the_agent_keeps_its_network_when_every_orchestrator_is_killed(ws, bubblewrap):
    server = http_server()
    try:
        ws.write_pipeline("p", _go_and_fetch(ws, server.server_address[1]))
        ws.doit(check_rc=0)
        ws.wait_state("p", "a", "running")
        ws.kill_orchestrators()
        (ws.root / "go").touch()
        log = ws.state / "logs" / "p" / "a.log"
        wait_until(lambda: "hello" in log.read_text(), 60, "the agent's request")
        ws.doit("wait", check_rc=0)
        assert ws.state_of("p", "a") == "done"
    finally:
        server.shutdown()


def test_cancel_leaves_no_process_of_a_networked_sandbox(ws, bubblewrap):
    server = http_server()
    try:
        ws.write_pipeline("p", _go_and_fetch(ws, server.server_address[1]))
        ws.doit(check_rc=0)
        ws.wait_state("p", "a", "running")
        wait_until(lambda: len(ws.agent_pids()) >= 3, 30, "wrapper, proxy and agent")
        ws.doit("cancel", "p:a", check_rc=0)
        assert ws.state_of("p", "a") == "cancelled"
        wait_until(lambda: not ws.agent_pids(), 15, "every process of the run to be gone")
    finally:
        server.shutdown()


def test_a_sandboxed_agent_on_slurm_runs_in_the_same_sandbox(slurm_cluster, ws, bubblewrap):
    """The Slurm job runs the very wrapper, so the sandbox comes with it."""
    with open(ws.root / "pyproject.toml", "a") as handle:
        handle.write('\n[tool.orchestrate]\nexecutor = "slurm"\n'
                     '[tool.orchestrate.slurm]\npoll = "200ms"\npartition = "debug"\n')
    ws.write_pipeline("p", """[agents.a]
command = "echo made > made.txt; (echo probe-mark >> dodo.py && echo dodo-written) || echo dodo-refused; grep NoNewPrivs /proc/self/status; echo job $SLURM_JOB_ID"
sandbox = true
""")
    ws.doit("wait", timeout=120, check_rc=0)
    record = ws.status("p", "a")
    log = (ws.root / record["log"]).read_text()
    assert record["state"] == "done" and record["job_id"], log
    assert (ws.root / "made.txt").exists()
    assert "dodo-refused" in log and "dodo-written" not in log, log
    assert "NoNewPrivs:\t1" in log and f"job {record['job_id']}" in log, log


def test_a_node_without_bubblewrap_refuses_in_the_log(tmp_path, bubblewrap):
    """What a Slurm job does on a node without bwrap: the wrapper itself
    refuses (exit 126, the install line in the log) and runs nothing."""
    from orchestrate.core.sandbox import Sandbox
    from orchestrate.core.spec import Agent
    from orchestrate.runtime.launcher import Launcher
    from orchestrate.runtime.state import Layout
    from orchestrate.runtime.wrapper import read_exit_code
    layout = Layout(tmp_path)
    layout.runs_dir.mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    agent = Agent(pipeline="p", name="a", command=f"touch {marker}", sandbox=Sandbox())
    argv, _, env = Launcher(layout).wrapped(agent, "p.a.1.x", 1, layout.no_upstream_file)
    env["PATH"] = str(tmp_path / "no-bwrap-here")
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert read_exit_code(layout.exit_file("p.a.1.x")) == 126
    assert done.stderr.strip() == ("could not start: the sandbox needs bubblewrap "
                                   "(apt-get install bubblewrap)")
    assert not marker.exists()


def test_a_bubblewrap_that_cannot_make_namespaces_fails_the_agent(ws, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    marker = ws.root / "ran.txt"
    ws.write_pipeline("p", f"""[agents.a]
command = "touch {marker}"
sandbox = true
env = {{ PATH = "{bin_dir}:/usr/bin:/bin" }}
""")
    ws.doit("wait", check_rc=1)
    assert ws.status("p", "a")["reason"] == (
        "could not start: the sandbox needs bubblewrap (apt-get install bubblewrap): "
        "bwrap: No permissions to create new namespace")
    assert not marker.exists()


def test_the_private_home_is_kept_between_runs_and_the_run_files_go(ws, bubblewrap):
    ws.write_pipeline("p", """[agents.a]
command = "echo run >> $HOME/runs.txt; wc -l < $HOME/runs.txt; touch $TMPDIR/scratch"
sandbox = { network = ["127.0.0.1:9"] }
""")
    ws.doit("wait", check_rc=0)
    ws.doit("forget", "p:a")
    ws.doit("wait", check_rc=0)
    log = (ws.state / "logs" / "p" / "a.log").read_text()
    assert log.strip().splitlines()[-1].strip() == "2", log
    assert (ws.state / "sandbox" / "home" / "p" / "a" / "runs.txt").read_text() == "run\nrun\n"
    runs = ws.state / "sandbox" / "runs"
    wait_until(lambda: not any(runs.iterdir()), 10, "the runs' TMPDIRs to be removed")
    assert not list((ws.state / "runs").glob("*.sock"))


def test_a_missing_cwd_is_reported_as_without_a_sandbox(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\ncwd = "nowhere"\nsandbox = true\n')
    ws.doit("wait", check_rc=1)
    assert ws.status("p", "a")["reason"] == ("could not start: working directory nowhere "
                                             "does not exist (key 'cwd')")
    assert not (ws.root / "nowhere").exists()


def test_a_toolchain_in_the_hidden_home_stays_usable_read_only(ws, tmp_path, bubblewrap):
    """A `PATH` folder in the user's home (~/.local/bin, ~/.cargo/bin) is
    bound back read-only; the rest of that home stays hidden."""
    home = tmp_path / "user"
    tools = home / ".local" / "bin"
    tools.mkdir(parents=True)
    (tools / "mytool").write_text("#!/bin/sh\necho mytool ran\n")
    (tools / "mytool").chmod(0o755)
    plant_home(home, "tok3n")
    ws.write_pipeline("p", """[agents.a]
command = "mytool; cat $HOME/.ssh/id_rsa || echo ssh-hidden; touch $HOME/.local/bin/x || echo tools-read-only"
sandbox = true
""")
    path = f"{tools}:{os.environ['PATH']}"
    ws.doit("wait", env={"HOME": str(home), "PATH": path}, check_rc=0)
    said = (ws.state / "logs" / "p" / "a.log").read_text()
    assert "mytool ran" in said and "ssh-hidden" in said and "tools-read-only" in said, said
    assert "tok3n" not in said


@pytest.mark.parametrize("keys", ['sandbox = { network = ["127.0.0.1:9"] }',
                                  'sandbox = true\ncheck = "true"'])
def test_a_stopped_sandboxed_agent_gets_its_grace(ws, bubblewrap, keys):
    """SIGTERM reaches the agent and bwrap outlives it, so the agent can
    clean up within kill_grace (bwrap dying first would SIGKILL it); with a
    proxy, and with a check (each puts the sandbox in a subshell)."""
    script = ("trap 'sleep 0.5; echo cleaned > cleaned.txt; exit 3' TERM; echo started; "
              "while true; do sleep 0.1; done")
    ws.write_pipeline("p", f"""[agents.a]
command = {json.dumps(["/bin/sh", "-c", script])}
{keys}
kill_grace = "20s"
""")
    ws.doit(check_rc=0)
    log = ws.state / "logs" / "p" / "a.log"
    wait_until(lambda: log.exists() and "started" in log.read_text(), 30, "the agent to start")
    ws.doit("cancel", "p:a", check_rc=0)
    assert (ws.root / "cleaned.txt").read_text() == "cleaned\n"
    assert ws.state_of("p", "a") == "cancelled"
    wait_until(lambda: not ws.agent_pids(), 15, "every process of the run to be gone")
