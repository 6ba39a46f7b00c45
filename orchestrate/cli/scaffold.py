"""`python -m orchestrate init [DIR]`: make any folder an orchestrate workspace.

Never overwrites a user's file: new tables are rendered with tomli-w and
appended to pyproject.toml, so the user's own content, comments and
formatting stay byte for byte; running it twice changes nothing.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from .mcp_config import planned_mcp_json, write_mcp_json

DODO = '''"""doit entry point: every pipelines/*.toml becomes a group of agent tasks."""
from pathlib import Path

from orchestrate.tasks import ensure_state_folder, pipeline_tasks

ROOT = Path(__file__).parent
ensure_state_folder(ROOT)  # doit opens its database (in there) before loading tasks


def task_pipelines():
    """Agents of every pipeline in pipelines/."""
    yield from pipeline_tasks(ROOT)
'''

EXAMPLE = '''description = "Example: one agent fans out to two, a third gathers their results"

[agents.list]
description = "List the files of this workspace"
command = "mkdir -p reports && find . -path ./.orchestrate -prune -o -path ./.git -prune -o -type f -print | sort > reports/files.txt"
outputs = ["reports/files.txt"]

[agents.count]
description = "Count the files"
command = "wc -l < reports/files.txt > reports/count.txt"
outputs = ["reports/count.txt"]
after = ["list"]

[agents.types]
description = "Count files per extension"
command = "sed -n 's/.*\\\\.//p' reports/files.txt | sort | uniq -c | sort -rn > reports/types.txt"
outputs = ["reports/types.txt"]
after = ["list"]

[agents.report]
description = "Gather both into one report"
command = "{ echo files: $(cat reports/count.txt); cat reports/types.txt; } > reports/report.txt"
outputs = ["reports/report.txt"]
after = ["count", "types"]
'''

DOIT_CONFIG = {"dep_file": ".orchestrate/doit.sqlite", "backend": "sqlite3"}
PLUGINS = {"run": "orchestrate.commands:Run", "forget": "orchestrate.commands:Forget",
           "info": "orchestrate.commands:Info", "help": "orchestrate.doit_commands:Help",
           "ignore": "orchestrate.doit_commands:Ignore",
           "reset-dep": "orchestrate.doit_commands:ResetDep",
           "strace": "orchestrate.doit_commands:Strace",
           "clean": "orchestrate.doit_commands:Clean"}
# `doit list` in the order the agents are declared, not sorted by name
COMMANDS = {"list": {"sort": "definition"}}
GITIGNORE_LINE = ".orchestrate/"


def _write_new(path: Path, text: str, done: list[str]) -> None:
    if path.exists():
        done.append(f"kept     {path}")
    else:
        path.write_text(text)
        done.append(f"created  {path}")


def _missing_tables(existing: dict) -> dict:
    doit = existing.get("tool", {}).get("doit")
    if doit is None:
        return {"tool": {"doit": {**DOIT_CONFIG, "commands": COMMANDS,
                                  "plugins": {"command": PLUGINS}}}}
    missing = {}
    if "commands" not in doit:
        missing["commands"] = COMMANDS
    if "plugins" not in doit:
        missing["plugins"] = {"command": PLUGINS}
    return {"tool": {"doit": missing}} if missing else {}


def _render_tables(tables: dict) -> str:
    import tomli_w
    return tomli_w.dumps(tables)


_DOIT_HEADER = re.compile(r"^[ \t]*\[[ \t]*tool[ \t]*\.[ \t]*doit[ \t]*\][ \t]*(#.*)?$", re.M)


_PLUGINS_HEADER = re.compile(
    r"^[ \t]*\[[ \t]*tool\.doit\.plugins\.command[ \t]*\][ \t]*(#.*)?$", re.M)


class InitError(Exception):
    """init cannot configure the workspace safely; nothing was changed."""


def _with_missing_keys(text: str, doit: dict, path: Path) -> str:
    """`text` with the [tool.doit] keys orchestrate needs and the table lacks,
    inserted right under its header (doit would otherwise write its database
    into the workspace root as .doit.db.*)."""
    missing = {k: v for k, v in DOIT_CONFIG.items() if k not in doit}
    if not missing:
        return text
    header = _DOIT_HEADER.search(text)
    if header is None:   # an inline table or dotted keys: not ours to rewrite
        raise InitError(f"{path}: [tool.doit] lacks " + ", ".join(
            f'{k} = "{v}"' for k, v in missing.items()) + "; add them and run init again; "
            "nothing changed")
    return _insert_under(text, header, "".join(f'{k} = "{v}"\n' for k, v in missing.items()))


def _insert_under(text: str, header: re.Match, lines: str) -> str:
    """`lines` right below the table header `header` matched in `text`."""
    end = header.end() + 1 if text[header.end():header.end() + 1] == "\n" else header.end()
    return text[:end] + ("" if end > header.end() else "\n") + lines + text[end:]


def _with_missing_plugins(text: str, doit: dict) -> str:
    """A workspace made by an older init: register the commands added since
    (never changing one the user set)."""
    commands = doit.get("plugins", {}).get("command", {})
    header = _PLUGINS_HEADER.search(text)
    if not isinstance(commands, dict) or header is None:
        return text
    absent = {k: v for k, v in PLUGINS.items() if k not in commands}
    if not absent:
        return text
    return _insert_under(text, header, "".join(f'{k} = "{v}"\n' for k, v in absent.items()))


def plan_pyproject(path: Path) -> tuple[str | None, str]:
    """(new text or None if nothing to write, what init will say). Raises
    TOMLDecodeError or InitError before anything is written."""
    original = path.read_text() if path.exists() else ""
    existing = tomllib.loads(original)
    doit = existing.get("tool", {}).get("doit")
    text = original
    if isinstance(doit, dict):
        text = _with_missing_plugins(_with_missing_keys(text, doit, path), doit)
    tables = _missing_tables(existing)
    if tables:
        separator = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        verb = "updated " if path.exists() else "created "
        return text + separator + _render_tables(tables), f"{verb} {path} (doit config)"
    changed = text != original
    commands = tomllib.loads(text).get("tool", {}).get("doit", {}).get("plugins", {}).get(
        "command", {})
    if any(commands.get(k) != v for k, v in PLUGINS.items()):
        note = (f"check    {path}: [tool.doit.plugins.command] should have " +
                ", ".join(f'{k} = "{v}"' for k, v in PLUGINS.items()))
        return (text if changed else None), note
    return (text, f"updated  {path} (added missing keys to [tool.doit])") if changed \
        else (None, f"kept     {path}")


def init_workspace(directory: Path) -> list[str]:
    """Everything that can refuse (an invalid pyproject.toml or .mcp.json) is
    checked before the first file is written: init never leaves half a workspace."""
    done: list[str] = []
    mcp_json = planned_mcp_json(directory)
    pyproject = directory / "pyproject.toml"
    pyproject_text, pyproject_note = plan_pyproject(pyproject)
    directory.mkdir(parents=True, exist_ok=True)
    _write_new(directory / "dodo.py", DODO, done)
    if pyproject_text is not None:
        pyproject.write_text(pyproject_text)
    done.append(pyproject_note)
    (directory / "pipelines").mkdir(exist_ok=True)
    if not any((directory / "pipelines").glob("*.toml")):
        _write_new(directory / "pipelines" / "example.toml", EXAMPLE, done)
    gitignore = directory / ".gitignore"
    lines = gitignore.read_text().splitlines() if gitignore.exists() else []
    if GITIGNORE_LINE not in lines:
        existed = gitignore.exists()
        prefix = "" if not lines or gitignore.read_text().endswith("\n") else "\n"
        with open(gitignore, "a") as handle:
            handle.write(prefix + GITIGNORE_LINE + "\n")
        done.append(f"{'updated ' if existed else 'created '} {gitignore} (ignore .orchestrate/)")
    write_mcp_json(directory, mcp_json, done)
    return done
