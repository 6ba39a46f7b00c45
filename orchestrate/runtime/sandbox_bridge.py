"""Inside the sandbox, before the agent: the proxy's door.

`python -I -S sandbox_bridge.py RUNS NAME PORT -- COMMAND...`

The sandbox's network namespace has only a loopback interface. This listens
on 127.0.0.1:PORT there, hands the listening socket to orchestrate's proxy
(outside, waiting on the Unix socket RUNS/NAME) with SCM_RIGHTS, and execs
the command: the proxy then accepts the sandbox's connections itself, so no
bridge process stays behind (anthropic's sandbox-runtime runs two socat
processes per sandbox for the same door). Standard library only: it runs
with -I -S, before anything of the agent's.
"""
import os
import socket
import sys
import time


def main(argv: list[str]) -> None:
    runs, name, port, dashes, *command = argv
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(port)))
    listener.listen(128)
    here = os.getcwd()
    os.chdir(runs)            # a relative name: socket paths are limited to 107 bytes
    deadline = time.monotonic() + 20
    while True:
        door = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            door.connect(name)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            door.close()
            if time.monotonic() > deadline:
                sys.stderr.write("sandbox: the network proxy did not start\n")
                sys.exit(126)
            time.sleep(0.005)
    socket.send_fds(door, [b"L"], [listener.fileno()])
    door.recv(1)              # the proxy has it: our copies can go
    door.close()
    listener.close()
    os.chdir(here)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
