"""The MCP server's SDK-free parts: the core never needs the `mcp` extra."""
import subprocess
import sys

from orchestrate.cli.mcp_tools import _Tail

WITHOUT_MCP = "import sys; sys.modules['mcp'] = None; "   # any `import mcp` now fails


def test_tail_keeps_the_last_lines_across_chunks():
    tail = _Tail(2)
    for chunk in ("one\ntw", "o\nthr", "ee\nfour"):
        tail.write(chunk)
    assert tail.text() == "three\nfour"
    tail.write("\n")
    assert tail.text() == "three\nfour\n"
    assert _Tail(5).text() == ""


def test_the_core_and_init_work_without_the_mcp_extra(tmp_path):
    code = WITHOUT_MCP + (
        "import orchestrate.commands, orchestrate.cli.cmd_wait, orchestrate.cli.mcp_tools; "
        "from orchestrate.__main__ import main; sys.exit(main(['init', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".mcp.json").exists()


def test_the_server_without_the_extra_says_how_to_install_it(tmp_path):
    code = WITHOUT_MCP + "from orchestrate.__main__ import main; sys.exit(main(['mcp', sys.argv[1]]))"
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "pip install 'orchestrate[mcp]'" in proc.stderr and "Traceback" not in proc.stderr
