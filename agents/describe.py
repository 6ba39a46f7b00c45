"""One worker of the fan-out: describes one module (its path is argv[1]).

The item also arrives as ORCHESTRATE_ITEM (the object's JSON text) and its
key as ORCHESTRATE_KEY; the path is passed as one argv element, never
through a shell.
"""
import ast
import sys
from pathlib import Path

source, out = Path(sys.argv[1]), Path(sys.argv[2])
tree = ast.parse(source.read_text())
doc = (ast.get_docstring(tree) or "(no docstring)").splitlines()[0]
functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
lines = len(source.read_text().splitlines())
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(f"## {source}\n\n{doc}\n\n{lines} lines, {len(classes)} classes, "
               f"{len(functions)} functions\n")
