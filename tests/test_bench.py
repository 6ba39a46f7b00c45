"""The benchmark command runs every scenario at tiny size, so it cannot rot."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_every_scenario(tmp_path):
    output = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(output.read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["python"]
    figures = {(r["scenario"].split(":")[0], r["figure"]) for r in result["results"]}
    for scenario in ("A", "B", "C", "caller block", "launch throughput", "signal to launch",
                     "scale", "no-op", "memory", "idle", "hooks", "report", "fan-out",
                     "merge queue", "telemetry", "best of"):
        assert any(s == scenario for s, _ in figures), scenario
    # issue 10: ratios to doit's own floor measured in the same run, idle with agents running
    assert ("no-op", "doit / doit list --all") in figures
    assert ("caller block", "doit / doit list --all") in figures   # issue 20: speed stays
    assert ("status", "doit status / doit list --all") in figures
    assert ("idle", "advancer CPU % of one core") in figures
    rows = result["results"]
    for row in rows:
        assert row["min"] <= row["median"] <= row["max"]
    # tiny sizes are not measured against full-size targets: no MISS (nor ok) lines
    assert "smoke run:" in proc.stdout and "targets apply to full-size runs only" in proc.stdout
    assert "MISS" not in proc.stdout and "\nok " not in proc.stdout
    assert all(row["met"] is None and row["target"] is None for row in result["results"])
