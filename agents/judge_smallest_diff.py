"""A best_of judge: the good candidate with the smallest diff wins.

orchestrate runs it once every candidate has ended, with
ORCHESTRATE_CANDIDATES naming a JSON list of the good ones (their check
passed): task, worktree, branch, diff_stat, cost_usd, tokens, result. It
prints each candidate's size, then the winner's task on its last line.
Smallest = fewest lines inserted plus deleted; a tie goes to the cheaper
one, then to the one that passed first (the list's order).
"""
import json
import os
import re
import sys

_CHANGED = re.compile(r"(\d+) (insertion|deletion)")


def lines_changed(diff_stat: str) -> int:
    """Inserted plus deleted lines, from `git diff --stat`'s summary line."""
    summary = diff_stat.strip().splitlines()[-1] if diff_stat.strip() else ""
    return sum(int(n) for n, _ in _CHANGED.findall(summary))


def main() -> int:
    with open(os.environ["ORCHESTRATE_CANDIDATES"]) as handle:
        candidates = json.load(handle)
    if not candidates:
        print("no candidates to judge", file=sys.stderr)
        return 1
    for candidate in candidates:
        print(f"{candidate['task']}: {lines_changed(candidate['diff_stat'])} lines changed, "
              f"${candidate['cost_usd'] or 0:.4f}")
    best = min(enumerate(candidates), key=lambda pair: (
        lines_changed(pair[1]["diff_stat"]), pair[1]["cost_usd"] or 0.0, pair[0]))[1]
    print(best["task"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
