"""`python -m bench [--smoke]`: every scenario, a table, and bench/results.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from .scenarios import SMOKE, Row, Sizes, run_all


def format_row(row: Row, smoke: bool = False) -> str:
    """A figure against its target; a smoke run's tiny sizes have no target
    (its figures say that each scenario runs, not how fast a full one is)."""
    med = statistics.median(row.values)
    mark = "-- " if smoke else ("ok " if row.met() else "MISS")
    target = "(smoke: no target)" if smoke else f"target {row.target}"
    return (f"{mark} {row.scenario:<40} {row.figure:<38} {med:>9.3f} "
            f"[{min(row.values):.3f}..{max(row.values):.3f}] {row.unit:<3} {target}"
            + (f"  ({row.note})" if row.note else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run: a quick check")
    parser.add_argument("--only", help="run the scenarios whose function name contains this")
    parser.add_argument("--output", default=str(Path(__file__).with_name("results.json")))
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else Sizes()
    started = time.monotonic()
    print("     scenario                                 figure                                    "
          "median [min..max]", flush=True)
    rows = run_all(sizes, lambda row: print(format_row(row, args.smoke), flush=True),
                   args.only)
    result = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "smoke": args.smoke,
        "seconds": round(time.monotonic() - started, 1),
        "results": [{"scenario": r.scenario, "figure": r.figure, "unit": r.unit,
                     "median": statistics.median(r.values), "min": min(r.values),
                     "max": max(r.values), "runs": len(r.values),
                     "target": None if args.smoke else r.target,
                     "met": None if args.smoke else r.met(), "note": r.note, **r.extra}
                    for r in rows],
    }
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    if args.smoke:
        print(f"smoke run: {len(rows)} figures in {result['seconds']} s (targets apply to "
              f"full-size runs only); written to {args.output}")
    else:
        print(f"{sum(r.met() for r in rows)} of {len(rows)} targets met in "
              f"{result['seconds']} s; written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
