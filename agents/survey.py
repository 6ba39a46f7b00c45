"""One survey of the modules listed by the inventory agent: `docs`, `size` or `todo`."""
import ast
import json
import os
import sys
from pathlib import Path


def inventory() -> list[dict]:
    upstream = json.loads(Path(os.environ["ORCHESTRATE_UPSTREAM"]).read_text())
    return json.loads(Path(upstream["inventory"]["outputs"][0]).read_text())["modules"]


def functions(path: str):
    tree = ast.parse(Path(path).read_text())
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def docs(modules):
    missing = [f"{m['path']}:{f.lineno} {f.name}" for m in modules for f in functions(m["path"])
               if not ast.get_docstring(f) and not f.name.startswith("_")]
    return "Public functions without a docstring", missing


def size(modules):
    long = sorted(((f.end_lineno - f.lineno + 1, f"{m['path']}:{f.lineno} {f.name}")
                   for m in modules for f in functions(m["path"])), reverse=True)
    return "Longest functions", [f"{n} lines  {where}" for n, where in long[:10]]


def todo(modules):
    marks = [f"{m['path']}:{i} {line.strip()}" for m in modules
             for i, line in enumerate(Path(m["path"]).read_text().splitlines(), 1)
             if "TODO" in line or "FIXME" in line]
    return "TODO and FIXME notes", marks


kind, out = sys.argv[1], Path(sys.argv[2])
title, items = {"docs": docs, "size": size, "todo": todo}[kind](inventory())
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(f"## {title}\n\n" + ("".join(f"- {i}\n" for i in items) or "- none\n"))
print(f"{kind}: {len(items)} findings -> {out}")
