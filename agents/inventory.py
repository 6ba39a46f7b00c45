"""List the repository's Python modules with their size: the survey's starting point."""
import ast
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
modules = []
for path in sorted(Path("orchestrate").rglob("*.py")):
    tree = ast.parse(path.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    modules.append({"path": str(path), "lines": len(path.read_text().splitlines()),
                    "functions": len(functions)})
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"modules": modules}, indent=1) + "\n")
print(f"inventory: {len(modules)} modules -> {out}")
