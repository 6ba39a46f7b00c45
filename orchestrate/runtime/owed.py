"""Spans owed to the trace receiver: recorded durably, sent once, off the
scheduling path.

    telemetry/owed/<span id>.json   spans recorded, not yet sent
    telemetry/sent/<span id>.json   sent; kept only while the run could be
                                    settled again (see below), then removed
    telemetry.log                   one line per failed export

Exactly once, across any number of orchestrator processes and kill -9:

- An attempt's spans are recorded (`owe`) under the scheduling lock before
  its settled status record is written (fsynced by the sender before it
  sends, not on the way to the next launch: see `owe`). A crash in between has
  the run settled again by the next pass, which finds `owed/` or `sent/`
  already holding that span id and records nothing: `sent/` markers are kept
  while the run's status record still shows it running (the only case in
  which it can be settled again), and removed after.
- A sender claims an owed file with flock (LOCK_EX | LOCK_NB) on it and
  checks that the path still names the file it locked; it sends, then
  renames it into `sent/` while holding the lock. A sender killed at any
  moment releases its locks with its death; whatever it had not renamed is
  still owed, and the next sender (any orchestrator process) sends it.
- The one window left: a crash after the receiver took a batch and before
  its rename. That batch is sent again, with the same trace and span ids
  (derived from run ids), which trace stores keep as one span (Jaeger shows
  the copy as a duplicate span id).

Sending never blocks a pass: the advancer sends from a thread (the in-memory
queue is bounded, the folder is the real queue); every other process sends
what is owed when it exits, for a few seconds at most, and not at all while
another process found the receiver down in the last `DOWN_SECONDS`.
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .faults import crash_point
from .state import Layout, utc_now, write_json

if TYPE_CHECKING:
    from .telemetry import ExportConfig

BATCH = 256              # spans per export request
DOWN_SECONDS = 30.0      # after a failed export, processes exiting do not try for this long
QUEUE_SIZE = 1024        # wakes queued for the sender thread; past it, the folder says it
GATHER = 1.0             # seconds the thread waits after a wake, to send in batches
THREAD_TIMEOUT = 5.0     # seconds the thread gives one round of sending
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)   # the sender thread's waits after failures


class OwedSpans:
    """The folders of owed and sent spans of one workspace."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.base = layout.base / "telemetry"
        self.owed_dir = self.base / "owed"
        self.sent_dir = self.base / "sent"
        self.log_path = layout.base / "telemetry.log"
        self.down_path = self.base / "down"
        self.made = False

    # -- recording (under the scheduling lock) ---------------------------------
    def owe(self, span_id: str, spans: list[dict[str, Any]], guard: dict[str, str]) -> bool:
        """Record `spans` (one attempt's, or a pipeline run's) as owed, once:
        False when `span_id` is owed or was sent already. `guard`: what must
        still be true for the run to be settled again (see `_may_forget`).

        Written atomically but not fsynced here: this is on the path from an
        agent's end to its downstream's launch, and an fsync costs ~5 ms.
        The file is in the page cache before the settled record is written,
        which is all that kill -9 of every process needs; the sender fsyncs
        it before sending, so only a power cut in between loses it."""
        owed = self.owed_dir / f"{span_id}.json"
        # owed first: a sender moves owed -> sent at any moment, so an id seen
        # in neither, in this order, was never recorded
        if owed.exists() or (self.sent_dir / f"{span_id}.json").exists():
            return False
        if not self.made:
            self.owed_dir.mkdir(parents=True, exist_ok=True)
            self.made = True
        write_json(owed, {"spans": spans, "guard": guard}, durable=False)
        return True

    def owed_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.owed_dir)
                          if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []

    # -- sending (any thread, any process) -------------------------------------
    def claim(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """(locked fd, content) of an owed file no other sender holds; None
        if another holds it or it was sent meanwhile. A file that is not
        JSON (a power cut before the page cache reached the disk) is moved
        to `telemetry/corrupt/` with a line in telemetry.log."""
        path = self.owed_dir / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)   # renamed to sent/ before we locked it
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = json.loads(handle.read())
            os.fsync(fd)   # on disk before it counts as sent (see `owe`)
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except ValueError as err:
            self._set_aside(path, str(err))
            os.close(fd)
            return None
        return fd, data

    def _set_aside(self, path: Path, why: str) -> None:
        corrupt = self.base / "corrupt"
        corrupt.mkdir(parents=True, exist_ok=True)
        os.replace(path, corrupt / path.name)
        self.note(f"{path.name}: not a span record ({why}); moved to {corrupt}")

    def mark_sent(self, claimed: dict[str, int]) -> None:
        """owed -> sent for each claimed file (still locked), durably; then
        the locks go, and sent markers that can no longer matter with them."""
        self.sent_dir.mkdir(parents=True, exist_ok=True)
        for name in claimed:
            os.rename(self.owed_dir / name, self.sent_dir / name)
        _fsync_dir(self.sent_dir)
        _fsync_dir(self.owed_dir)
        for fd in claimed.values():
            os.close(fd)

    def release(self, claimed: dict[str, int]) -> None:
        for fd in claimed.values():
            os.close(fd)

    def forget_sent(self) -> None:
        """Remove the sent markers whose run can no longer be settled again."""
        try:
            names = os.listdir(self.sent_dir)
        except FileNotFoundError:
            return
        for name in names:
            path = self.sent_dir / name
            try:
                guard = json.loads(path.read_bytes()).get("guard") or {}
            except (OSError, ValueError):
                continue
            if self._may_forget(guard):
                path.unlink(missing_ok=True)

    def _may_forget(self, guard: dict[str, str]) -> bool:
        """An attempt's spans: its status record no longer shows that run
        running; a pipeline run's: its trace file is gone or names another."""
        try:
            if "run_id" in guard:
                record = json.loads((self.layout.base / guard["status"]).read_bytes())
                return not (record.get("run_id") == guard["run_id"]
                            and record.get("state") in ("launching", "running"))
            trace = json.loads((self.layout.base / guard["trace"]).read_bytes())
            return trace.get("trace_id") != guard.get("trace_id")
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False

    # -- saying what went wrong ------------------------------------------------
    def failed(self, count: int, endpoint: str, why: str) -> None:
        """One line in telemetry.log, and the receiver marked down: for
        DOWN_SECONDS no process exiting tries, and further failures (the
        advancer's retries, other processes) add no line, so a receiver
        that stays down costs one line per DOWN_SECONDS, not one per try."""
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        """Send every owed file until `deadline` (monotonic); True when none
        is left. `wait_for_others`: a file another process is sending is
        waited for (it is gone once sent) instead of skipped."""
        if not self.sending.acquire(timeout=max(0.0, deadline - self.clock())):
            return False
        try:
            return self._send_until(deadline, wait_for_others)
        finally:
            self.sending.release()

    def _send_until(self, deadline: float, wait_for_others: bool) -> bool:
        while True:
            names = self.owed.owed_names()
            if not names:
                return True
            claimed, spans = self._claim_batch(names)
            if not claimed:
                if not wait_for_others or self.clock() >= deadline:
                    return False
                time.sleep(0.02)
                continue
            left = deadline - self.clock()
            if left <= 0:
                self.owed.release(claimed)
                return False
            why = self._export(spans, max(0.5, left))
            if why is not None:
                self.owed.release(claimed)
                self.owed.failed(len(spans), self.config.endpoint, why)
                return False
            crash_point("telemetry-sent")
            self.owed.mark_sent(claimed)
            self.owed.forget_sent()
            if self.clock() >= deadline:
                return not self.owed.owed_names()

    def _claim_batch(self, names: list[str]) -> tuple[dict[str, int], list[dict[str, Any]]]:
        claimed: dict[str, int] = {}
        spans: list[dict[str, Any]] = []
        for name in names:
            got = self.owed.claim(name)
            if got is None:
                continue
            claimed[name] = got[0]
            spans.extend(got[1].get("spans") or [])
            if len(spans) >= BATCH:
                break
        return claimed, spans

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
        except queue.Full:   # woken enough: the folder holds every owed span
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
