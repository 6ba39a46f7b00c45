"""Inside the sandbox, before the agent: the proxy's door.

`python -I -S sandbox_bridge.py RUNS NAME PORT -- COMMAND...`

The sandbox's network namespace has only a loopback interface. This listens
on 127.0.0.1:PORT there and execs the command at once; a grandchild (left
to the sandbox's init) hands the listening socket to orchestrate's proxy,
outside, over the Unix socket RUNS/NAME (SCM_RIGHTS), then exits. The proxy
accepts the sandbox's connections itself, so no bridge process stays
behind (anthropic's sandbox-runtime runs two socat processes per sandbox for
the same door), and the agent never waits for the proxy to start: a
connection made before then waits in the listening socket's backlog.
Only builtin modules (`_socket`, not `socket`): this start-up is on every
networked sandboxed launch's path.
"""
import os
import sys
import time

import _socket

TIMEOUT = 20.0


def hand_over(listener: "_socket.socket", runs: str, name: str) -> None:
    """Give the listening socket to the proxy (waiting for it to be there)."""
    os.chdir(runs)            # a relative name: socket paths are limited to 107 bytes
    deadline = time.monotonic() + TIMEOUT
    while True:
        door = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            door.connect(name)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            door.close()
            if time.monotonic() > deadline:
                os.write(2, b"sandbox: the network proxy did not start\n")
                return
            time.sleep(0.005)
    fd = listener.fileno().to_bytes(4, sys.byteorder)
    door.sendmsg([b"L"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd)])
    door.recv(1)              # the proxy holds it now
    door.close()


def main(argv: list) -> None:
    runs, name, port, _dashes, *command = argv
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(128)
    child = os.fork()
    if child == 0:            # a grandchild: the sandbox's init reaps it, not the agent
        if os.fork() == 0:
            try:
                hand_over(listener, runs, name)
            finally:
                os._exit(0)
        os._exit(0)
    os.waitpid(child, 0)
    listener.close()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
