"""`sandbox = true`: the agent and its check run under bubblewrap.

The wrapper stays outside (it records the exit status); the command it runs
becomes `bwrap <mounts> <namespaces> -- command`. The policy is
`core.sandbox.policy`; this module places it on disk:

- mounts in order of depth (a deeper mount lands on top of a shallower
  one): `/` read-only, fresh `/dev`, `/proc` (of the new PID namespace),
  `/tmp` and `/run` as empty tmpfs (no host Unix socket: docker, ssh-agent,
  dbus), the user's `$HOME` replaced by the agent's private home (the
  preset's config bound in, and read-only the toolchain folders of `PATH`
  and Python that live in it), the workspace read-only, the writable paths
  bound back, the protected paths read-only again, the run's own files
  writable on top;
- an isolated agent's git objects, its worktree's git folder and its
  pipeline's branch folder writable, so it can commit on its own branch
  (`.git/hooks` and `.git/config` stay read-only);
- its own PID, network, IPC and UTS namespaces, a new session, no new
  privileges (bwrap always sets it), dying with its parent.

Network: the sandbox has only a loopback interface. When the policy allows
hosts, the wrapper starts `sandbox_proxy` (outside, its child: it lives as
long as the run, whatever happens to orchestrator processes) and the
command starts through `sandbox_bridge`, which listens on 127.0.0.1:3128
inside the sandbox and hands that socket to the proxy over a Unix socket;
`HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` point to it.
"""
from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..agents.presets import executable
from ..core import sandbox as policy_of
from ..core.sandbox import INSTALL_LINE, Policy
from ..core.spec import Agent
from .state import Layout

PROXY_PORT = 3128
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
              "all_proxy")
HERE = Path(__file__).resolve().parent
PACKAGE_PARENT = str(HERE.parent.parent)

# Mount order at one depth: hide, then home, then read-only, writable,
# protected, and the run's own files last (they win).
HIDE, HOME, READ, WRITE, PROTECT, OWN = range(6)


class SandboxUnavailable(OSError):
    """bubblewrap is missing or cannot make namespaces here: the agent fails
    before running anything (never a silent fallback to no sandbox)."""


_CHECKED: dict[str, str] = {}   # bwrap path -> "" (works) or what it said


def ensure_bubblewrap(path: str | None) -> str:
    """The bwrap found on `path`, after one trial run (per process) that
    makes the namespaces a sandbox needs."""
    found = shutil.which("bwrap", path=path)
    if found is None:
        raise SandboxUnavailable(INSTALL_LINE)
    if found not in _CHECKED:
        _CHECKED[found] = _trial(found)
    if _CHECKED[found]:
        raise SandboxUnavailable(f"{INSTALL_LINE}: {_CHECKED[found]}")
    return found


def _trial(bwrap: str) -> str:
    """"" when bwrap makes a sandbox's namespaces here, else what it said."""
    try:
        trial = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-pid", "--unshare-net",
                                "--unshare-ipc", "--unshare-uts", "--die-with-parent", "true"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    said = (trial.stderr.strip().splitlines() or [f"exit {trial.returncode}"])[-1]
    return "" if trial.returncode == 0 else said


def run_dir(layout: Layout, run_id: str) -> Path:
    """The run's own sandbox files: its TMPDIR, the proxy's socket."""
    return layout.base / "sandbox" / "runs" / run_id


def agent_policy(agent: Agent, environ: dict[str, str] | None = None) -> Policy:
    """The agent's policy (its `env` and the orchestrator's for base URLs)."""
    assert agent.sandbox is not None
    env = {**(environ or {}), **dict(agent.env)}
    return policy_of.policy(agent.sandbox, agent.pipeline, agent.name, agent.cwd,
                            agent.outputs, agent.preset, env, agent.isolation == "worktree")


# A stop sends SIGTERM to the wrapper's group and to every process of the
# run. bwrap would die of it at once, and its --die-with-parent would then
# SIGKILL the agent before its kill_grace: so bwrap starts with these
# signals ignored (GNU env), and the command with them back to default.
STOP_SIGNALS = "TERM,INT,HUP"
_GRACEFUL: list[bool] = []


def graceful_stop_possible() -> bool:
    """Has this system's `env` --ignore-signal and --default-signal (GNU
    coreutils 8.31+)? Without them a stopped sandboxed agent gets no grace."""
    if not _GRACEFUL:
        try:
            done = subprocess.run(["env", f"--ignore-signal={STOP_SIGNALS}",
                                   f"--default-signal={STOP_SIGNALS}", "true"],
                                  capture_output=True, timeout=30)
            _GRACEFUL.append(done.returncode == 0)
        except (OSError, subprocess.TimeoutExpired):
            _GRACEFUL.append(False)
    return _GRACEFUL[0]


@dataclass(frozen=True)
class SandboxRun:
    """One run's sandbox: bwrap's arguments, and what the proxy allows."""
    bwrap: tuple[str, ...]
    hosts: tuple[str, ...]
    runs: Path            # where the proxy's Unix socket is made
    graceful: bool = False   # bwrap outlives a SIGTERM, which the agent gets

    def script(self, command: str | tuple[str, ...], name: str) -> str:
        """sh text that runs `command` (an argv: given as "$@") in the
        sandbox and ends with its status; `name`: the proxy's socket."""
        inner = ["/bin/sh", "-c", command] if isinstance(command, str) else []
        rest = "" if isinstance(command, str) else ' "$@"'   # an argv: the wrapper's
        outer = list(self.bwrap)
        if self.graceful:
            outer = ["env", f"--ignore-signal={STOP_SIGNALS}", *outer]
            inner = ["env", f"--default-signal={STOP_SIGNALS}", *inner]
        check = (f"command -v bwrap >/dev/null 2>&1 || "
                 f"{{ echo {shlex.quote('could not start: ' + INSTALL_LINE)} >&2; exit 126; }}")
        # a subshell does not keep the wrapper's traps: it (and the proxy, for
        # the agent's last requests) ignores a stop's SIGTERM as bwrap does
        ignore = "trap '' TERM INT HUP; " if self.graceful else ""
        if not self.hosts:
            line = shlex.join([*outer, "--", *inner])
            return f"( {ignore}{check}\n{line}{rest} )" if ignore else f"{check}\n{line}{rest}"
        python = [sys.executable, "-I", "-S"]
        proxy = shlex.join([*python, str(HERE / "sandbox_proxy.py"), str(self.runs), name,
                            PACKAGE_PARENT, *self.hosts])
        bridge = shlex.join([*outer, "--", *python, str(HERE / "sandbox_bridge.py"),
                             str(self.runs), name, str(PROXY_PORT), "--", *inner])
        bridge += rest
        return (f"( {ignore}{check}\n{proxy} & orchestrate_proxy=$!\n{bridge}\n"
                "orchestrate_rc=$?; kill -KILL $orchestrate_proxy 2>/dev/null; "
                "exit $orchestrate_rc )")


def environment(env: dict[str, str], layout: Layout, run_id: str, hosts: tuple[str, ...]
                ) -> None:
    """The sandboxed environment, in place: a private TMPDIR, the proxy (or
    none), no ssh-agent, no proxy exceptions."""
    env["TMPDIR"] = str(run_dir(layout, run_id) / "tmp")
    for name in ("SSH_AUTH_SOCK", "NO_PROXY", "no_proxy", *PROXY_VARS):
        env.pop(name, None)
    if hosts:
        env.update({name: PROXY_URL for name in PROXY_VARS})


def prepare(layout: Layout, agent: Agent, run_id: str, env: dict[str, str],
            cwd: Path, workdir: Path, extra_own: tuple[Path, ...] = ()) -> SandboxRun:
    """Make the folders the policy names, set the environment, and return
    bwrap's arguments for this run. `workdir`: the agent's worktree, or the
    workspace root; `extra_own`: files of the run it must write (its log)."""
    if not cwd.is_dir():   # as without a sandbox: "working directory ... does not exist"
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(cwd))
    rules = agent_policy(agent, env)
    root = Path(os.path.realpath(layout.root))
    own = run_dir(layout, run_id)
    (own / "tmp").mkdir(parents=True, exist_ok=True)
    home = root / rules.home
    home.mkdir(parents=True, exist_ok=True)
    environment(env, layout, run_id, rules.hosts)
    mounts: list[tuple[str, int, str, str]] = [("/", READ, "--ro-bind", "/")]
    hidden = [path for path in ("/tmp", "/run", "/var/tmp")
              if os.path.isdir(path) and not os.path.islink(path)]
    mounts += [(path, HIDE, "--tmpfs", path) for path in hidden]
    homes = _home_mounts(env.get("HOME", ""), home, rules, root)
    mounts += homes
    hidden += [path for path, priority, _, _ in homes if priority == HOME]
    mounts += _toolchains(_toolchain_paths(agent, env), hidden, root)
    mounts.append((str(root), READ, "--ro-bind", str(root)))
    mounts += [(str(p), WRITE, "--bind", str(p)) for p in _writable(root, rules)]
    mounts += [(str(p), PROTECT, "--ro-bind", str(p)) for p in _protected(root, rules)]
    mounts += [(str(p), OWN, "--bind", str(p)) for p in
               (own, *extra_own, *_git_paths(workdir, agent), *_aider_files(layout, agent))]
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
            "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    for path, _, option, source in sorted(mounts, key=lambda m: (_depth(m[0]), m[1])):
        args += [option, path] if option == "--tmpfs" else [option, source, path]
        if path == "/":
            args += ["--dev", "/dev", "--proc", "/proc"]
    args += ["--chdir", os.path.realpath(cwd)]
    return SandboxRun(tuple(args), rules.hosts, layout.runs_dir, graceful_stop_possible())


def _depth(path: str) -> int:
    return 0 if path == "/" else path.rstrip("/").count("/")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _home_mounts(user_home: str, private: Path, rules: Policy, root: Path
                 ) -> list[tuple[str, int, str, str]]:
    """The private home over the user's, and the preset's files in it."""
    if not user_home or not os.path.isdir(user_home):
        return []
    home = Path(os.path.realpath(user_home))
    if home == Path("/") or home == root:
        return []
    found: list[tuple[str, int, str, str]] = [(str(home), HOME, "--bind", str(private))]
    for name in rules.home_files:
        if os.path.exists(home / name):
            found.append((str(home / name), WRITE, "--bind", str(home / name)))
    return found


def _toolchain_paths(agent: Agent, env: dict[str, str]) -> list[str]:
    """Where the programs an agent runs live: orchestrate's Python and this
    package (the bridge), the `PATH` folders, and its preset's CLI (a
    node_modules tree, or a virtual environment, as a whole: a CLI's
    package needs its dependencies)."""
    paths = [sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
             str(HERE), *env.get("PATH", "").split(":")]
    if agent.preset is not None:
        found = shutil.which(executable(agent, env), path=env.get("PATH"))
        for program in (found, os.path.realpath(found)) if found else ():
            parts = Path(program).parts
            modules = [i for i, part in enumerate(parts) if part == "node_modules"]
            folder = os.path.dirname(program)
            if modules:
                folder = str(Path(*parts[:modules[0] + 1]))
            elif os.path.exists(os.path.join(folder, "..", "pyvenv.cfg")):
                folder = os.path.dirname(folder)   # a venv's CLI (aider): its packages too
            paths.append(folder)
    return paths


def _toolchains(paths: list[str], hidden: list[str], root: Path
                ) -> list[tuple[str, int, str, str]]:
    """Read-only again, the toolchain folders that a hidden folder (the
    user's home, /tmp, ...) covers; never one in the workspace (its own
    rules apply there), one holding it, nor a hidden folder itself."""
    found = {}
    for path in paths:
        real = Path(os.path.realpath(path)) if path else None
        if real is None or _inside(real, root) or _inside(root, real) or not real.is_dir():
            continue
        if any(_inside(real, Path(h)) and real != Path(h) for h in hidden):
            found[str(real)] = (str(real), READ, "--ro-bind", str(real))
    return list(found.values())


def _writable(root: Path, rules: Policy) -> list[Path]:
    """The policy's writable paths, made if missing; one that symlinks take
    outside the workspace refuses the launch."""
    paths = []
    for rel in rules.writable:
        path = root / rel
        if not path.exists():
            path.mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(path))
        if not _inside(real, root):
            raise SandboxUnavailable(f"sandbox: '{rel}' resolves to {real}, outside the "
                                     "workspace")
        paths.append(real)
    return paths


def _protected(root: Path, rules: Policy) -> list[Path]:
    return [root / rel for rel in rules.protected if os.path.lexists(root / rel)]


def _git_paths(workdir: Path, agent: Agent) -> list[Path]:
    """What `git commit` on its own branch writes, for an isolated agent:
    the objects, its worktree's git folder, its pipeline's branch folders."""
    if agent.isolation != "worktree":
        return []
    try:
        text = (workdir / ".git").read_text().strip()
    except OSError:
        return []
    if not text.startswith("gitdir:"):
        return []
    gitdir = (workdir / text[len("gitdir:"):].strip()).resolve()
    try:
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    except OSError:
        common = gitdir.parent.parent
    branches = [common / "refs" / "heads" / "orchestrate" / agent.pipeline,
                common / "logs" / "refs" / "heads" / "orchestrate" / agent.pipeline]
    for folder in branches:
        folder.mkdir(parents=True, exist_ok=True)
    return [common / "objects", gitdir, *branches]


def _aider_files(layout: Layout, agent: Agent) -> list[Path]:
    """aider's own history files (`.orchestrate/aider/<pipeline>/<agent>.*`)."""
    if agent.preset != "aider":
        return []
    folder = layout.base / "aider" / agent.pipeline
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"{agent.name}.chat.history.md", folder / f"{agent.name}.input.history"]
    for path in files:
        path.touch()
    return files


def remove_run(layout: Layout, run_id: str) -> None:
    """The run's TMPDIR and sockets, once the run is settled."""
    for name in (f"{run_id}.sock", f"{run_id}.check.sock"):
        (layout.runs_dir / name).unlink(missing_ok=True)
    folder = run_dir(layout, run_id)
    if folder.is_dir() and _inside(folder.resolve(), layout.base.resolve()):
        shutil.rmtree(folder, ignore_errors=True)
