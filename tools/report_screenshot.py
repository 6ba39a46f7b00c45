"""Regenerate docs/report.png: the report of the example pipeline (survey).

    python tools/report_screenshot.py [--output docs/report.png]

Runs `doit wait survey` in a temporary workspace holding a copy of this
repository's pipeline, agents and code, writes its report with
`doit report survey`, and photographs it in headless Chromium (Debian's
`chromium`, driven by playwright; see .ci/run for the install lines).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def run_survey(root: Path) -> Path:
    """A workspace with the survey pipeline, run to the end; its report's path."""
    subprocess.run([sys.executable, "-m", "orchestrate", "init", str(root)], check=True,
                   capture_output=True)
    (root / "pipelines" / "example.toml").unlink()
    shutil.copy(REPO / "pipelines" / "survey.toml", root / "pipelines")
    shutil.copytree(REPO / "agents", root / "agents")
    shutil.copytree(REPO / "orchestrate", root / "orchestrate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    doit = [sys.executable, "-m", "doit"]
    subprocess.run(doit + ["wait", "survey"], cwd=root, check=True, capture_output=True)
    subprocess.run(doit + ["report", "survey", "-o", "report.html"], cwd=root, check=True,
                   capture_output=True)
    return root / "report.html"


def photograph(page_path: Path, output: Path, width: int = 1280) -> None:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800},
                                    device_scale_factor=1)
            page.goto(page_path.as_uri())
            page.screenshot(path=str(output), full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/report_screenshot.py")
    parser.add_argument("--output", default=str(REPO / "docs" / "report.png"))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"needs Debian's chromium at {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="orchestrate-screenshot-") as folder:
        report = run_survey(Path(folder).resolve() / "ws")
        photograph(report, Path(args.output))
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
