"""The summary agent's check: the report has every survey's section.

Exit 0 when it does; else exit 1 naming what is missing (its last line is
what `doit status` shows, and what the agent is told on its relaunch)."""
import sys
from pathlib import Path

text = Path(sys.argv[1]).read_text()
missing = [title for title in ("Public functions without a docstring", "Longest functions",
                               "TODO and FIXME notes") if f"## {title}" not in text]
if missing:
    print(f"{sys.argv[1]} lacks the section(s): {', '.join(missing)}")
    sys.exit(1)
print(f"{sys.argv[1]}: all three surveys present")
