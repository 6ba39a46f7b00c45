"""A stand-in agent: records each start in a ledger, waits, writes outputs, exits.

    fake_agent.py LEDGER [--sleep S] [--gate FILE] [--write PATH=TEXT ...]
                         [--copy SRC=DEST] [--copy-upstream NAME=PATH] [--exit N] [--env-to PATH]
                         [--succeed-from-attempt N] [--spawn-session-child PIDFILE]
                         [--ignore-term]

Every start appends one JSON line to LEDGER, so tests count launches exactly.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("ledger")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--gate", help="block until this file exists")
    parser.add_argument("--write", action="append", default=[], help="PATH=TEXT")
    parser.add_argument("--copy", action="append", default=[], help="SRC=DEST")
    parser.add_argument("--copy-upstream", action="append", default=[],
                        help="NAME=PATH: copy upstream NAME's first output to PATH")
    parser.add_argument("--exit", type=int, default=0)
    parser.add_argument("--succeed-from-attempt", type=int,
                        help="exit 0 once ORCHESTRATE_ATTEMPT reaches this, --exit before")
    parser.add_argument("--spawn-session-child", metavar="PIDFILE",
                        help="start `sleep 60` in a session of its own, write its pid")
    parser.add_argument("--ignore-term", action="store_true",
                        help="ignore SIGTERM, as a hung CLI might")
    parser.add_argument("--env-to", help="dump ORCHESTRATE_* variables and more as JSON")
    parser.add_argument("--upstream-to", help="copy the ORCHESTRATE_UPSTREAM file here")
    args = parser.parse_args()
    entry = {"agent": os.environ.get("ORCHESTRATE_AGENT"), "pid": os.getpid(),
             "run_id": os.environ.get("ORCHESTRATE_RUN_ID"), "t": time.time(),
             "traceparent": os.environ.get("TRACEPARENT")}
    with open(args.ledger, "a") as ledger:
        ledger.write(json.dumps(entry) + "\n")
    print(f"started {entry['agent']} run {entry['run_id']}", flush=True)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.spawn_session_child:
        child = subprocess.Popen(["sleep", "60"], start_new_session=True)
        Path(args.spawn_session_child).write_text(str(child.pid))
    if args.env_to:
        info = {k: v for k, v in os.environ.items() if k.startswith(("ORCHESTRATE_", "FAKE_"))}
        info.update(sid=os.getsid(0), pgid=os.getpgid(0), pid=os.getpid(),
                    stdin_isatty=sys.stdin.isatty(), stdin=os.readlink("/proc/self/fd/0"),
                    cwd=os.getcwd())
        Path(args.env_to).parent.mkdir(parents=True, exist_ok=True)
        Path(args.env_to).write_text(json.dumps(info))
    if args.upstream_to:
        Path(args.upstream_to).write_text(Path(os.environ["ORCHESTRATE_UPSTREAM"]).read_text())
    if args.gate:
        while not os.path.exists(args.gate):
            time.sleep(0.01)
    time.sleep(args.sleep)
    for spec in args.copy_upstream:
        name, dest = spec.split("=", 1)
        upstream = json.loads(Path(os.environ["ORCHESTRATE_UPSTREAM"]).read_text())
        text = Path(upstream[name]["outputs"][0]).read_text()
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_text(text)
    for spec in args.copy:
        src, dest = spec.split("=", 1)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(Path(src).read_bytes())
    for spec in args.write:
        path, text = spec.split("=", 1)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    code = args.exit
    if args.succeed_from_attempt is not None:
        attempt = int(os.environ.get("ORCHESTRATE_ATTEMPT", "1"))
        code = 0 if attempt >= args.succeed_from_attempt else args.exit
    print(f"finished {entry['agent']} with exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
