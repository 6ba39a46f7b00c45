"""The live view of `doit wait` with more agents than terminal rows (issue 10,
point 2): a real pty of 20 rows, 40 real agents."""
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from conftest import wait_until


def _pipeline(ws, gate) -> str:
    lines = []
    for i in range(5):     # fail at once, with a last line worth reading
        lines += [f"[agents.fail{i}]", f'command = "echo working; echo boom-{i}; exit 3"', ""]
    for i in range(30):    # run until the test opens the gate
        lines += [f"[agents.run{i:02d}]",
                  f"command = {json.dumps(ws.agent_cmd('--gate', str(gate)))}", ""]
    for i in range(5):
        lines += [f"[agents.ok{i}]", 'command = "true"', ""]
    return "\n".join(lines)


def _screen(chunks: list[bytes]) -> str:
    text = b"".join(chunks).decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_live_view_shows_failures_and_running_first_in_20_rows(ws):
    gate = ws.root / "open"
    ws.write_pipeline("p", _pipeline(ws, gate))
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "doit", "wait"], cwd=ws.root,
                            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
                            env={**os.environ, "TERM": "xterm", "LINES": "20",
                                 "COLUMNS": "120"})
    os.close(secondary)
    os.set_blocking(primary, False)
    chunks: list[bytes] = []

    def read() -> str:
        try:
            while data := os.read(primary, 65536):
                chunks.append(data)
        except (BlockingIOError, OSError):
            pass
        return _screen(chunks)

    try:
        # while 30 agents run: every failure and running agents are on screen,
        # done ones are only counted in the header, with the elapsed time
        wait_until(lambda: all(f"p:fail{i}" in read() for i in range(5))
                   and "p:run" in read() and "5 failed" in read(), timeout=60,
                   what="failed and running rows in the live view")
        screen = read()
        assert re.search(r"\d+ done.*\d+ running.*5 failed\s+·\s+\d+s elapsed", screen), screen
        assert "more:" in screen and "running" in screen.split("more:")[1]
        assert "p:ok0" not in screen                   # done: counted, not listed
        gate.touch()
        wait_until(lambda: proc.poll() is not None, timeout=60, what="doit wait to end")
    finally:
        gate.touch()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    screen = read()
    os.close(primary)
    assert proc.returncode == 1
    for i in range(5):   # the summary: reason, last line of the log, the way to see more
        assert (f"failed p:fail{i}: exit 3 | last line: boom-{i}  (doit logs p:fail{i})"
                in screen), screen[-3000:]
    ws.wait_idle()


def test_live_lines_fit_the_height_and_order_by_what_matters():
    from orchestrate.cli.live import live_lines
    from orchestrate.core.scheduler import Decision
    from orchestrate.core.spec import Agent
    states = ["done"] * 10 + ["waiting"] * 10 + ["queued"] * 10 + ["running"] * 5 + ["failed"] * 5
    decisions = {f"p:a{i}": Decision(Agent(pipeline="p", name=f"a{i}", command="true"), s, s)
                 for i, s in enumerate(states)}
    lines = live_lines(decisions, {}, height=20, width=80, seconds=75)
    assert len(lines) <= 19
    assert lines[0].endswith("1m15s elapsed") and "10 done" in lines[0]
    body = [l.split()[1] for l in lines[2:-1]]
    assert body[:5] == ["failed"] * 5 and body[5:10] == ["running"] * 5
    assert body[10:] == ["queued"] * len(body[10:])
    assert lines[-1] == "… and 14 more: 4 queued, 10 waiting"


def test_the_last_frame_of_a_finished_wait_is_its_counts_not_an_empty_table(ws):
    ws.write_pipeline("p", '[agents.a]\ncommand = "true"\n[agents.b]\ncommand = "true"\n'
                      'after = ["a"]\n')
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 20, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "doit", "wait"], cwd=ws.root,
                            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary,
                            env={**os.environ, "TERM": "xterm"})
    os.close(secondary)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:          # EIO: the wait ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        proc.wait(timeout=60)
        os.close(primary)
    assert proc.returncode == 0
    last = [line.strip() for line in _screen(chunks).replace("\r", "\n").splitlines()
            if line.strip()][-1]
    assert re.fullmatch(r"2 done\s+·\s+\d+s elapsed", last), _screen(chunks)[-500:]


def test_live_lines_of_nothing_left_to_show_are_the_header_alone():
    from orchestrate.cli.live import live_lines
    from orchestrate.core.scheduler import Decision
    from orchestrate.core.spec import Agent
    decisions = {"p:a": Decision(Agent(pipeline="p", name="a", command="true"), "done", "done")}
    assert live_lines(decisions, {}, height=20, width=80, seconds=3) == ["1 done  ·  3s elapsed"]
