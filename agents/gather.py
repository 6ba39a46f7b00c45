"""The fan-in: one report from every worker's output.

ORCHESTRATE_UPSTREAM maps each instance it waited for (`describe.runtime-engine`,
...) to its signal and output paths, so it needs no list of its own.
"""
import json
import os
import sys
from pathlib import Path

upstream = json.loads(Path(os.environ["ORCHESTRATE_UPSTREAM"]).read_text())
parts = [Path(path).read_text() for name in sorted(upstream)
         for path in upstream[name]["outputs"]]
out = Path(sys.argv[1])
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(f"# Modules ({len(parts)})\n\n" + "\n".join(parts))
print(f"gathered {len(parts)} descriptions")
