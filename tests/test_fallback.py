"""Fallback presets (issue 25): a rate-limited CLI hands its agent's next
launch to the next preset of its chain that is not limited itself.

End to end with the fake CLIs (tests/fake_cli.py, whose output copies
../shared/cli-transcripts/) through the real doit; the paths that need a
clock to pass (a reset close by, the primary's return) through the real
engine with a fake executor and a fake clock (as tests/test_engine.py)."""
import json
import time
from pathlib import Path

import pytest

from conftest import wait_until
from test_presets import calls, events_of, preset_toml

CHAIN = {"fallback": ["codex", "gemini"]}


def test_claude_limited_for_an_hour_falls_back_to_codex_at_once(ws, fake_bins):
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", **CHAIN))
    began = time.monotonic()
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    record = ws.status("p", "a")
    assert record["state"] == "done" and record["preset"] == "codex", record
    assert record["reason"].startswith("via codex: claude rate limited until "), record["reason"]
    assert [c["preset"] for c in calls(ws)] == ["claude", "codex"]
    assert calls(ws)[1]["prompt"] == "Write a plan."          # the same prompt
    assert record["result"]["final_message"] == "echo: Write a plan."
    [fallback] = [e for e in events_of(ws) if e["event"] == "fallback"]
    assert fallback["task"] == "p:a" and fallback["preset"] == "codex"
    limit = json.loads((ws.state / "ratelimits" / "claude.json").read_text())
    assert limit["until"] > time.time() + 3000 and limit["reset_known"] is True
    assert time.monotonic() - began < 30                      # not an hour's rest


def test_a_known_limit_spares_other_agents_the_failed_launch(ws, fake_bins):
    """One agent learns that claude is limited: another claude agent with a
    fallback launches straight with codex, never with claude."""
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "first", **CHAIN)
                      + preset_toml("b", "claude", "second", after=["a"], **CHAIN))
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    assert [(c["agent"], c["preset"]) for c in calls(ws)] == [
        ("a", "claude"), ("a", "codex"), ("b", "codex")]
    assert ws.status("p", "b")["preset"] == "codex"


def test_an_unknown_reset_counts_as_far(ws, fake_bins):
    """claude with an API key says no reset time (cli-transcripts/claude/ratelimit-long)."""
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude", "FAKE_CLI_RESET_IN": "unknown"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.",
                                       fallback_after="1h", fallback=["codex"]))
    ws.doit("wait", "--timeout", "60", check_rc=0, env=env)
    record = ws.status("p", "a")
    assert record["preset"] == "codex"
    assert record["reason"] == "via codex: claude rate limited (reset unknown)"


def test_the_whole_chain_limited_rests(ws, fake_bins):
    env = {**fake_bins, "FAKE_CLI_LIMITED": "claude,codex,gemini", "FAKE_CLI_RESET_IN": "3600"}
    ws.write_pipeline("p", preset_toml("a", "claude", "Write a plan.", **CHAIN))
    ws.doit(check_rc=0, env=env)
    wait_until(lambda: len(calls(ws)) == 3 and (ws.status("p", "a") or {}).get("state")
               in ("waiting", "queued"), what="the chain to be tried")
    time.sleep(0.5)   # nothing more is launched: each preset is known limited for an hour
    assert [c["preset"] for c in calls(ws)] == ["claude", "codex", "gemini"]
    data = json.loads(ws.doit("status", "--json", check_rc=0, env=env).stdout)
    [row] = data["agents"]
    assert row["state"] == "queued" and row["reason"].startswith("rate limited until "), row
    assert "(claude and its fallback codex, gemini)" in row["reason"]


def test_fallback_is_validated(ws):
    ws.write_pipeline("p", preset_toml("a", "claude", "x", fallback=["codx"])
                      + preset_toml("b", "claude", "x")
                      + 'fallback = [{ agent = "codex", modle = "m" }]\n'
                      + preset_toml("c", "claude", "x", fallback=["claude"])
                      + '[agents.d]\ncommand = "true"\nfallback = ["codex"]\n'
                      + preset_toml("e", "claude", "x", fallback=["codex"], fallback_after="soon"))
    proc = ws.doit(check_rc=3)
    out = proc.stdout + proc.stderr
    assert "agent 'a': key 'fallback': entry 1: unknown preset 'codx' (did you mean 'codex'?)" in out
    assert "agent 'b': key 'fallback': entry 1: key 'modle': unknown key (did you mean 'model'?)" in out
    assert "agent 'c': key 'fallback': lists the agent's own preset 'claude'" in out
    assert "agent 'd': key 'fallback': only applies with agent = \"<preset>\"" in out
    assert "agent 'e': key 'fallback_after': expected a duration" in out
    assert "Traceback" not in out
    assert not (ws.state / "status").exists() or not list((ws.state / "status").rglob("*.json"))
