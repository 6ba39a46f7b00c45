"""The one table of exit codes: every command's answer, and the detached
processes' own (the advancer, a hook's supervisor), which only a person
reading `ps` or a log ever sees."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1          # an agent failed, was cancelled or is blocked; a refusal; a stop
                        # that could not be confirmed; `doit plan`: a forecast past a budget
    INVALID = 3         # invalid pipeline, unknown task, bad argument ("ERROR: ...")
    INTERNAL = 70       # a detached process hit a bug (EX_SOFTWARE): its traceback is logged
    TIMEOUT = 124       # `doit wait --timeout` ran out (as timeout(1))
    INTERRUPTED = 130   # Ctrl-C (128 + SIGINT)
    PIPE_CLOSED = 141   # the reader of our output left (`doit wait | head`: 128 + SIGPIPE)
