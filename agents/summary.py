"""Gather the surveys into one report."""
import json
import os
import sys
from pathlib import Path

upstream = json.loads(Path(os.environ["ORCHESTRATE_UPSTREAM"]).read_text())
modules = json.loads(Path(upstream["inventory"]["outputs"][0]).read_text())["modules"]
parts = [Path(p).read_text() for name in ("docs", "size", "todo")
         for p in upstream[name]["outputs"]]
out = Path(sys.argv[1])
total = sum(m["lines"] for m in modules)
out.write_text(f"# Code survey\n\n{len(modules)} modules, {total} lines.\n\n" + "\n".join(parts))
print(f"summary -> {out}")
