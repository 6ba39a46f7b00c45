"""The planner: writes the work list, one JSON object per module.

Each object's `name` becomes its worker's key (`describe.runtime-engine`); the
worker reads `path` through the `{item.path}` placeholder.
"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
modules = sorted(p for p in Path("orchestrate").rglob("*.py") if p.name != "__init__.py")
# the name is the path below orchestrate/, dashed (core-spec), as modules of two
# rooms may share a file name
plan = [{"name": "-".join(p.relative_to("orchestrate").with_suffix("").parts), "path": str(p)}
        for p in modules]
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(plan, indent=1) + "\n")
print(f"planned {len(plan)} modules")
