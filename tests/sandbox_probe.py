"""One way out of a sandbox, tried by an agent (tests/test_sandbox.py).

`python sandbox_probe.py PROBE [ARG...]` tries the one thing PROBE names and
prints `PROBE ok` when it could do it, `PROBE refused: WHY` when it could not.
It always exits 0: the agent is done either way, and the test reads the
verdict from the log and from what the attempt left on disk. What counts as
an escape is the test's business (a write to `$HOME` that lands in the
agent's private home is not one).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path


def append(path: str, text: str = "\n# written by a sandbox probe\n") -> None:
    with open(path, "a") as handle:
        handle.write(text)


def create(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("written by a sandbox probe\n")


def read(path: str) -> None:
    print(Path(path).read_text().strip())


def symlink_escape(target: str) -> None:
    link = Path("probe-link")
    link.unlink(missing_ok=True)
    link.symlink_to(target)
    try:
        append(str(link), "escaped through a symlink\n")
    finally:
        link.unlink()


def signal_process(pid: str) -> None:
    os.kill(int(pid), signal.SIGTERM)


def read_proc(pid: str) -> None:
    print(Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b" ").decode())


def unix_socket(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(b"hello from a sandbox probe\n")


def tcp_direct(port: str) -> None:
    with socket.create_connection(("127.0.0.1", int(port)), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        print(sock.recv(100).decode(errors="replace").splitlines()[0])


def http_get(url: str) -> None:
    """urllib honours HTTP_PROXY like the CLIs do: through the proxy if set."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        print(answer.status, answer.read().decode().strip())


def no_new_privs() -> None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("NoNewPrivs:"):
            if line.split()[1] != "0":
                raise PermissionError("NoNewPrivs is set")
            return


def env_var(name: str) -> None:
    if name not in os.environ:
        raise LookupError(f"{name} is not set")
    print(f"{name}={os.environ[name]}")


def commit() -> None:
    Path("probe-commit.txt").write_text("committed by a sandbox probe\n")
    for argv in (["git", "add", "probe-commit.txt"],
                 ["git", "-c", "user.email=probe@example.com", "-c", "user.name=probe",
                  "commit", "-q", "-m", "probe commit"]):
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise PermissionError(done.stderr.strip())


def tmpdir() -> None:
    create(os.path.join(os.environ.get("TMPDIR", "/tmp"), "probe.txt"))


PROBES = {"append": append, "create": create, "read": read, "symlink": symlink_escape,
          "signal": signal_process, "proc": read_proc, "unix": unix_socket,
          "tcp": tcp_direct, "http": http_get, "nnp": no_new_privs, "env": env_var,
          "commit": commit, "tmpdir": tmpdir}


def main(argv: list[str]) -> None:
    name, *args = argv
    try:
        PROBES[name](*args)
    except Exception as err:   # noqa: BLE001 - every failure is the verdict
        print(f"{name} refused: {type(err).__name__}: {err}")
    else:
        print(f"{name} ok")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
