"""How long each MCP tool call takes on the example pipeline, as a host sees it.

    python -m bench.mcp [--repeat N]

Each repetition: a new workspace from `python -m orchestrate init` (its
example pipeline: list -> count, types -> report), a new server started by the
SDK's stdio client, then every tool in the order an agent would call them.
Times are wall-clock seconds from the client's call to its result.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CALLS = [
    ("list", {}),
    ("status", {}),
    ("run (launches)", {}),
    ("wait (until done)", {"timeout": 60}),
    ("run (all current)", {}),
    ("wait (already done)", {"timeout": 60}),
    ("status", {}),
    ("logs", {"task": "example:report"}),
    ("signal", {"name": "approved"}),
    ("cancel (nothing running)", {}),
]


async def one_round(root: Path, times: dict[str, list[float]]) -> None:
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "orchestrate", "mcp", str(root)])
    began = time.perf_counter()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            times.setdefault("start + initialize", []).append(time.perf_counter() - began)
            for label, arguments in CALLS:
                tool = label.split(" ")[0]
                began = time.perf_counter()
                result = await session.call_tool(tool, arguments)
                elapsed = time.perf_counter() - began
                if result.is_error:
                    raise SystemExit(f"{label}: {result.content[0].text}")
                times.setdefault(label, []).append(elapsed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mcp")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.repeat):
            root = Path(scratch, f"ws{index}").resolve()
            subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)],
                           check=True, capture_output=True)
            anyio.run(one_round, root, times)
    print(f"{'call':28s} {'median':>8s} {'min':>8s} {'max':>8s}   (seconds, {args.repeat} rounds)")
    for label, values in times.items():
        print(f"{label:28s} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
