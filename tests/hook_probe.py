"""A stand-in hook: records what it was given, as one JSON line appended to OUT.

    hook_probe.py OUT

Its environment's ORCHESTRATE_* variables, stdin (parsed as JSON) and what
stdin is, the status file's content, its cwd, session and process group.
"""
import json
import os
import sys
from pathlib import Path


def main() -> int:
    status_path = os.environ.get("ORCHESTRATE_STATUS")
    info = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("ORCHESTRATE_")},
        "stdin": json.loads(sys.stdin.read()),
        "stdin_file": os.readlink("/proc/self/fd/0"),
        "status": json.loads(Path(status_path).read_text()) if status_path else None,
        "cwd": os.getcwd(), "pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
        "argv": sys.argv[1:],
    }
    with open(sys.argv[1], "a") as out:
        out.write(json.dumps(info) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
