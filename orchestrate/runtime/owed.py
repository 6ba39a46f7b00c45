"""Spans owed to the trace receiver: recorded durably, sent once, off the
scheduling path.

    telemetry/owed.jsonl   one line per recorded attempt (or pipeline run):
                           {"id": span id, "spans": [...], "guard": {...}}
    telemetry/sent.jsonl   one line per id sent: {"id": span id}
    telemetry/send.lock    flock: one sender at a time, across processes
    telemetry.log          a line per failed export (at most one per DOWN_SECONDS)

Appending a line costs ~10 us; creating a file per span cost ~3.5 ms on
this project's machine, on the path from an agent's end to its downstream's
launch. Both logs are emptied (each replaced by an empty file) once
everything in them is sent and no run they name can be settled again.

Exactly once, across any number of orchestrator processes and kill -9:

- An attempt's spans are recorded (`owe`) under the scheduling lock before
  its settled status record is written. A crash in between has the run
  settled again by the next pass, which finds the span id in `owed.jsonl`
  or `sent.jsonl` and records nothing new. The logs are emptied only when
  every run they name is settled (`_may_forget`), so an id is known for as
  long as its run can be settled again.
- Sending takes `send.lock`, fsyncs `owed.jsonl`, sends what `sent.jsonl`
  does not name, then appends the ids sent to `sent.jsonl` (fsynced). A
  sender killed at any moment releases the lock with its death; whatever it
  had not appended is still owed, and the next sender (any orchestrator
  process) sends it.
- The one window left: a crash after the receiver took a batch and before
  its ids were appended. That batch is sent again, with the same trace and
  span ids (derived from run ids), which trace stores keep as one span
  (Jaeger shows the copy as a duplicate span id). A power cut can lose the
  lines of the moments before it (`owed.jsonl` is fsynced by the sender, not
  on the way to the next launch).

Sending never blocks a pass: the advancer and `doit wait` send from a
thread (its queue of wakes is bounded; the log is the real queue); every
process sends what is owed when it exits, for a few seconds at most, and
only briefly while another process found the receiver down in the last
`DOWN_SECONDS`.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .faults import crash_point
from .state import Layout, try_flock, utc_now

if TYPE_CHECKING:
    from .telemetry import ExportConfig

BATCH = 256              # spans per export request
DOWN_SECONDS = 30.0      # after a failed export: one line per this long, short tries at exit
QUEUE_SIZE = 1024        # wakes queued for the sender thread; past it, the log says it
GATHER = 1.0             # seconds the thread waits after a wake, to send in batches
THREAD_TIMEOUT = 5.0     # seconds the thread gives one round of sending
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)   # the sender thread's waits after failures


class _Log:
    """An append-only JSON-lines file, read incrementally: what was read
    is remembered with the file's inode and the offset reached, so each
    look reads only what was appended since (or all of it, once it was
    replaced by an empty one)."""

    def __init__(self, path: Path):
        self.path = path
        self.inode: int | None = None
        self.offset = 0
        self.entries: dict[str, dict[str, Any]] = {}

    def refresh(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self.inode, self.offset, self.entries = None, 0, {}
            return self.entries
        try:
            info = os.fstat(fd)
            if info.st_ino != self.inode or info.st_size < self.offset:
                self.inode, self.offset, self.entries = info.st_ino, 0, {}
            if info.st_size > self.offset:
                os.lseek(fd, self.offset, os.SEEK_SET)
                data = _read_all(fd, info.st_size - self.offset)
                complete = data.rfind(b"\n") + 1   # a line being written counts later
                self.offset += complete
                for line in data[:complete].splitlines():
                    try:
                        entry = json.loads(line)
                    except ValueError:   # torn by a power cut: not an entry
                        continue
                    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                        self.entries.setdefault(entry["id"], entry)
        finally:
            os.close(fd)
        return self.entries

    def append(self, entries: list[dict[str, Any]], durable: bool = False) -> None:
        """One O_APPEND write: concurrent writers never interleave inside a line."""
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = os.read(fd, size)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class OwedSpans:
    """The owed and sent logs of one workspace."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.base = layout.base / "telemetry"
        self.owed = _Log(self.base / "owed.jsonl")
        self.sent = _Log(self.base / "sent.jsonl")
        self.lock_path = self.base / "send.lock"
        self.log_path = layout.base / "telemetry.log"
        self.down_path = self.base / "down"
        self.made = False
        self.forgettable: set[str] = set()   # ids whose run can no longer be settled again

    # -- recording (under the scheduling lock) ---------------------------------
    def owe(self, span_id: str, spans: list[dict[str, Any]], guard: dict[str, str]) -> bool:
        """Record `spans` (one attempt's, or a pipeline run's) as owed, once:
        False when `span_id` is owed or was sent already. `guard`: what must
        still be true for the run to be settled again (see `_may_forget`).
        Not fsynced here (see the module's docstring)."""
        if span_id in self.owed.refresh() or span_id in self.sent.refresh():
            return False
        if not self.made:
            self.base.mkdir(parents=True, exist_ok=True)
            self.made = True
        self.owed.append([{"id": span_id, "spans": spans, "guard": guard}])
        return True

    def unsent(self) -> list[dict[str, Any]]:
        """The owed entries no sender has sent, in the order recorded."""
        sent = self.sent.refresh()
        return [e for span_id, e in self.owed.refresh().items() if span_id not in sent]

    def anything_owed(self) -> bool:
        """Cheap first: a log that is absent or empty owes nothing."""
        try:
            if os.stat(self.owed.path).st_size == 0:
                return False
        except FileNotFoundError:
            return False
        return bool(self.unsent())

    # -- sending (one sender at a time, any process) -----------------------------
    def lock(self) -> int | None:
        """The send lock's fd, or None if another sender holds it."""
        self.base.mkdir(parents=True, exist_ok=True)
        return try_flock(self.lock_path)

    def make_durable(self) -> None:
        """What is about to be sent is on disk first."""
        try:
            fd = os.open(self.owed.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def mark_sent(self, ids: list[str]) -> None:
        self.sent.append([{"id": span_id} for span_id in ids], durable=True)

    def compact(self) -> None:
        """Empty both logs when everything is sent and no run they name can
        be settled again. Under the scheduling lock (taken without waiting,
        else left for another time): no span is being recorded meanwhile."""
        from .state import SchedulingLock
        scheduling = SchedulingLock(self.layout)
        if not scheduling.acquire(blocking=False):
            return
        try:
            owed = self.owed.refresh()
            sent = self.sent.refresh()
            if not owed or any(span_id not in sent for span_id in owed):
                return
            for span_id, entry in owed.items():
                # once forgettable, always: a settled run never runs again
                if span_id not in self.forgettable:
                    if not self._may_forget(entry.get("guard") or {}):
                        return
                    self.forgettable.add(span_id)
            self.forgettable.clear()
            for log in (self.owed, self.sent):   # owed first: an id sent but not owed is harmless
                empty = log.path.with_name(f".{log.path.name}.{os.getpid()}.tmp")
                os.close(os.open(empty, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
                os.replace(empty, log.path)
        finally:
            scheduling.release()

    def _may_forget(self, guard: dict[str, str]) -> bool:
        """An attempt's spans: its status record no longer shows that run
        running; a pipeline run's: its trace file is gone or names another;
        a merge's (no guard): at once."""
        try:
            if "run_id" in guard:
                record = json.loads((self.layout.base / guard["status"]).read_bytes())
                return not (record.get("run_id") == guard["run_id"]
                            and record.get("state") in ("launching", "running"))
            if "trace" in guard:
                trace = json.loads((self.layout.base / guard["trace"]).read_bytes())
                return trace.get("trace_id") != guard.get("trace_id")
            return True
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False

    # -- saying what went wrong ------------------------------------------------
    def failed(self, count: int, endpoint: str, why: str) -> None:
        """One line in telemetry.log, and the receiver marked down: for
        DOWN_SECONDS processes exiting try only briefly, and further
        failures (the advancer's retries, other processes) add no line, so
        a receiver that stays down costs one line per DOWN_SECONDS, not one
        per try."""
        if self._mark_down():
            self.note(f"export of {count} span(s) to {endpoint} failed: "
                      f"{' '.join(why.split())[:300]}; kept, sent later")

    def _mark_down(self) -> bool:
        """Mark the receiver down; False if it was already, moments ago (by
        any process: O_EXCL, so of two failing at once one says it)."""
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.down_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return True
        except FileExistsError:
            if self.receiver_down(time.time()):
                return False
            os.utime(self.down_path)   # an old outage's mark: this is a new one
            return True

    def note(self, text: str) -> None:
        """One line in telemetry.log (one O_APPEND write)."""
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, f"{utc_now()} [{os.getpid()}] {text}\n".encode())
        finally:
            os.close(fd)

    def receiver_down(self, now: float) -> bool:
        try:
            return now - self.down_path.stat().st_mtime < DOWN_SECONDS
        except FileNotFoundError:
            return False


class Sender:
    """Sends what is owed for one workspace from this process: `send_owed`
    now (bounded), or `start` a thread that sends whenever `wake` is called."""

    def __init__(self, owed: OwedSpans, config: "ExportConfig",
                 clock: Callable[[], float] = time.monotonic):
        self.owed = owed
        self.config = config
        self.clock = clock
        self.exporter: Any = None
        self.wakes: queue.Queue[None] = queue.Queue(QUEUE_SIZE)
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.sending = threading.Lock()   # one send at a time in this process

    def _export(self, spans: list[dict[str, Any]], timeout: float) -> str | None:
        if self.exporter is None:
            try:
                from .otlp import Exporter   # the SDK's import: only now
            except ImportError as err:       # the extra is not installed
                return f"{type(err).__name__}: {err} (pip install 'orchestrate[otel]')"
            self.exporter = Exporter(self.config.endpoint, self.config.service_name)
        return self.exporter.send(spans, timeout)

    def send_owed(self, deadline: float, wait_for_others: bool = False) -> bool:
        """Send everything owed until `deadline` (monotonic); True when
        nothing is left. `wait_for_others`: while another process sends,
        wait for it (what it sends is then no longer owed) instead of
        leaving at once."""
        if not self.sending.acquire(timeout=max(0.0, deadline - self.clock())):
            return False
        try:
            while (fd := self.owed.lock()) is None:
                if not wait_for_others or self.clock() >= deadline:
                    return False
                time.sleep(0.02)
            try:
                return self._send_until(deadline)
            finally:
                os.close(fd)
        finally:
            self.sending.release()

    def _send_until(self, deadline: float) -> bool:
        """Under the send lock: batch after batch, then empty the logs if it can."""
        self.owed.make_durable()
        unsent = self.owed.unsent()
        while unsent:
            batch, spans = [], []
            while unsent and len(spans) < BATCH:
                entry = unsent.pop(0)
                batch.append(entry["id"])
                spans.extend(entry.get("spans") or [])
            left = deadline - self.clock()
            if left <= 0:
                return False
            why = self._export(spans, max(0.5, left)) if spans else None
            if why is not None:
                self.owed.failed(len(spans), self.config.endpoint, why)
                return False
            crash_point("telemetry-sent")
            self.owed.mark_sent(batch)
        self.owed.compact()
        return True

    # -- the advancer's thread ---------------------------------------------------
    def start(self) -> None:
        """A daemon thread that sends whenever woken, and retries with
        backoff while the receiver fails. Started only by a process that
        will not fork afterwards (the advancer)."""
        if self.thread is not None and self.pid == os.getpid():
            return
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._loop, name="orchestrate-telemetry",
                                       daemon=True)
        self.thread.start()
        self.wake()   # what earlier processes left owed

    def wake(self) -> None:
        try:
            self.wakes.put_nowait(None)
        except queue.Full:   # woken enough: the log holds every owed span
            pass

    def _loop(self) -> None:
        failures = 0
        while True:
            timeout = BACKOFF[min(failures, len(BACKOFF)) - 1] if failures else None
            try:
                self.wakes.get(timeout=timeout)
            except queue.Empty:
                pass
            time.sleep(GATHER)   # the spans of the next moments go in the same request
            while not self.wakes.empty():
                self.wakes.get_nowait()
            try:
                ok = self.send_owed(self.clock() + THREAD_TIMEOUT)
            except Exception as err:   # a full disk, a broken install: said, tried again later
                self.owed.failed(0, self.config.endpoint, f"{type(err).__name__}: {err}")
                ok = False
            failures = 0 if ok else failures + 1

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive() and self.pid == os.getpid()
