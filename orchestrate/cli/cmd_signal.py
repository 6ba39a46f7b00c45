"""`doit signal`: create or clear an external signal that agents wait_for."""
from __future__ import annotations

from pathlib import Path

from doit.exceptions import InvalidCommand

from ..core.errors import UserError
from ..core.spec import NAME_RE
from ..runtime.state import (
    Layout,
    StateFolderReadOnly,
    append_event,
    utc_now,
    write_json,
)
from .cmd_base import OrchestrateCommand, opt_clear


def signal_create(root: Path, name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"'{name}' is not a valid signal name "
                         "(expected [A-Za-z0-9][A-Za-z0-9_-]*)")
    layout = Layout(root)
    layout.make_dirs()
    path = layout.external_signal(name)
    if path.exists():
        return f"signal {name} already present"
    try:
        write_json(path, {"name": name, "created_at": utc_now()})
    except OSError as err:
        raise StateFolderReadOnly(path.parent, err) from None
    append_event(layout, "signal", name=name)
    return f"signal {name} created"


def signal_clear(root: Path, name: str) -> str:
    """Remove an external signal: its gate is closed again for agents not yet
    launched (a running or finished agent is not affected)."""
    if not NAME_RE.fullmatch(name):
        raise UserError(f"'{name}' is not a valid signal name "
                        "(expected [A-Za-z0-9][A-Za-z0-9_-]*)")
    layout = Layout(root)
    path = layout.external_signal(name)
    if not path.exists():
        return f"signal {name} not present"
    try:
        path.unlink()
    except FileNotFoundError:
        return f"signal {name} not present"
    except OSError as err:
        raise StateFolderReadOnly(path.parent, err) from None
    append_event(layout, "signal_cleared", name=name)
    return f"signal {name} cleared"


class Signal(OrchestrateCommand):
    name = "signal"
    doc_purpose = "create (or --clear) an external signal that agents wait_for"
    doc_usage = "NAME [--clear]"
    doc_description = ("Agents with wait_for = [\"NAME\"] launch once it exists; --clear "
                       "removes it (agents not yet launched wait again).\n"
                       "Exit: 0; 3 on an invalid name.")
    cmd_options = (opt_clear,)

    def _execute(self, pos_args, clear):
        if len(pos_args) != 1:
            raise InvalidCommand("signal takes one name, e.g. doit signal approved")
        act = signal_clear if clear else signal_create
        self.report.line(act(self.root, pos_args[0]))
        return 0
