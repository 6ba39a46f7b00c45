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
        shadow = shadowing_folder()
        if shadow is not None:
            print(f"error: {shadow} shadows the installed {shadow.name} package (python -m "
                  "looks in the current folder first); run from another folder: "
                  f"cd / && python -m orchestrate mcp {directory.resolve()}", file=sys.stderr)
            return 3
        print(f"error: the MCP server needs the mcp extra ({err}): "
              "pip install 'orchestrate[mcp]'", file=sys.stderr)
        return ExitCode.INVALID
    serve(directory)
    return ExitCode.OK


def shadowing_folder(names: tuple[str, ...] = ("mcp", "orchestrate")) -> Path | None:
    """A folder (or file) of the current directory that was imported in place
    of an installed package: `python -m` puts the current folder first on the
    module path, so a clone or a folder named `mcp` or `orchestrate` there
    hides the real one, and the import fails in a way that looks like a
    missing extra."""
    here = Path.cwd().resolve()
    if sys.path and sys.path[0] not in ("", str(here)):
        return None
    for name in names:
        module = sys.modules.get(name)
        if module is None or (here / name).resolve() not in _locations(module):
            continue
        # orchestrate's own folder is the real package when run from its
        # clone's root; one without __init__.py (a namespace) is not
        if name == "mcp" or getattr(module, "__file__", None) is None:
            return here / name
    return None


def _locations(module) -> set[Path]:
    places = {Path(p).resolve() for p in getattr(module, "__path__", [])}
    if getattr(module, "__file__", None):
        places.add(Path(module.__file__).resolve().parent)
    return places


if __name__ == "__main__":
    sys.exit(main())
