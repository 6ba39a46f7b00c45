"""`python -m orchestrate init [DIR]` and `python -m orchestrate mcp [DIR]`."""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from .cli.mcp_config import McpConfigError
from .core.exitcodes import ExitCode
from .cli.scaffold import InitError, init_workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrate",
                                     description="orchestrate: make-style agent pipelines on doit")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="make DIR an orchestrate workspace (never overwrites)")
    init.add_argument("directory", nargs="?", default=".")
    mcp = sub.add_parser("mcp", help="serve the workspace DIR to AI agents over MCP (stdio)")
    mcp.add_argument("directory", nargs="?", default=".")
    args = parser.parse_args(argv)
    if args.command == "mcp":
        return serve_mcp(Path(args.directory))
    try:
        for line in init_workspace(Path(args.directory)):
            print(line)
    except tomllib.TOMLDecodeError as err:
        print(f"error: {Path(args.directory) / 'pyproject.toml'}: invalid TOML ({err}); "
              "nothing changed", file=sys.stderr)
        return ExitCode.INVALID
    except (McpConfigError, InitError) as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.INVALID
    print("next: doit wait   (runs pipelines/*.toml; doit status, doit list --all)")
    return ExitCode.OK


def serve_mcp(directory: Path) -> int:
    """Until the client closes stdin; everything but the protocol goes to stderr."""
    if not directory.is_dir():
        print(f"error: {directory}: no such folder", file=sys.stderr)
        return ExitCode.INVALID
    try:
        from .cli.mcp_server import serve
    except ImportError as err:
        print(f"error: the MCP server needs the mcp extra ({err}): "
              "pip install 'orchestrate[mcp]'", file=sys.stderr)
        return ExitCode.INVALID
    serve(directory)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
