"""A workspace's `.mcp.json`: registers `python -m orchestrate mcp` with MCP hosts
that read project-scoped servers from it (Claude Code offers them on its next start).

Merged, never clobbered: the user's other servers and keys stay; an existing
"orchestrate" entry is the user's and is kept as it is. The file is checked
before `init` writes anything, so invalid JSON leaves the workspace untouched.
MCP hosts start servers with a reduced environment, so the entry names the
interpreter and the workspace by absolute path.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SERVER = "orchestrate"


class McpConfigError(Exception):
    """`.mcp.json` exists but is not a JSON object with an "mcpServers" object."""


def server_entry(directory: Path) -> dict:
    return {"type": "stdio", "command": sys.executable,
            "args": ["-m", "orchestrate", "mcp", str(directory.resolve())]}


def planned_mcp_json(directory: Path) -> str | None:
    """The new text of DIR/.mcp.json; None when the server is already registered."""
    path = directory / ".mcp.json"
    data: dict = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:   # JSONDecodeError and UnicodeDecodeError
            raise McpConfigError(f"{path}: invalid JSON ({err}); nothing changed") from None
        if not isinstance(data, dict) or not isinstance(data.get("mcpServers", {}), dict):
            raise McpConfigError(f'{path}: expected a JSON object whose "mcpServers" is an '
                                 "object; nothing changed")
    servers = data.get("mcpServers", {})
    if SERVER in servers:
        return None
    merged = {**data, "mcpServers": {**servers, SERVER: server_entry(directory)}}
    return json.dumps(merged, indent=2) + "\n"


def write_mcp_json(directory: Path, text: str | None, done: list[str]) -> None:
    path = directory / ".mcp.json"
    if text is None:
        done.append(f"kept     {path} (server {SERVER} already registered)")
        return
    verb = "updated " if path.exists() else "created "
    path.write_text(text, encoding="utf-8")
    done.append(f"{verb} {path} (MCP server {SERVER}: python -m orchestrate mcp)")
